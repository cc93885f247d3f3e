"""What the job's own log says, in one place. Pure."""

from .diagnosis import FINAL_STATUSES
from .errors import describe

__all__ = ["FINAL_STATUSES", "held_back", "host_retry", "recovered", "resumed", "retries_exhausted", "transient", "transient_acked"]


def transient(dependency: str, operation: str, cause, attempt: int, max_retries: int, next_in: float) -> str:
    return (
        f"Transient {dependency} error while {operation}: {describe(cause)}. "
        f"Retrying in {next_in:.1f}s (retry {attempt} of {max_retries}); no images lost."
    )


def transient_acked(cause, attempt: int) -> str:
    return (
        f"Transient nats error while acknowledging the task: {describe(cause)}. "
        f"Acknowledged again at once (attempt {attempt}); no images lost."
    )


def host_retry(dependency: str, cause, attempt: int, max_retries: int | None, next_in: float | None) -> str:
    when = f" in {next_in:.1f}s" if next_in is not None else ""
    of = f" of {max_retries}" if max_retries is not None else ""
    return (
        f"Transient {dependency} error while saving progress: {describe(cause)}. "
        f"Celery will retry{when} (retry {attempt}{of}); no images lost."
    )


def recovered(dependency: str, retries: int, seconds: float) -> str:
    return f"Recovered from a transient {dependency} error after {retries} retries ({seconds:.1f}s)."


def retries_exhausted(retries: int, seconds: float | None, dependency: str, cause) -> str:
    over = f" over {seconds:.1f}s" if seconds is not None else ""
    return f"Retries exhausted: gave up after {retries} retries{over}; last cause: {dependency} {describe(cause)}"


def resumed(dependency: str, reason: str, waited: float) -> str:
    return (
        f"Resumed after the pause for {dependency} ({reason}): held results are processed again "
        f"(this one waited {waited:.0f}s); no images lost."
    )


def held_back(dependency: str, reason: str, exc=None) -> str:
    after = f" after {describe(exc)}" if exc is not None else ""
    return (
        f"Result held back{after}: workers are paused while {dependency} is down ({reason}); "
        "it returns to the queue without spending a retry."
    )
