"""The job-state update, fixed: transient errors raise, missing state is proven.

Installed as ``AsyncJobStateManager.update_state`` on the host; uses the host manager's
own key names and Redis connection, so the key layout stays the host's. One pipeline,
one round trip: the same Redis cost as the code it replaces.
"""

import time
from dataclasses import dataclass

from .classify import classify
from .context import current_delivery
from .diagnosis import MissingStateFacts, explain
from .errors import JobStateMissing, TransientDependencyError


@dataclass(frozen=True)
class StageProgress:
    total: int
    remaining: int
    failed: int
    newly_done: int  # images this call moved out of the stage's pending set

    @property
    def processed(self) -> int:
        return self.total - self.remaining

    @property
    def percentage(self) -> float:
        return 1.0 if self.total == 0 else self.processed / self.total


def _ids(values) -> list[str]:
    return [str(v) for v in values or ()]


def _transient_or_raise(e: Exception, operation: str):
    c = classify(e)
    if c.transient:
        raise TransientDependencyError(c.dependency or "redis", e, operation) from e
    raise e


def owner_key(manager, stage: str) -> str:
    """Hash of image -> the delivery that moved it through `stage` (it alone counts it)."""
    return f"{manager._pending_key(stage)}:owner"


# Moves images out of a stage's pending set; the delivery that moved an image owns it.
# A replay by the same delivery (its reply was lost) still counts; another delivery of
# the same image, or an image outside the job, does not.
CLAIM = """
local n = 0
for i = 3, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
    n = n + 1
  elseif redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    n = n + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return n
"""


def update_state(manager, processed_image_ids, stage: str, failed_image_ids=None, **_ignored) -> StageProgress:
    """One MULTI/EXEC round trip: the same Redis cost as the code it replaces.

    With a delivery token in context (set by the result task) counters stay exact even
    when a command was applied and its reply never came: see CLAIM."""
    ids, failed = _ids(processed_image_ids), _ids(failed_image_ids)
    pending_key = manager._pending_key(stage)
    failed_key = manager._failed_key
    ttl = getattr(manager, "TIMEOUT", 7 * 86400)
    delivery = current_delivery.get()
    try:
        pipe = manager._get_redis().pipeline()
        if ids and delivery:
            pipe.eval(CLAIM, 2, pending_key, owner_key(manager, stage), delivery, int(ttl), *ids)
        elif ids:
            pipe.srem(pending_key, *ids)
        else:
            pipe.scard(pending_key)
        if failed:
            pipe.sadd(failed_key, *failed)
            pipe.expire(failed_key, ttl)
        pipe.scard(pending_key)
        pipe.scard(failed_key)
        pipe.get(manager._total_key)
        results = pipe.execute()
    except Exception as e:
        _transient_or_raise(e, f"update_state({stage})")
    remaining, failed_count, total_raw = results[-3:]
    if total_raw is None:
        raise JobStateMissing(manager.job_id, explain(missing_state_facts(manager)))
    newly = int(results[0]) if ids else 0
    return StageProgress(total=int(total_raw), remaining=int(remaining), failed=int(failed_count), newly_done=newly)


def cleanup_extra(manager) -> None:
    """Delete what this module adds beside the host's keys."""
    stages = getattr(manager, "STAGES", ("process", "results"))
    manager._get_redis().delete(*[owner_key(manager, s) for s in stages])


def redis_facts(redis) -> dict:
    """Eviction policy, evictions and uptime, for the missing-state diagnosis."""
    facts: dict = {}
    try:
        info = redis.info()
        facts["evicted_keys"] = int(info.get("evicted_keys", 0))
        facts["redis_uptime"] = float(info.get("uptime_in_seconds", 0))
        facts["maxmemory_policy"] = info.get("maxmemory_policy") or redis.config_get("maxmemory-policy").get(
            "maxmemory-policy"
        )
    except Exception:  # diagnosis is best effort: CONFIG may be disabled, Redis may blip
        pass
    return facts


def missing_state_facts(manager, job=None) -> MissingStateFacts:
    """Gather what the diagnosis needs: the job's status and age, and Redis's facts."""
    from .host import current_host

    facts = redis_facts(manager._get_redis())
    status, started = current_host().job_status_and_start(manager.job_id) if job is None else job
    age = None if started is None else time.time() - started
    return MissingStateFacts(
        job_status=status,
        job_age=age,
        state_ttl=float(getattr(manager, "TIMEOUT", 7 * 86400)),
        **facts,
    )
