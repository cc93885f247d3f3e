"""Why a job's state keys are gone, as far as Redis and the job can tell. Pure."""

from dataclasses import dataclass

FINAL_STATUSES = frozenset({"SUCCESS", "FAILURE", "REVOKED", "CANCELED", "CANCELLED"})
EVICTING_POLICIES = frozenset(
    {"allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random", "volatile-ttl"}
)


@dataclass(frozen=True)
class MissingStateFacts:
    job_status: str | None = None
    job_age: float | None = None  # seconds since the job started
    state_ttl: float | None = None  # seconds the keys were set to live
    evicted_keys: int | None = None  # Redis INFO stats
    maxmemory_policy: str | None = None
    redis_uptime: float | None = None  # seconds


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 2 * 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 120:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def explain(f: MissingStateFacts) -> str:
    """The `why` after "Job state keys not found in Redis: "."""
    if f.job_status and f.job_status.upper() in FINAL_STATUSES:
        return f"the job already finished or was cancelled (status {f.job_status}) and its state was cleaned up"
    if f.job_age is not None and f.state_ttl and f.job_age >= f.state_ttl:
        return (
            f"the keys outlived their TTL ({_duration(f.state_ttl)}; "
            f"the job started {_duration(f.job_age)} ago)"
        )
    if f.evicted_keys and f.maxmemory_policy in EVICTING_POLICIES:
        return (
            f"Redis evicted keys under maxmemory-policy {f.maxmemory_policy} "
            f"({f.evicted_keys} evicted since Redis started); keep job state where it cannot be evicted"
        )
    if f.redis_uptime is not None and f.job_age is not None and f.redis_uptime < f.job_age:
        return (
            f"Redis restarted {_duration(f.redis_uptime)} ago, after the job started, "
            "and came back without the job's state (no persistence?)"
        )
    return "they were deleted while the job was running (likely cleaned up concurrently)"
