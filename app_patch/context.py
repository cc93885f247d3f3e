"""Which job the current task works for, so lower layers can write to its log."""

import contextlib
import contextvars

current_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("blipguard_job_id", default=None)
# Identifies one delivery of a result (the Celery task id: kept across Celery retries,
# new for a NATS redelivery), so state updates can tell a replay from a duplicate.
current_delivery: contextvars.ContextVar[str | None] = contextvars.ContextVar("blipguard_delivery", default=None)


@contextlib.contextmanager
def working_for(job_id: int, delivery: str | None = None):
    tokens = (current_job_id.set(job_id), current_delivery.set(delivery))
    try:
        yield
    finally:
        current_job_id.reset(tokens[0])
        current_delivery.reset(tokens[1])
