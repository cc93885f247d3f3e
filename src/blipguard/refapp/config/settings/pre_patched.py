"""PRE with blipguard's app_patch installed, as a host's settings edit would do it."""

from .pre import *  # noqa: F401,F403
from ._blipguard import install

install(globals())
