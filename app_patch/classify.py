"""The one place that decides whether a failure is transient or terminal.

Pure: it looks only at the exception (and its causes). The result task, the metrics and
the Sentry reporting all ask here, so they can never disagree.
"""

import asyncio
import enum
import socket
from dataclasses import dataclass

from .errors import JobStateMissing, TransientDependencyError


class Kind(str, enum.Enum):
    TRANSIENT = "transient"  # retry; the dependency may come back
    STATE_MISSING = "state_missing"  # terminal: the job's state is gone
    UNEXPECTED = "unexpected"  # a bug or unknown failure: surface it, don't guess


@dataclass(frozen=True)
class Classification:
    kind: Kind
    dependency: str  # "redis", "nats", "" when not about a dependency

    @property
    def transient(self) -> bool:
        return self.kind is Kind.TRANSIENT


def _module_root(exc: BaseException) -> str:
    return type(exc).__module__.split(".", 1)[0]


def _redis_transient(exc: BaseException) -> bool | None:
    try:
        from redis import exceptions as r
    except ImportError:  # pragma: no cover - redis is a dependency
        return None
    if isinstance(exc, (r.ConnectionError, r.TimeoutError, r.BusyLoadingError, r.TryAgainError)):
        # AuthenticationError is a ConnectionError subclass but will not heal by itself.
        return not isinstance(exc, (r.AuthenticationError, getattr(r, "AuthorizationError", ())))
    if isinstance(exc, (r.ReadOnlyError, getattr(r, "MasterDownError", ()))):
        return True  # a failover in progress
    if isinstance(exc, r.RedisError):
        return False
    return None


def _nats_transient(exc: BaseException) -> bool | None:
    try:
        from nats import errors as n
    except ImportError:  # pragma: no cover - nats-py is a dependency
        return None
    transient = (
        n.ConnectionClosedError,
        n.NoServersError,
        n.TimeoutError,
        n.NoRespondersError,
        n.StaleConnectionError,
        n.ConnectionReconnectingError,
        n.UnexpectedEOF,
        n.FlushTimeoutError,
    )
    if isinstance(exc, transient):
        return True
    if isinstance(exc, n.Error):
        return False
    return None


def classify(exc: BaseException) -> Classification:
    """Classify any exception; follows `__cause__` for wrapped errors."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        found = _classify_one(current)
        if found.kind is not Kind.UNEXPECTED or _module_root(current) in ("redis", "nats"):
            return found
        current = current.__cause__
    return Classification(Kind.UNEXPECTED, "")


def _classify_one(exc: BaseException) -> Classification:
    if isinstance(exc, TransientDependencyError):
        return Classification(Kind.TRANSIENT, exc.dependency)
    if isinstance(exc, JobStateMissing):
        return Classification(Kind.STATE_MISSING, "redis")
    verdict = _redis_transient(exc)
    if verdict is not None:
        return Classification(Kind.TRANSIENT if verdict else Kind.UNEXPECTED, "redis")
    verdict = _nats_transient(exc)
    if verdict is not None:
        return Classification(Kind.TRANSIENT if verdict else Kind.UNEXPECTED, "nats")
    if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError, asyncio.TimeoutError)):
        return Classification(Kind.TRANSIENT, _guess_dependency(exc))
    return Classification(Kind.UNEXPECTED, "")


def _guess_dependency(exc: BaseException) -> str:
    root = _module_root(exc)
    return root if root in ("redis", "nats") else ""
