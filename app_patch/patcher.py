"""Apply the fix to an Antenna-shaped host at start-up, idempotently, and undo it exactly.

Patched (each original kept in its wrapper's closure and in the install record):
- the state manager's ``update_state`` (state.py) and ``cleanup`` (also drops the claim hashes);
- the queue manager's ``acknowledge_task`` (a JetStream-confirmed ack, ack.py);
- the tasks module's ``_ack_task_via_nats`` (notes an unconfirmed ack) and
  ``_update_job_progress`` (each image's result counts added once, state.py);
- the result task's ``run`` (result_task.py), around whatever the host has there,
  its own ``autoretry_for`` wrapper included.

A host without the shapes the patch needs (host.py) is not patched at all: the log and
the system check ``blipguard.W016`` say what is missing.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import threading
import time
from dataclasses import dataclass, field, replace

from . import context, reaper, result_task, state
from .ack import make_acknowledge_task, wrap_ack_helper
from .config import Config, from_django
from .host import Host, set_host

logger = logging.getLogger("blipguard.app_patch")

MARK = "blipguard_patched"
COUNTS = ("detections", "classifications", "captures")


@dataclass
class InstallReport:
    patched: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why the host cannot be patched

    def __str__(self) -> str:
        if self.refused:
            return "not patched: the host lacks what the patch needs: " + "; ".join(self.refused)
        parts = []
        for title, items in (("patched", self.patched), ("already patched", self.already)):
            if items:
                parts.append(f"{title}: {', '.join(items)}")
        return "; ".join(parts) or "nothing to do"


@dataclass
class _Installed:
    host: Host
    originals: list[tuple[object, str, object, bool]]  # owner, name, original, owned it
    labels: list[str]


_installed: _Installed | None = None
_last_report: InstallReport | None = None


def last_report() -> InstallReport | None:
    """What the last install did (the system checks read it)."""
    return _last_report


def _wrap_update_state(original, host: Host):
    @functools.wraps(original)
    def update_state(self, processed_image_ids, stage, failed_image_ids=None):
        return state.update_state(self, processed_image_ids, stage, failed_image_ids, host=host)

    return update_state


def _wrap_cleanup(original):
    @functools.wraps(original)
    def cleanup(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        state.cleanup_extra(self)
        return result

    return cleanup


def _wrap_update_progress(original, host: Host, clamps_in_host: bool = False):
    """Exact progress counters.

    - Each image's result counts reach the host's progress once: from the delivery that
      moved it out of the results stage or, if that one died before its write, from the
      NATS redelivery (the pre-fix host adds them on every call, so a redelivery doubled
      them; the current one drops them when its claim moved nothing). Marked atomically in
      Redis, so two live deliveries never both add them; where the host acks last (the
      current platform) the mark is made under the lock, just before the write, and the
      results stage is held below 100 % until every image's counts are in.
    - Progress writes of one job are serialized: the current host reads the job with a
      plain ``get()`` and writes the stage back whole, so two workers updating one job at
      once lose one update. A PostgreSQL advisory lock, held around the host's call, keeps
      the host's own transactions and its cleanup after them as they are (a row lock would
      need a transaction around them, and the cleanup would run before the commit).
    - Never backwards (``_never_backwards``): where the host writes each stage through its
      progress's ``update_stage`` (``clamps_in_host``, see ``_wrap_update_stage``), the
      clamp is applied there, to the job the host itself just read: no read of ours.
    """
    signature = inspect.signature(original)
    # A host that row-locks the job in its own write (the pre-fix one) serializes its writes
    # itself: the results stage, which the patch neither clamps nor holds there, needs no
    # lock of ours (two statements fewer per result); nor does any stage whose never-backwards
    # clamp runs on the host's own row-locked read (two more).
    names = getattr(getattr(original, "__code__", None), "co_names", ())
    host_locks_row = "select_for_update" in names
    clamps_in_host = clamps_in_host and "update_stage" in names

    @functools.wraps(original)
    def _update_job_progress(*args, **kwargs):
        try:
            return _write(*args, **kwargs)
        except Exception as e:  # the count mark's Redis, or the host's own write
            state.note_transient(e)
            raise

    def _write(*args, **kwargs):
        try:
            arguments = signature.bind_partial(*args, **kwargs).arguments
        except TypeError:
            return original(*args, **kwargs)  # let the host raise its own error
        run = context.current()
        stage = arguments.get("stage")
        claim = run.claims.get(stage) if run is not None and stage == "results" else None
        if stage == "results":
            needs_lock = not (host_locks_row and (run is None or run.ack_attempted))
        else:
            needs_lock = not (host_locks_row and clamps_in_host)
        with progress_lock(arguments.get("job_id") if needs_lock else None):
            # No claim: the host's own update_state ran (not patched); leave its call alone.
            added = 0
            if claim is not None:
                try:
                    added, done = claim.count()
                except Exception:
                    # Its reply may be what was lost: the mark can be in with no counts behind it,
                    # and another delivery would then complete the stage without them.
                    _uncount(claim, arguments.get("job_id"))
                    raise
                if not added:
                    logger.info("job %s: result counts not added: delivery %s has no image whose counts are "
                                "still to add (a duplicate)", arguments.get("job_id"), run.delivery)
                    kwargs = {k: (0 if k in COUNTS else v) for k, v in kwargs.items()}
                if not run.ack_attempted:
                    args, kwargs = _as_far_as_counted(signature, args, kwargs,
                                                      min(done / claim.total, 1.0) if claim.total else None)
            try:
                if not clamps_in_host:
                    kwargs = _never_backwards(host, arguments.get("job_id"), stage, kwargs)
                    return original(*args, **kwargs)
                _clamp.stage = stage if any(k in kwargs for k in MONOTONIC) else None
                try:
                    result = original(*args, **kwargs)
                    if _clamp.stage is not None:
                        _clamp_missed(stage)
                    return result
                finally:
                    _clamp.stage = None
            except BaseException:
                if added:
                    _uncount(claim, arguments.get("job_id"))
                raise

    return _update_job_progress


def _as_far_as_counted(signature, args, kwargs, share):
    """The results stage's progress as far as counts are in, not as far as images are
    claimed: a job must not complete (and delete its NATS stream) while a claimed image's
    counts can still come from a redelivery or a retry. Only where the host acks after
    this write (the current platform): the pre-fix one acks before its results stage, so a
    worker killed there is never redelivered, and holding the stage would hang the job.

    Raised as well as lowered: the host passes its own snapshot of the claims, taken before
    the lock, and the write that brings the last counts in can carry an older snapshot than
    a write before it (which was held below 100 %); only the counted share, read under the
    lock, is current. It never exceeds the claimed share: an image is counted after its claim."""
    bound = signature.bind_partial(*args, **kwargs)
    passed = bound.arguments.get("progress_percentage")
    if share is None or not isinstance(passed, (int, float)) or passed == share:
        return args, kwargs
    bound.arguments["progress_percentage"] = share
    return bound.args, bound.kwargs


UNCOUNT_PATIENCE = 10.0  # seconds: a Redis stall or restart is usually over by then


def _uncount(claim, job_id, patience: float = UNCOUNT_PATIENCE) -> None:
    """The counts are not in: unmark them, so a retry or redelivery adds them. Tried again
    for a while (it is idempotent): a mark left behind lets the stage complete without them."""
    deadline = time.monotonic() + patience
    while True:
        try:
            claim.uncount()
            return
        except Exception as e:  # noqa: BLE001 - the host's own error is the one to raise
            if time.monotonic() + 0.5 >= deadline:
                logger.warning("job %s: could not unmark images %s as counted after a failed progress write: %s",
                               job_id, claim.ids, e)
                return
            time.sleep(0.5)


def _never_backwards(host: Host, job_id, stage, kwargs: dict) -> dict:
    """Under the lock, a Redis snapshot taken before another worker's newer one must not
    overwrite it: processed and failed only grow, remaining only shrinks. (The host writes
    the passed values as they are.) A host whose progress has another shape is left as is.
    The fallback of ``_wrap_update_stage``, for a host that does not write through it."""
    if not any(k in kwargs for k in MONOTONIC):
        return kwargs
    try:
        job = host.target("JOB_MODEL").objects.only("progress").get(pk=job_id)
        stored = _stored_params(job.progress, stage)
    except Exception:  # noqa: BLE001 - a missing job or stage is the host's to report
        return kwargs
    return _monotonic(kwargs, stored)


def _stored_params(progress, stage) -> dict:
    return {p.key: p.value for p in progress.get_stage(stage).params}


def _monotonic(values: dict, stored: dict) -> dict:
    out = dict(values)
    for key, pick in MONOTONIC.items():
        if isinstance(out.get(key), int) and isinstance(stored.get(key), int):
            out[key] = pick(out[key], stored[key])
    return out


MONOTONIC = {"processed": max, "failed": max, "remaining": min}

# The stage whose next ``update_stage`` call (this thread, inside the host's progress write)
# gets the never-backwards clamp; None outside it.
_clamp = threading.local()


def _wrap_update_stage(original):
    """The job progress's ``update_stage``, clamped never-backwards (``_never_backwards``)
    against the stage as the host just read it, inside its own write: under its row lock
    (pre-fix) or the progress lock (current), so the stored values are the latest. Only the
    first call for the stage the patched ``_update_job_progress`` is writing; every other
    call is the host's, untouched."""

    @functools.wraps(original)
    def update_stage(self, stage_key_or_name, **stage_parameters):
        stage = getattr(_clamp, "stage", None)
        if stage is not None and stage_key_or_name == stage:
            _clamp.stage = None
            try:
                stored = _stored_params(self, stage)
            except Exception:  # noqa: BLE001 - a missing stage is the host's to report
                stored = {}
            stage_parameters = _monotonic(stage_parameters, stored)
        return original(self, stage_key_or_name, **stage_parameters)

    return update_stage


