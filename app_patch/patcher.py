"""Apply the fix to an Antenna-shaped host at start-up, idempotently.

Patched: the state manager's ``update_state``, the queue manager's ``acknowledge_task``
(confirmed ack) and the result task's ``run`` (retries, accurate failures). A host that
already has an equivalent fix (its result task auto-retries Redis connection errors) is
left alone, and the log says so.
"""

import functools
import logging
from dataclasses import dataclass, field

from . import result_task, state
from .ack import make_acknowledge_task
from .config import Config, from_django
from .host import Host, set_host

logger = logging.getLogger("blipguard.app_patch")

MARK = "blipguard_patched"


@dataclass
class InstallReport:
    patched: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = []
        for title, items in (("patched", self.patched), ("already patched", self.already), ("left alone", self.skipped)):
            if items:
                parts.append(f"{title}: {', '.join(items)}")
        return "; ".join(parts) or "nothing to do"


def has_equivalent_fix(task) -> bool:
    """The host's task already retries Redis connection errors by itself."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    retry_for = tuple(getattr(task, "autoretry_for", ()) or ())
    covered = any(isinstance(t, type) and issubclass(RedisConnectionError, t) for t in retry_for)
    return covered and (getattr(task, "max_retries", 0) or 0) > 0


def _patched_update_state(self, processed_image_ids, stage, failed_image_ids=None, **kwargs):
    return state.update_state(self, processed_image_ids, stage, failed_image_ids, **kwargs)


setattr(_patched_update_state, MARK, True)


def _patched_cleanup(self, *args, **kwargs):
    result = _patched_cleanup.blipguard_original(self, *args, **kwargs)
    state.cleanup_extra(self)
    return result


setattr(_patched_cleanup, MARK, True)


def _patch_attr(owner, name: str, new, label: str, report: InstallReport) -> None:
    current = getattr(owner, name)
    if getattr(current, MARK, False):
        report.already.append(label)
        return
    setattr(new, "blipguard_original", current)
    setattr(owner, name, new)
    report.patched.append(label)


def _patch_task(task, host: Host, label: str, report: InstallReport) -> None:
    current = task.run
    if getattr(current, MARK, False):
        report.already.append(label)
        return

    @functools.wraps(current)
    def run(*args, **kwargs):
        return result_task.run(task, *args, **kwargs)

    setattr(run, MARK, True)
    run.blipguard_original = current
    task.run = run
    task.max_retries = host.config.max_retries
    # A retry carries its history (first failure time) in one extra keyword argument;
    # Celery would reject it against the host function's signature.
    task.typing = False
    report.patched.append(label)


def install(config: Config | None = None) -> InstallReport:
    cfg = config or from_django()
    host = Host(cfg)
    report = InstallReport()
    task_path = cfg.targets["RESULT_TASK"]
    task = host.target("RESULT_TASK")
    if has_equivalent_fix(task) and not getattr(task.run, MARK, False) and not cfg.force:
        report.skipped.append(f"{task_path} (it already retries Redis errors: an equivalent fix is in place)")
        logger.info("blipguard: %s", report)
        return report
    set_host(host)
    _patch_attr(
        host.target("STATE_MANAGER"), "update_state", _patched_update_state,
        f"{cfg.targets['STATE_MANAGER']}.update_state", report,
    )
    _patch_attr(
        host.target("STATE_MANAGER"), "cleanup", _patched_cleanup, f"{cfg.targets['STATE_MANAGER']}.cleanup", report
    )
    ack = make_acknowledge_task(lambda: host.config.ack_timeout)
    _patch_attr(
        host.target("QUEUE_MANAGER"), "acknowledge_task", ack, f"{cfg.targets['QUEUE_MANAGER']}.acknowledge_task", report
    )
    _patch_task(task, host, task_path, report)
    logger.info("blipguard: %s", report)
    return report


def uninstall(config: Config | None = None) -> None:
    """Restore the host's originals (for tests and for switching the fix off at run time)."""
    cfg = config or from_django()
    host = Host(cfg)
    for key, name in (("STATE_MANAGER", "update_state"), ("STATE_MANAGER", "cleanup"), ("QUEUE_MANAGER", "acknowledge_task")):
        owner = host.target(key)
        current = getattr(owner, name)
        if getattr(current, MARK, False):
            setattr(owner, name, current.blipguard_original)
    task = host.target("RESULT_TASK")
    if getattr(task.run, MARK, False):
        task.run = task.run.blipguard_original
    set_host(None)
