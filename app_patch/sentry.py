"""Sentry events of the result path, through sentry-sdk's public API (1.40 and 2.x).

The host initializes Sentry itself (the platform: Django, Celery, Redis and Logging
integrations, error-level log lines become events). The patch adds one global event
processor, once, and captures its own events:

- transient and terminal failures are different issues: fingerprints by failure kind and
  dependency (transient) or reason (terminal), never by traceback; transient = warning,
  terminal = error;
- tags: ``blipguard.kind``, ``.dependency``, ``.stage``, ``.blip_active``, ``.retries``,
  ``.blip``; the job id is context, never a tag;
- at most one transient event per worker per blip. A worker is one Celery node (its prefork
  children share the pause board); a blip runs from the first transient error the worker
  sees until a result goes through again, or is the operator's blip while its pause holds;
- log-derived events get the same treatment: the host's job logger re-logs every line on
  ``ami.jobs.models``, so the job logger's own copy is dropped, a terminal line already
  reported is dropped, and a transient one counts against the per-blip limit;
- scrubbed from every event: task arguments (the result payloads), request bodies,
  passwords in URLs, and values under secret-looking keys.
"""

from __future__ import annotations

import logging
import re
import time

from . import context
from .classify import Kind, classify
from .errors import describe
from .pause import board
from .scrub import scrub

logger = logging.getLogger(__name__)

TAG = "blipguard."
JOB_LOGGER = re.compile(r"^ami\.jobs\.\d+$")
OPERATOR_BLIP = re.compile(r"^blip (\S+):")
# Transient trouble the host and its libraries log at ERROR without a traceback, one line per
# poll or retry: (logger name suffix, message start, dependency). The platform's API logs its
# NATS reserve failures with the bare exception (empty for a fetch from a paused consumer);
# Celery's Redis result backend logs each reconnection attempt.
TRANSIENT_LINES = (
    ("nats_queue", re.compile(r"^Failed to reserve tasks for job "), "nats"),
    ("celery.backends.redis", re.compile(r"^(Connection to Redis lost|Retry limit exceeded while trying to reconnect)"),
     "redis"),
)
TERMINAL_LINES = (("Retries exhausted", "retries_exhausted"), ("Redis state missing", "state_missing"),
                  ("Job state keys not found", "state_missing"))

_installed = False
_local_sent: dict = {"streaks": {}, "sent": []}  # without a board (not a Celery worker)


def setup() -> bool:
    """Add the event processor once; False when sentry-sdk is not installed."""
    global _installed
    if _installed:
        return True
    try:
        from sentry_sdk.scope import add_global_event_processor
    except ImportError:
        return False
    add_global_event_processor(process_event)
    _installed = True
    return True


def _sdk():
    try:
        import sentry_sdk
    except ImportError:
        return None
    return sentry_sdk


# -- the per-worker, per-blip limit --------------------------------------------------

def _operator_blip() -> str | None:
    held = board.paused_for()
    match = OPERATOR_BLIP.match(held["reason"]) if held else None
    return match.group(1) if match else None


QUIET = 10.0  # s without a transient error before a result going through ends the blip
GAP = 120.0  # s without a transient error: a new blip (processes where no result goes through)


def claim_blip(dependency: str, now: float | None = None) -> tuple[str, bool]:
    """This worker's blip for ``dependency`` and whether this call is the first to report it."""
    now = time.time() if now is None else now
    blip = _operator_blip()
    result: list = []

    def claim(data: dict) -> dict:
        state = data.get("sentry") or {"streaks": {}, "sent": []}
        streak = state["streaks"].get(dependency)
        if streak is None or now - streak["last"] > GAP:
            streak = {"since": now}
        streaks = {**state["streaks"], dependency: {**streak, "last": now}}
        key = blip or f"{dependency}-{round(streak['since'] * 1000)}"
        first = key not in state["sent"]
        result.append((key, first))
        sent = (state["sent"] + [key])[-32:] if first else state["sent"]
        return {**data, "sentry": {"streaks": streaks, "sent": sent}}

    _update(claim)
    return result[0]


_UNREAD = object()


def on_success(now: float | None = None, board_data=_UNREAD) -> None:
    """A result went through: the blips with no transient error for QUIET seconds are over
    (a result finishing just as the dependency goes down does not end the blip).
    ``board_data``: the pause board as the caller just read it (``breaker.on_success``
    reads it once for both), or ``None`` when there is no board."""
    now = time.time() if now is None else now

    def end(data: dict) -> dict:
        state = data["sentry"]
        streaks = {d: s for d, s in state["streaks"].items() if now - s["last"] < QUIET}
        return {**data, "sentry": {**state, "streaks": streaks}}

    def stale(data: dict) -> bool:
        streaks = (data.get("sentry") or {}).get("streaks") or {}
        return any(now - s["last"] >= QUIET for s in streaks.values())

    b = board.current()
    if b is None:
        if stale({"sentry": _local_sent}):
            _update(end)
    elif stale(b.read() if board_data is _UNREAD or board_data is None else board_data):
        b.update(end)


def _update(fn) -> None:
    global _local_sent
    b = board.current()
    if b is None:
        _local_sent = fn({"sentry": _local_sent})["sentry"]
    else:
        b.update(fn)


# -- captures ------------------------------------------------------------------------

