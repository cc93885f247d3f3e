"""Configure Django in this process against a LocalStack's servers."""

import os
import sys

from blipguard import refapp

_migrated: set[str] = set()

#: The unpatched settings module per platform version ("pre" or "head").
DEFAULT_SETTINGS = refapp.SETTINGS["head"]


def app_env(stack_env: dict[str, str], settings: str = DEFAULT_SETTINGS, **extra: str) -> dict[str, str]:
    """Environment for a process running the reference app (workers, this process)."""
    env = dict(stack_env)
    env["DJANGO_SETTINGS_MODULE"] = settings
    path = [refapp.path()] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env.update(extra)
    return env


def setup_django(stack_env: dict[str, str], settings: str = DEFAULT_SETTINGS, **extra: str) -> None:
    """Point this process's Django at the stack and migrate its database once.

    One Django per process: a second call must name the same stack and settings.
    """
    import django
    from django.conf import settings as dj_settings

    env = app_env(stack_env, settings, **extra)
    if refapp.path() not in sys.path:
        sys.path.insert(0, refapp.path())
    if dj_settings.configured:
        if dj_settings.DATABASES["default"]["PORT"] not in env["DATABASE_URL"]:
            raise RuntimeError("Django is already configured for another stack in this process")
        if os.environ.get("DJANGO_SETTINGS_MODULE") != settings:
            raise RuntimeError(
                f"Django already runs {os.environ.get('DJANGO_SETTINGS_MODULE')} in this process, not {settings}"
            )
    else:
        os.environ.update(env)
        django.setup()
    if env["DATABASE_URL"] not in _migrated:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        _migrated.add(env["DATABASE_URL"])
