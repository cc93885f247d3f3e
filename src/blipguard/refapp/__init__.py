"""An Antenna-shaped reference app (Django + Celery + Redis + NATS JetStream).

It reproduces the reference platform's async-job code path *before* the fix, under the
platform's own module names (``ami.*``), so app_patch can be proven against it. Its
folder goes on ``sys.path`` (never installed as a top-level ``ami``: a host app owns that
name); use :func:`path`.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent


def path() -> str:
    """The folder to put on ``sys.path``/``PYTHONPATH`` to import ``ami`` and ``refsite``."""
    return str(ROOT)