_missed_warned: set = set()


def _clamp_missed(stage) -> None:
    """The host wrote a stage without the ``update_stage`` the clamp is on (a subclass that
    overrides it, say): that write was not clamped. Said once per stage and process."""
    if stage not in _missed_warned:
        _missed_warned.add(stage)
        logger.warning("blipguard: the progress write of stage %r did not go through the patched update_stage: "
                       "its never-backwards clamp was not applied", stage)


def _progress_class(job_model):
    """The class of a job's ``progress`` when it has ``get_stage`` and ``update_stage``
    (the host writes a stage through the latter), else None."""
    try:
        field = job_model._meta.get_field("progress")
        default = field.default() if callable(field.default) else field.default
    except Exception:  # noqa: BLE001 - another shape: the fallback read is used
        return None
    cls = type(default)
    if all(callable(getattr(cls, name, None)) for name in ("get_stage", "update_stage")):
        return cls
    return None


LOCK_SPACE = 0x626C6770  # "blgp": the advisory-lock key space of progress writes


@contextlib.contextmanager
def progress_lock(job_id):
    """A session-level PostgreSQL advisory lock on (LOCK_SPACE, job_id); nothing elsewhere."""
    from django.conf import settings

    if not settings.configured or not isinstance(job_id, int):
        yield
        return
    from django.db import connection

    if connection.vendor != "postgresql":
        yield
        return
    key = [LOCK_SPACE, job_id % 2**31]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", key)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", key)


