"""What one run of the result task has seen, for the patched pieces below the host's body.

The host's task body runs unchanged; it calls the patched primitives (``update_state``,
the ack) and its own helpers. Some of what those see never reaches the wrapper through
the body: the pre-fix body swallows exceptions after its ack, and the ack helper never
raises. They note it here, and the wrapper decides after the body returns.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field


@dataclass
class TaskRun:
    job_id: int
    # One delivery of a result: the Celery task id, kept across Celery retries and new
    # for a NATS redelivery, so a replay can be told from a duplicate (see state.CLAIM).
    delivery: str | None = None
    newly: dict[str, int] = field(default_factory=dict)  # stage -> images whose counts this delivery adds
    claims: dict[str, object] = field(default_factory=dict)  # stage -> state.Claim
    transient: BaseException | None = None  # a transient error the host's body may swallow
    ack_unconfirmed: str | None = None  # why the last ack was not confirmed by JetStream
    ack_spent: float = 0.0  # seconds this run's acks and re-ack pauses took (ack.ack_time_left)
    ack_call_started: float | None = None  # monotonic start of the ack helper call in progress
    ack_requested: bool = False  # an ack request went out in this run (the first gets the whole timeout)
    ack_attempted: bool = False  # the body called its ack helper (no NATS redelivery after that)
    results_counted: bool = False  # this run passed result counts to the host's progress
    missing_state: str | None = None  # why the job's state keys are gone, when they are
    stage: str | None = None  # the job stage whose state this run last touched (for metrics)
    terminal_reported: bool = False  # a terminal Sentry event went out (its log copy is dropped)


_current: contextvars.ContextVar[TaskRun | None] = contextvars.ContextVar("blipguard_task_run", default=None)


def current() -> TaskRun | None:
    return _current.get()


def current_job_id() -> int | None:
    run = _current.get()
    return run.job_id if run else None


@contextlib.contextmanager
def running(run: TaskRun):
    token = _current.set(run)
    try:
        yield run
    finally:
        _current.reset(token)
