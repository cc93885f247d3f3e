"""An Antenna-shaped reference app (Django + Celery + Redis + NATS JetStream).

It rebuilds, under the platform's own module names (``ami.*`` and ``config``), the
interfaces of the reference platform's async (NATS) ML result path at two commits:
PRE (before the Redis-blip fix) and HEAD (current). Which one a process runs is chosen
by its settings module: ``config.settings.pre`` or ``config.settings.head`` (setting
``ANTENNA_VERSION``). Its folder goes on ``sys.path`` (it is never installed as a
top-level ``ami``: a host app owns that name); use :func:`path`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent

#: Settings modules per platform version: unpatched, and with blipguard's app_patch.
SETTINGS = {
    "pre": "config.settings.pre",
    "head": "config.settings.head",
    "pre_patched": "config.settings.pre_patched",
    "head_patched": "config.settings.head_patched",
}


def path() -> str:
    """The folder to put on ``sys.path``/``PYTHONPATH`` to import ``ami`` and ``config``."""
    return str(ROOT)
