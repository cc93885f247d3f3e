"""Typed failures of the result path: the caller can always tell them apart."""


class BlipguardError(Exception):
    """Base of every error app_patch raises."""


class TransientDependencyError(BlipguardError):
    """A dependency (Redis, NATS) failed in a way that may heal: retry, don't fail the job."""

    def __init__(self, dependency: str, cause: BaseException | str, operation: str = ""):
        self.dependency = dependency
        self.cause = cause
        self.operation = operation
        where = f" during {operation}" if operation else ""
        super().__init__(f"{dependency} unavailable{where}: {describe(cause)}")


class JobStateMissing(BlipguardError):
    """The job's state keys are really gone from Redis: terminal for this job."""

    PREFIX = "Job state keys not found in Redis"

    def __init__(self, job_id: int, why: str):
        self.job_id = job_id
        self.why = why
        super().__init__(f"{self.PREFIX}: {why}")


class ConfigurationError(BlipguardError):
    """A BLIPGUARD setting is invalid; the message names the key and the accepted values."""


def describe(exc: BaseException | str) -> str:
    """`ExcType: message`, the way on-call want to read a cause in one line."""
    if isinstance(exc, str):
        return exc
    text = str(exc) or repr(exc)
    return f"{type(exc).__name__}: {text}"
