"""Pause leases: a pause that is not renewed ends by itself. Pure."""

from dataclasses import dataclass, replace

from ..errors import ConfigurationError

MAX_LEASE = 3600.0  # an hour: longer pauses must be renewed
MAX_REASON = 200


class InvalidPause(ConfigurationError):
    """A pause or resume request that is refused; the message says why."""


OPERATOR = "operator"  # the operator, on-call or a test, through the control commands
PEER = "peer"  # adopted at start-up from a peer's status
BREAKER = "breaker"  # this worker's own breaker: only its probe (or an explicit override) ends it
SOURCES = (OPERATOR, PEER, BREAKER)


@dataclass(frozen=True)
class Lease:
    dependency: str
    reason: str
    paused_at: float
    expires_at: float
    renewals: int = 0
    source: str = OPERATOR

    def remaining(self, now: float) -> float:
        return max(0.0, self.expires_at - now)

    def as_dict(self, now: float) -> dict:
        return {
            "dependency": self.dependency,
            "reason": self.reason,
            "paused_for": round(now - self.paused_at, 3),
            "remaining": round(self.remaining(now), 3),
            "renewals": self.renewals,
            "source": self.source,
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


def check_source(source) -> str:
    if source not in SOURCES:
        raise InvalidPause(f"source must be one of {list(SOURCES)}, got {source!r:.40}")
    return source


def _family(source: str) -> tuple[str, ...]:
    # An operator's resume also ends what peers passed on: those leases mirror an
    # operator's pause. Breaker leases are ended only by the breaker.
    return (BREAKER,) if source == BREAKER else (OPERATOR, PEER)


class Leases:
    """The leases one worker holds, one per dependency and source. Not thread-safe:
    callers lock."""

    def __init__(self):
        self._by_key: dict[tuple[str, str], Lease] = {}

    def pause(self, dependency: str, reason: str, seconds: float, now: float,
              source: str = OPERATOR) -> tuple[Lease, bool]:
        """Take or renew a lease; returns (lease, renewed). A renewal never shortens it."""
        key = (dependency, source)
        old = self._by_key.get(key)
        if old is not None and old.expires_at > now:
            lease = replace(old, reason=reason or old.reason, expires_at=max(old.expires_at, now + seconds),
                            renewals=old.renewals + 1)
            renewed = True
        else:
            lease = Lease(dependency, reason, now, now + seconds, source=source)
            renewed = False
        self._by_key[key] = lease
        return lease, renewed

    def resume(self, dependency: str | None = None, source: str = OPERATOR) -> list[Lease]:
        """End one dependency's leases, or all, that `source` may end; returns what ended.

        An operator's resume ends operator and peer leases but never a breaker lease: a
        worker that cannot reach the dependency itself stays held until its own probe
        answers (or a resume with source "breaker" overrides it)."""
        family = _family(source)
        ended = [lease for (dep, src), lease in self._by_key.items()
                 if src in family and (dependency is None or dep == dependency)]
        for lease in ended:
            del self._by_key[(lease.dependency, lease.source)]
        return ended

    def expire(self, now: float) -> list[Lease]:
        ended = [lease for lease in self._by_key.values() if lease.expires_at <= now]
        for lease in ended:
            del self._by_key[(lease.dependency, lease.source)]
        return ended

    def active(self, now: float) -> list[Lease]:
        return [lease for lease in self._by_key.values() if lease.expires_at > now]

    def held(self, dependency: str, source: str, now: float) -> Lease | None:
        lease = self._by_key.get((dependency, source))
        return lease if lease is not None and lease.expires_at > now else None

    def paused(self, now: float) -> bool:
        return bool(self.active(now))

    def until(self, now: float) -> float:
        """When the last active lease ends (0 when not paused)."""
        return max((lease.expires_at for lease in self.active(now)), default=0.0)

    def board_view(self, now: float) -> dict:
        """What the tasks read: the longest active lease per dependency, and the breaker's."""
        leases: dict[str, dict] = {}
        for lease in sorted(self.active(now), key=lambda lease: lease.expires_at):
            leases[lease.dependency] = {"until": lease.expires_at, "reason": lease.reason}
        breaker = {lease.dependency: lease.expires_at for lease in self.active(now) if lease.source == BREAKER}
        return {"leases": leases, "breaker": breaker}

