"""The seam: every host symbol the patch touches, named once and shape-checked at start-up.

The host is an Antenna-shaped Django/Celery app (module paths in ``config.DEFAULT_TARGETS``).
The patch depends on these names and shapes only:

- the state manager class: methods ``update_state(processed_image_ids, stage,
  failed_image_ids=None)``, ``cleanup()``, ``_get_redis()``, ``_get_pending_key(stage)``;
  string attributes ``_total_key`` and ``_failed_key``; ``TIMEOUT``;
- the progress dataclass ``JobStateProgress`` (``newly_removed`` where the host has it);
- the result task (a bound Celery task taking ``job_id, result_data, reply_subject``);
- on the tasks module: ``_fail_job(job_id, reason)``, ``_ack_task_via_nats(reply_subject,
  job_logger)`` and ``_update_job_progress(job_id, stage, progress_percentage, complete_state,
  **state_params)``;
- the queue manager's ``async acknowledge_task(reply_subject)`` and the ack_wait its
  consumers are created with (the module constant ``TASK_TTR``);
- the Job model's ``objects`` and per-job ``logger``.

:func:`shape_problems` lists what is missing or shaped differently; the patcher refuses
to patch when that list is not empty (sentry-python's ``DidNotEnable``), so a host that
moved never fails later, at its first result.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import sys

from .config import Config
from .errors import ConfigurationError

_current: "Host | None" = None


def resolve(dotted: str):
    """Import ``pkg.module.attr`` (or a module); ConfigurationError names what is missing."""
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


# name -> the parameters it must accept, in order (a trailing "**" means **kwargs).
METHODS = {
    "update_state": ("self", "processed_image_ids", "stage", "failed_image_ids"),
    "cleanup": ("self",),
    "_get_redis": ("self",),
    "_get_pending_key": ("self", "stage"),
}
HELPERS = {
    "FAIL_JOB": ("job_id", "reason"),
    "ACK": ("reply_subject", "job_logger"),
    "UPDATE_PROGRESS": ("job_id", "stage", "progress_percentage", "complete_state", "**"),
}
TASK_PARAMS = ("self", "job_id", "result_data", "reply_subject")
PROGRESS_FIELDS = ("remaining", "total", "processed", "percentage", "failed")


def _params_problem(label: str, fn, wanted: tuple[str, ...]) -> str | None:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return f"{label} is not a function"
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    has_kwargs = any(p.kind is p.VAR_KEYWORD for p in params)
    plain = tuple(w for w in wanted if w != "**")
    if tuple(names[: len(plain)]) != plain or ("**" in wanted and not has_kwargs):
        found = ", ".join(str(p) for p in params)
        return f"{label} must take ({', '.join(w if w != '**' else '**kwargs' for w in wanted)}), found ({found})"
    return None


class Host:
    """The host app, resolved from ``Config.targets``; lookups happen at call time."""

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

    def progress(self, **values):
        """The host's own ``JobStateProgress`` with the fields it has."""
        cls = self.target("PROGRESS")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def fail_job(self, job_id: int, reason: str) -> None:
        self.helper("FAIL_JOB")(job_id, reason)

    def job(self, job_id: int):
        return self.target("JOB_MODEL").objects.filter(pk=job_id).first()

    def job_logger(self, job_id: int, job=None) -> logging.Logger:
        job = job if job is not None else self.job(job_id)
        if job is None:
            return logging.getLogger(self.config.targets["TASKS_MODULE"])
        return job.logger

    def job_status_and_start(self, job_id: int) -> tuple[str | None, float | None]:
        row = self.target("JOB_MODEL").objects.filter(pk=job_id).values("status", "started_at").first()
        if row is None:
            return None, None
        started = row.get("started_at")
        return row.get("status"), started.timestamp() if started else None

    def ack_wait(self) -> float:
        """The ack_wait the host's consumers really get (its module constant, read once at
        its import: 30 s on hosts without ``NATS_TASK_TTR``), unless BLIPGUARD says."""
        if self.config.ack_wait is not None:
            return self.config.ack_wait
        value = resolve(self.config.ack_wait_source)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigurationError(f"{self.config.ack_wait_source} = {value!r} is not an ack_wait in seconds")
        return float(value)

    def result_queue(self) -> str:
        """The Celery queue the host routes its result task to (BLIPGUARD['RESULT_QUEUE'] wins)."""
        if self.config.result_queue:
            return self.config.result_queue
        task = self.target("RESULT_TASK")
        app = task.app
        try:
            route = app.amqp.router.route({}, task.name, args=(), kwargs={})
            queue = route.get("queue")
            name = getattr(queue, "name", queue)
        except Exception:  # noqa: BLE001 - an unusual router: fall back to the default queue
            name = None
        return name or app.conf.task_default_queue

    def shape_problems(self) -> list[str]:
        """What the patch needs of the host and does not find; empty when it fits."""
        problems: list[str] = []

        def get(key: str):
            try:
                return self.target(key)
            except ConfigurationError as e:
                problems.append(str(e))
                return None

        manager = get("STATE_MANAGER")
        if manager is not None:
            label = self.config.targets["STATE_MANAGER"]
            for name, wanted in METHODS.items():
                fn = getattr(manager, name, None)
                if fn is None:
                    problems.append(f"{label} has no method {name}()")
                else:
                    problems.append(_params_problem(f"{label}.{name}", fn, wanted))
            try:
                sample = manager(0)
            except Exception as e:  # noqa: BLE001 - reported, never raised
                problems.append(f"{label}(0) failed: {e}")
            else:
                for attr in ("_total_key", "_failed_key"):
                    if not isinstance(getattr(sample, attr, None), str):
                        problems.append(f"{label}().{attr} is not a string attribute")
        progress = get("PROGRESS")
        if progress is not None:
            if not dataclasses.is_dataclass(progress):
                problems.append(f"{self.config.targets['PROGRESS']} is not a dataclass")
            else:
                missing = set(PROGRESS_FIELDS) - {f.name for f in dataclasses.fields(progress)}
                if missing:
                    problems.append(f"{self.config.targets['PROGRESS']} lacks fields {sorted(missing)}")
        task = get("RESULT_TASK")
        if task is not None:
            if not all(hasattr(task, a) for a in ("run", "retry", "request", "app")):
                problems.append(f"{self.config.targets['RESULT_TASK']} is not a Celery task")
            else:
                # task.run is bound: `self` is already taken
                problems.append(_params_problem(self.config.targets["RESULT_TASK"], task.run, TASK_PARAMS[1:]))
        if get("TASKS_MODULE") is not None:
            for key, wanted in HELPERS.items():
                try:
                    fn = self.helper(key)
                except ConfigurationError as e:
                    problems.append(str(e))
                    continue
                problems.append(_params_problem(f"{self.config.targets['TASKS_MODULE']}.{fn.__name__}", fn, wanted))
        qm = get("QUEUE_MANAGER")
        if qm is not None:
            ack = getattr(qm, "acknowledge_task", None)
            if ack is None or not inspect.iscoroutinefunction(getattr(ack, "__wrapped__", ack)):
                problems.append(f"{self.config.targets['QUEUE_MANAGER']}.acknowledge_task is not an async method")
        job = get("JOB_MODEL")
        if job is not None and not (hasattr(job, "objects") and hasattr(job, "logger")):
            problems.append(f"{self.config.targets['JOB_MODEL']} has no objects manager or logger")
        try:
            self.ack_wait()
        except ConfigurationError as e:
            problems.append(str(e))
        return [p for p in problems if p]


def current_host() -> Host:
    global _current
    if _current is None:
        from .config import from_django

        _current = Host(from_django())
    return _current


def set_host(host: Host | None) -> None:
    global _current
    _current = host
