from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured

from .errors import ConfigurationError


class AppPatchConfig(AppConfig):
    name = "blipguard.app_patch"
    label = "blipguard_app_patch"
    verbose_name = "blipguard app patch"

    def ready(self) -> None:
        from . import checks  # noqa: F401 - registers the system checks
        from .config import from_django
        from .patcher import install

        try:
            config = from_django()
        except ConfigurationError as e:
            raise ImproperlyConfigured(str(e)) from e
        if config.auto_patch and not install(config).refused:
            # Worker side of the pause: control commands and the board shared with the
            # prefork children (created here, before the pool forks).
            from . import sentry, worker_metrics
            from .pause import board, worker

            board.create()
            worker.register()
            worker_metrics.register(config)
            sentry.setup()
