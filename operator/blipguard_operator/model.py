"""The values the blip state machine (``blip.py``) reads and writes.

Events carry their own ``now`` (seconds, any monotonic origin) because the machine never
reads a clock: the kopf layer stamps each event, and tests replay exact timelines.
Actions are plain data the kopf layer carries out (Celery control commands, NATS
consumer pauses, Kubernetes events); every action of one blip carries its ``blip_id`` so
logs, events and worker leases of one incident can be joined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from blipguard.app_patch.pause.leases import MAX_LEASE

# The workers refuse longer leases: longer pauses are renewed instead, so a crashed
# operator cannot leave the fleet paused for long.
MAX_LEASE_SECONDS = MAX_LEASE
# A container stuck in one of these is trouble even while the pod still reports Ready
# between two crashes.
TROUBLE_WAITING_REASONS = frozenset({"CrashLoopBackOff"})


class Dependency(StrEnum):
    REDIS = "redis"
    NATS = "nats"


class Mode(StrEnum):
    ACTIVE = "active"  # detects, reports and pauses/resumes the workers
    OBSERVE_ONLY = "observe-only"  # detects and reports only: a dry run of the guard
    SUSPENDED = "suspended"  # ignores everything


class Phase(StrEnum):
    WATCHING = "watching"
    PAUSED = "paused"
    DEGRADED = "degraded"
    SUSPENDED = "suspended"


# --- settings ----------------------------------------------------------------------


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, got {value!r:.40}")
    return float(value)


@dataclass(frozen=True)
class GuardSettings:
    """One guard's tuning. Validated on construction: a bad custom resource must fail with
    a message naming the field, not pause the fleet for a surprising length of time."""

    settle_seconds: float = 5.0
    lease_seconds: float = 30.0
    renew_fraction: float = 0.5
    max_pause_seconds: float = 600.0
    drain_timeout_seconds: float = 30.0
    mode: Mode = Mode.ACTIVE

    def __post_init__(self) -> None:
        settle = _number("settle_seconds", self.settle_seconds)
        lease = _number("lease_seconds", self.lease_seconds)
        max_pause = _number("max_pause_seconds", self.max_pause_seconds)
        drain = _number("drain_timeout_seconds", self.drain_timeout_seconds)
        if isinstance(self.renew_fraction, bool) or not isinstance(self.renew_fraction, (int, float)):
            raise ValueError(f"renew_fraction must be a number, got {self.renew_fraction!r:.40}")
        if settle < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {self.settle_seconds!r}")
        if not 0 < lease <= MAX_LEASE_SECONDS:
            raise ValueError(
                f"lease_seconds must be > 0 and at most {MAX_LEASE_SECONDS:g} (the workers' limit; "
                f"longer pauses are renewed), got {self.lease_seconds!r}"
            )
        if not 0 < self.renew_fraction < 1:
            raise ValueError(
                f"renew_fraction must be between 0 and 1 exclusive (renew before the lease runs out), "
                f"got {self.renew_fraction!r}"
            )
        if max_pause <= 0:
            raise ValueError(f"max_pause_seconds must be > 0, got {self.max_pause_seconds!r}")
        if drain < 0:
            raise ValueError(f"drain_timeout_seconds must be >= 0, got {self.drain_timeout_seconds!r}")
        try:
            mode = Mode(self.mode)
        except ValueError:
            raise ValueError(f"mode must be one of {[m.value for m in Mode]}, got {self.mode!r:.40}") from None
        object.__setattr__(self, "mode", mode)

    @property
    def renew_after_seconds(self) -> float:
        return self.lease_seconds * self.renew_fraction


# --- events ------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    restart_count: int = 0
    waiting_reason: str | None = None


@dataclass(frozen=True)
class PodObserved:
    """What Kubernetes says about one watched pod (a create, update or delete)."""

    now: float
    dependency: Dependency
    name: str
    uid: str
    ready: bool = True
    containers: tuple[ContainerStatus, ...] = ()
    deleted: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "dependency", Dependency(self.dependency))
        except ValueError:
            raise ValueError(
                f"dependency must be one of {[d.value for d in Dependency]}, got {self.dependency!r:.40}"
            ) from None
        object.__setattr__(self, "containers", tuple(self.containers))


@dataclass(frozen=True)
class Tick:
    """Time passes: drives settle, renewals, max pause and the drain wait."""

    now: float


@dataclass(frozen=True)
class HeldResultsDrained:
    """The results the workers held back during the pause are processed: NATS may resume
    without redelivering work whose results are still on their way."""

    now: float


@dataclass(frozen=True)
class HeldResultsDraining:
    """``remaining`` held results are still on their way (in the broker, or handed out by a
    paused job consumer and not acked yet). Fewer than last time is progress: the drain
    wait times out only after ``drain_timeout_seconds`` without any."""

    now: float
    remaining: int


@dataclass(frozen=True)
class ForceResume:
    """On-call's override: resume everything now."""

    now: float
    by: str = "on-call"


Event = PodObserved | Tick | HeldResultsDrained | HeldResultsDraining | ForceResume


# --- actions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pause:
    """Pause the workers' result consumers (and hold NATS) for ``lease_seconds``."""

    blip_id: str
    dependency: Dependency
    reason: str
    lease_seconds: float


@dataclass(frozen=True)
class Renew:
    """Pause again before the lease runs out: renewals extend, never shorten."""

    blip_id: str
    dependency: Dependency
    reason: str
    lease_seconds: float


@dataclass(frozen=True)
class ResumeCelery:
    blip_id: str


@dataclass(frozen=True)
class ResumeNats:
    blip_id: str


@dataclass(frozen=True)
class HoldNats:
    """Keep the job consumers paused at the blip paused while the held results drain (their
    server-side pause would otherwise run out by itself)."""

    blip_id: str


@dataclass(frozen=True)
class CheckConsuming:
    """Verify every worker consumes its result queue again (celery#7733 can drop it)."""

    blip_id: str


class ReportReason(StrEnum):
    BLIP_STARTED = "BlipStarted"
    SETTLE_INTERRUPTED = "SettleInterrupted"
    RECOVERED = "Recovered"
    DEGRADED = "Degraded"
    NATS_RESUMED = "NatsResumed"
    FORCE_RESUMED = "ForceResumed"
    MODE_CHANGED = "ModeChanged"
    RESTORED = "Restored"  # a restarted operator took the blip up again from status


_WARNINGS = frozenset({ReportReason.BLIP_STARTED, ReportReason.DEGRADED, ReportReason.FORCE_RESUMED})


@dataclass(frozen=True)
class Report:
    """A human-readable transition, e.g. a Kubernetes event on the guard resource."""

    blip_id: str | None
    reason: ReportReason
    message: str

    @property
    def warning(self) -> bool:
        """Kubernetes event type Warning rather than Normal."""
        return self.reason in _WARNINGS


Action = Pause | Renew | ResumeCelery | ResumeNats | HoldNats | CheckConsuming | Report
