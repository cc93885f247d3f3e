"""The host app, seen through its own names, resolved at call time.

Nothing is captured at import: the host's later changes (and its test doubles, which
replace a helper on the module) apply to the patched code too.
"""

import importlib
import logging
import sys

from .config import Config
from .errors import ConfigurationError

_current: "Host | None" = None


def resolve(dotted: str):
    """Import ``pkg.module.attr`` (or a module); ConfigurationError names what is missing.

    Called on every use (so the host's later changes apply): the fast path is a
    ``sys.modules`` hit and one getattr.
    """
    if dotted in sys.modules:
        return sys.modules[dotted]
    module_name, _, attr = dotted.rpartition(".")
    module = sys.modules.get(module_name)
    if module is not None and hasattr(module, attr):
        return getattr(module, attr)
    try:
        return importlib.import_module(dotted)
    except ImportError:
        pass
    if not module_name:
        raise ConfigurationError(f"cannot import {dotted!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigurationError(f"cannot import {module_name!r} (for {dotted!r}): {e}") from e
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"{module_name!r} has no attribute {attr!r} (for {dotted!r})") from None


class Host:
    """An Antenna-shaped host: a state manager class, a tasks module with helpers, a Job model."""

    def __init__(self, config: Config):
        self.config = config

    def target(self, key: str):
        return resolve(self.config.targets[key])

    def helper(self, key: str):
        module = self.target("TASKS_MODULE")
        name = self.config.helpers[key]
        try:
            return getattr(module, name)
        except AttributeError:
            raise ConfigurationError(f"{module.__name__} has no helper {name!r} (BLIPGUARD HELPERS['{key}'])") from None

    def state_manager(self, job_id: int):
        return self.target("STATE_MANAGER")(job_id)

    def fail_job(self, job_id: int, reason: str) -> None:
        self.helper("FAIL_JOB")(job_id, reason)

    def ack(self, reply_subject: str, job_logger: logging.Logger) -> bool:
        result = self.helper("ACK")(reply_subject, job_logger)
        return result is not False  # hosts whose helper returns None predate the bool

    def update_progress(self, job_id: int, stage: str, percentage: float, **params) -> None:
        self.helper("UPDATE_PROGRESS")(job_id, stage, percentage, **params)

    def save_results(self, result: dict, job_id: int):
        return self.helper("SAVE_RESULTS")(result, job_id)

    def job(self, job_id: int):
        return self.target("JOB_MODEL").objects.filter(pk=job_id).first()

    def job_logger(self, job_id: int, job=None) -> logging.Logger:
        job = job if job is not None else self.job(job_id)
        if job is None:
            return logging.getLogger(f"blipguard.job.{job_id}")
        return job.logger

    def job_status_and_start(self, job_id: int) -> tuple[str | None, float | None]:
        row = self.target("JOB_MODEL").objects.filter(pk=job_id).values("status", "started_at").first()
        if row is None:
            return None, None
        started = row.get("started_at")
        return row.get("status"), started.timestamp() if started else None

    def ack_wait(self) -> float:
        if self.config.ack_wait is not None:
            return self.config.ack_wait
        from django.conf import settings

        name = self.config.ack_wait_setting
        value = getattr(settings, name, None)
        if value is None:
            raise ConfigurationError(f"settings.{name} (the NATS ack_wait) is not set; set it or BLIPGUARD['ACK_WAIT']")
        return float(value)


def current_host() -> Host:
    global _current
    if _current is None:
        from .config import from_django

        _current = Host(from_django())
    return _current


def set_host(host: Host | None) -> None:
    global _current
    _current = host