def _contexts(job_id: int | None) -> dict:
    return {"blipguard": {"job_id": job_id}} if job_id is not None else {}


def transient(dependency: str, stage: str | None, exc: BaseException, retries: int, job_id: int | None) -> None:
    sdk = _sdk()
    if sdk is None or not _active(sdk):
        return
    blip, first = claim_blip(dependency or "other")
    if not first:
        return
    sdk.capture_event({
        "level": "warning",
        "message": f"Transient {dependency or 'dependency'} error in the result path (retried, no images lost): "
                   f"{describe(exc)}",
        "logger": "blipguard.app_patch",
        "fingerprint": ["blipguard", "transient", dependency or "other"],
        "tags": _tags(Kind.TRANSIENT.value, dependency, stage, True, retries, blip),
        "contexts": _contexts(job_id),
    })


def terminal(reason: str, dependency: str, stage: str | None, message: str, retries: int, job_id: int | None,
             during_blip: bool) -> None:
    sdk = _sdk()
    if sdk is None or not _active(sdk):
        return
    run = context.current()
    if run is not None:
        run.terminal_reported = True
    sdk.capture_event({
        "level": "error",
        "message": message,
        "logger": "blipguard.app_patch",
        "fingerprint": ["blipguard", "terminal", reason],
        "tags": {**_tags("terminal", dependency, stage, during_blip, retries, _operator_blip()), TAG + "reason": reason},
        "contexts": _contexts(job_id),
    })


def _active(sdk) -> bool:
    """A client with a DSN is set up (the host called ``sentry_sdk.init``)."""
    get_client = getattr(sdk, "get_client", None)
    client = get_client() if get_client is not None else sdk.Hub.current.client
    return client is not None and bool((getattr(client, "options", None) or {}).get("dsn"))


def _tags(kind: str, dependency: str, stage: str | None, blip_active: bool, retries: int, blip: str | None) -> dict:
    tags = {TAG + "kind": kind, TAG + "dependency": dependency or "other", TAG + "stage": stage or "other",
            TAG + "blip_active": "true" if blip_active else "false", TAG + "retries": str(retries)}
    if blip:
        tags[TAG + "blip"] = blip
    worker = current_worker()
    if worker:
        tags[TAG + "worker"] = worker
    return tags


WORKER: str | None = None  # this Celery node's name, set in its main process before the fork


def current_worker() -> str | None:
    """The Celery node (one worker, whatever its prefork concurrency)."""
    try:
        from celery import current_task
        name = getattr(current_task.request, "hostname", None) if current_task else None
    except Exception:  # noqa: BLE001
        name = None
    return name or WORKER


# -- the event processor: log-derived events, and scrubbing for every event ----------

def process_event(event: dict, hint: dict | None) -> dict | None:
    try:
        event = _from_log(event, hint or {})
    except Exception:  # noqa: BLE001 - never lose the host's event over our enrichment
        logger.exception("blipguard: could not classify a Sentry event")
    return scrub(event) if event is not None else None


def _from_log(event: dict, hint: dict) -> dict | None:
    record = hint.get("log_record")
    if record is None:
        return event
    if JOB_LOGGER.match(record.name or ""):
        return None  # its handler re-logged the same line on ami.jobs.models: that copy is kept
    run = context.current()
    message = record.getMessage()
    for marker, reason in TERMINAL_LINES:
        if marker in message and "FAILURE" in message:
            if run is not None and getattr(run, "terminal_reported", False):
                return None
            return _tagged(event, "terminal", ["blipguard", "terminal", reason], "error",
                           {TAG + "reason": reason, TAG + "kind": "terminal"}, run)
    for suffix, pattern, dependency in TRANSIENT_LINES:
        if (record.name or "").endswith(suffix) and pattern.match(record.msg if isinstance(record.msg, str)
                                                                   else message):
            blip, first = claim_blip(dependency)
            if not first:
                return None
            return _tagged(event, "transient", ["blipguard", "transient", dependency], "warning",
                           _tags("transient", dependency, run.stage if run else None, True, current_retries(), blip),
                           run)
    # The pre-fix body logs a swallowed error without its traceback: the run noted it.
    exc = record.exc_info[1] if record.exc_info else (run.transient if run is not None else None)
    if exc is not None:
        c = classify(exc)
        if c.kind is Kind.TRANSIENT:
            blip, first = claim_blip(c.dependency or "other")
            if not first:
                return None
            return _tagged(event, "transient", ["blipguard", "transient", c.dependency or "other"], "warning",
                           _tags("transient", c.dependency, run.stage if run else None, True,
                                 current_retries(), blip), run)
    return event


def current_retries() -> int:
    """Retries the running Celery task has used (0 outside a task)."""
    try:
        from celery import current_task
        return int(getattr(current_task.request, "retries", 0) or 0) if current_task else 0
    except Exception:  # noqa: BLE001
        return 0


def _tagged(event: dict, kind: str, fingerprint: list, level: str, tags: dict, run) -> dict:
    event = {**event, "fingerprint": fingerprint, "level": level,
             "tags": {**(event.get("tags") or {}), TAG + "kind": kind, **tags}}
    if run is not None:
        event["contexts"] = {**(event.get("contexts") or {}), **_contexts(run.job_id)}
    return event
