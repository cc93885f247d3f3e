"""The platform's default settings module name (``config.settings.local``): HEAD."""

from .head import *  # noqa: F401,F403
