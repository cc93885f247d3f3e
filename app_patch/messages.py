"""What the job's own log says, in one place. Pure."""

from .errors import describe

STAGE_NAMES = {"process": "saving progress", "results": "recording results", "ack": "acknowledging the task"}


def transient(dependency: str, operation: str, cause, attempt: int, max_retries: int, next_in: float) -> str:
    return (
        f"Transient {dependency} error while {operation}: {describe(cause)}. "
        f"Retrying in {next_in:.1f}s (retry {attempt} of {max_retries}); no images lost."
    )


def recovered(dependency: str, retries: int, seconds: float) -> str:
    return f"Recovered from a transient {dependency} error after {retries} retries ({seconds:.1f}s)."


def retries_exhausted(retries: int, seconds: float, dependency: str, cause) -> str:
    return (
        f"Retries exhausted: gave up after {retries} retries over {seconds:.1f}s; "
        f"last cause: {dependency} {describe(cause)}"
    )


def invalid_result(image_id, problem: str) -> str:
    which = f"image {image_id}" if image_id is not None else "an unidentified image"
    return f"Invalid result for {which}: {problem}. The image is recorded as failed; the job goes on."


def service_error(image_id, error: str) -> str:
    return f"Processing service failed on image {image_id}: {error}"
