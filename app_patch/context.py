"""Which job the current task works for, so lower layers can write to its log."""

import contextlib
import contextvars

current_job_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("blipguard_job_id", default=None)


@contextlib.contextmanager
def working_for(job_id: int):
    token = current_job_id.set(job_id)
    try:
        yield
    finally:
        current_job_id.reset(token)