def install(config: Config | None = None) -> InstallReport:
    global _installed, _last_report
    cfg = config or from_django()
    report = InstallReport()
    _last_report = report
    if _installed is not None:
        report.already.extend(_installed.labels)
        logger.info("blipguard: %s", report)
        return report
    host = Host(cfg)
    report.refused = host.shape_problems()
    if report.refused:
        logger.warning("blipguard: %s", report)
        return report
    host = Host(replace(cfg, result_queue=host.result_queue()))
    t = cfg.targets
    manager, tasks, task = host.target("STATE_MANAGER"), host.target("TASKS_MODULE"), host.target("RESULT_TASK")
    ack_name, progress_name = cfg.helpers["ACK"], cfg.helpers["UPDATE_PROGRESS"]
    progress_cls = _progress_class(host.target("JOB_MODEL"))

    def ack_timeout() -> float:
        return host.config.ack_timeout

    plan = [
        (manager, "update_state", lambda o: _wrap_update_state(o, host), f"{t['STATE_MANAGER']}.update_state"),
        (manager, "cleanup", _wrap_cleanup, f"{t['STATE_MANAGER']}.cleanup"),
        (host.target("QUEUE_MANAGER"), "acknowledge_task", lambda o: make_acknowledge_task(ack_timeout),
         f"{t['QUEUE_MANAGER']}.acknowledge_task"),
        (tasks, ack_name, wrap_ack_helper, f"{t['TASKS_MODULE']}.{ack_name}"),
        (tasks, progress_name, lambda o: _wrap_update_progress(o, host, clamps_in_host=progress_cls is not None),
         f"{t['TASKS_MODULE']}.{progress_name}"),
        (task, "run", lambda o: result_task.wrap_run(task, o, host), f"{t['RESULT_TASK']}.run"),
    ]
    job_model = host.target("JOB_MODEL")
    for name in reaper.REAPERS:
        original = getattr(tasks, name, None)
        if original is not None and reaper.applies(original):
            plan.append((tasks, name, lambda o: reaper.wrap(o, lambda: getattr(job_model, "STALLED_JOBS_MAX_MINUTES", 10)),
                         f"{t['TASKS_MODULE']}.{name}"))
    if progress_cls is not None:  # part of the progress write's patch: no label of its own
        plan.append((progress_cls, "update_stage", _wrap_update_stage, None))
    originals = []
    for owner, name, make, label in plan:
        original = getattr(owner, name)
        wrapper = make(original)
        setattr(wrapper, MARK, True)
        originals.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, wrapper)
        if label is not None:
            report.patched.append(label)
    _installed = _Installed(host, originals, list(report.patched))
    set_host(host)
    logger.info("blipguard: %s (ack_wait %gs, result queue %s)", report, host.ack_wait(), host.config.result_queue)
    return report


def uninstall() -> None:
    """Put back exactly what was there (for tests, and for switching the fix off)."""
    global _installed
    if _installed is None:
        return
    for owner, name, original, owned in reversed(_installed.originals):
        if owned:
            setattr(owner, name, original)
        else:
            delattr(owner, name)
    _installed = None
    set_host(None)


def is_installed() -> bool:
    return _installed is not None
