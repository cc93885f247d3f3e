"""Pause leases: a pause that is not renewed ends by itself. Pure."""

from dataclasses import dataclass, replace

from ..errors import ConfigurationError

MAX_LEASE = 3600.0  # an hour: longer pauses must be renewed
MAX_REASON = 200


class InvalidPause(ConfigurationError):
    """A pause or resume request that is refused; the message says why."""


@dataclass(frozen=True)
class Lease:
    dependency: str
    reason: str
    paused_at: float
    expires_at: float
    renewals: int = 0

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    def as_dict(self, now: float) -> dict:
        return {
            "dependency": self.dependency,
            "reason": self.reason,
            "paused_for": round(now - self.paused_at, 3),
            "remaining": round(self.remaining(now), 3),
            "renewals": self.renewals,
        }


def validate(lease_seconds, reason, dependency) -> tuple[float, str, str]:
    """Check a pause request's arguments; raise InvalidPause naming the bad one."""
    if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)):
        raise InvalidPause(f"lease must be a number of seconds, got {type(lease_seconds).__name__} {lease_seconds!r:.40}")
    if not lease_seconds > 0:
        raise InvalidPause(f"lease must be > 0 seconds, got {lease_seconds!r}")
    if lease_seconds > MAX_LEASE:
        raise InvalidPause(f"lease must be at most {MAX_LEASE:g} seconds (renew it instead), got {lease_seconds!r}")
    if not isinstance(dependency, str) or not dependency.strip() or len(dependency) > 64:
        raise InvalidPause(f"dependency must be a non-empty name of at most 64 characters, got {dependency!r:.80}")
    if not isinstance(reason, str):
        raise InvalidPause(f"reason must be a string, got {type(reason).__name__}")
    return float(lease_seconds), reason[:MAX_REASON], dependency.strip()


class Leases:
    """The leases one worker holds, one per dependency. Not thread-safe: callers lock."""

    def __init__(self):
        self._by_dep: dict[str, Lease] = {}

    def pause(self, dependency: str, reason: str, seconds: float, now: float) -> tuple[Lease, bool]:
        """Take or renew a lease; returns (lease, renewed). A renewal never shortens it."""
        old = self._by_dep.get(dependency)
        if old is not None and old.expires_at > now:
            lease = replace(old, reason=reason or old.reason, expires_at=max(old.expires_at, now + seconds),
                            renewals=old.renewals + 1)
            renewed = True
        else:
            lease = Lease(dependency, reason, now, now + seconds)
            renewed = False
        self._by_dep[dependency] = lease
        return lease, renewed

    def resume(self, dependency: str | None = None) -> list[Lease]:
        """End one dependency's lease, or all; returns what ended."""
        if dependency is None:
            ended, self._by_dep = list(self._by_dep.values()), {}
            return ended
        lease = self._by_dep.pop(dependency, None)
        return [lease] if lease else []

    def expire(self, now: float) -> list[Lease]:
        ended = [lease for lease in self._by_dep.values() if lease.expires_at <= now]
        for lease in ended:
            del self._by_dep[lease.dependency]
        return ended

    def active(self, now: float) -> list[Lease]:
        return [lease for lease in self._by_dep.values() if lease.expires_at > now]

    def paused(self, now: float) -> bool:
        return bool(self.active(now))

    def until(self, now: float) -> float:
        """When the last active lease ends (0 when not paused)."""
        return max((lease.expires_at for lease in self.active(now)), default=0.0)


def record_failure(failures: dict, dependency: str, threshold: int) -> tuple[dict, bool]:
    """The in-worker breaker: count one more consecutive transient error to `dependency`;
    trips (True) exactly when the run reaches `threshold`. Pure: returns a new dict."""
    if threshold < 1:
        raise ConfigurationError(f"BREAKER_THRESHOLD must be >= 1, got {threshold}")
    n = failures.get(dependency, 0) + 1
    return {**failures, dependency: n}, n == threshold
