"""``AsyncJobStateManager.update_state``, fixed, with the host's contract kept.

Same keys (the host's own ``_get_pending_key(stage)``, ``_failed_key``, ``_total_key``),
same single MULTI/EXEC round trip, same return values: the host's ``JobStateProgress``,
or ``None`` only when the job's total key is really gone. A Redis error is raised as the
``RedisError`` it is (the current platform's contract, which its ``autoretry_for`` and
``except RedisError: raise`` rely on); the pre-fix platform turned it into ``None``, which
its task read as "state missing" and failed the job.

What it adds: ``newly_removed`` counts the images of this delivery whose result counts are
still to be added: the ones it moved out of the stage's pending set, and ones another
delivery moved but never counted (that worker died between its claim and its progress
write; this NATS redelivery takes them over). A redelivery of an image already counted
counts 0. What is counted is marked atomically (``Claim.count``, just before the progress
write, under the job's progress lock, patcher.py; on the pre-fix platform in the claim's
own script), so two live deliveries never both count one image, and on the current
platform the results stage reaches 100 % only once every image's counts are in. Plus a missing-state
diagnosis in the job's own log.
"""

from __future__ import annotations

import hashlib
import logging
import time

from . import context, metrics, sentry
from .pause import board
from .classify import classify
from .diagnosis import FINAL_STATUSES, MissingStateFacts, explain

# Moves images out of a stage's pending set, noting the delivery that moved each. Counts
# the images whose result counts this delivery is to add: moved now, or moved earlier (by
# a replay of this delivery after a lost reply, or by one that died before its progress
# write) and not counted by another delivery. An image outside the job counts 0.
CLAIM = """
local n = 0
for i = 3, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[1])
    n = n + 1
  elseif redis.call('HEXISTS', KEYS[2], ARGV[i]) == 1 then
    local by = redis.call('HGET', KEYS[3], ARGV[i])
    if not by or by == ARGV[1] then
      n = n + 1
    end
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
return n
"""
# Marks this delivery's images counted in the hash `counted`, only images of the job
# (claimed: in the hash `owner`), so the count never exceeds the claims; returns how many
# are this delivery's to count. Idempotent for one delivery: a retry after a lost reply
# counts again. Shared by COUNT and CLAIM_COUNT.
_MARK = """
local function mark(counted, owner)
  local mine = 0
  for i = 3, #ARGV do
    if redis.call('HEXISTS', owner, ARGV[i]) == 1 then
      redis.call('HSETNX', counted, ARGV[i], ARGV[1])
      if redis.call('HGET', counted, ARGV[i]) == ARGV[1] then
        mine = mine + 1
      end
    end
  end
  redis.call('EXPIRE', counted, ARGV[2])
  return mine
end
"""
# KEYS[1] the counted hash, KEYS[2] the owner hash: {how many are this delivery's to count,
# how many are counted in all}.
COUNT = _MARK + """
local mine = mark(KEYS[1], KEYS[2])
return {mine, redis.call('HLEN', KEYS[1])}
"""
# The claim and the count mark in one round trip, where the host acked before its results
# stage (the pre-fix order): its write is not held for counts, so no lock is waited for
# between the two. Returns {claimed to count, how many are this delivery's to count, how
# many are counted in all}; the mark as COUNT's, when the claim has images to count.
CLAIM_COUNT = CLAIM.replace("return n\n", _MARK + """local mine = 0
if n > 0 then
  mine = mark(KEYS[3], KEYS[2])
end
return {n, mine, redis.call('HLEN', KEYS[3])}
""")
UNCOUNT = """
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
"""
CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest()
CLAIM_COUNT_SHA = hashlib.sha1(CLAIM_COUNT.encode()).hexdigest()
COUNTED_STAGE = "results"  # the stage whose claims carry result counts (patcher.py)


def owner_key(manager, stage: str) -> str:
    """Hash of image -> the delivery that moved it through ``stage``."""
    return f"{manager._get_pending_key(stage)}:owner"


def counted_key(manager, stage: str) -> str:
    """Hash of image -> the delivery whose result counts for it are in ``stage``'s progress."""
    return f"{manager._get_pending_key(stage)}:counted"


def _ids(values) -> list[str]:
    return [str(v) for v in values or ()]


def _ttl(manager) -> int:
    return int(getattr(manager, "TIMEOUT", 7 * 86400))


class Claim:
    """This delivery's images in one stage, and the hash (image -> delivery) that marks
    whose counts are in."""

    def __init__(self, redis, key: str, ids: list[str], total: int, ttl: int, delivery: str | None,
                 counted: tuple[int, int] | None = None, owner: str = ""):
        self.redis, self.key, self.ids, self.total, self.ttl = redis, key, ids, total, ttl
        self.owner = owner  # the owner hash: only images claimed in the job are marked
        self.delivery = delivery or "-"
        self._counted = counted  # marked already, in the claim's round trip (CLAIM_COUNT)

    def count(self) -> tuple[int, int]:
        """Mark this delivery's images counted: (how many are this delivery's to count,
        how many are counted in all)."""
        if self._counted is not None:
            counted, self._counted = self._counted, None
            return counted
        mine, done = self.redis.register_script(COUNT)(keys=[self.key, self.owner],
                                                       args=[self.delivery, self.ttl, *self.ids])
        return int(mine), int(done)

    def uncount(self) -> None:
        if self.ids:
            self.redis.register_script(UNCOUNT)(keys=[self.key], args=[self.delivery, *self.ids])


def _execute(manager, stage: str, ids: list[str], failed: list[str], delivery: str | None, by_sha: bool,
             count: bool = False):
    pending_key = manager._get_pending_key(stage)
    failed_key = manager._failed_key
    ttl = _ttl(manager)
    pipe = manager._get_redis().pipeline()
    if ids and delivery:
        args = (3, pending_key, owner_key(manager, stage), counted_key(manager, stage), delivery, ttl, *ids)
        script, sha = (CLAIM_COUNT, CLAIM_COUNT_SHA) if count else (CLAIM, CLAIM_SHA)
        pipe.evalsha(sha, *args) if by_sha else pipe.eval(script, *args)
    elif ids:
        pipe.srem(pending_key, *ids)
    if failed:
        pipe.sadd(failed_key, *failed)
        pipe.expire(failed_key, ttl)
    pipe.scard(pending_key)
    pipe.scard(failed_key)
    pipe.get(manager._total_key)
    return pipe.execute()


def note_transient(e: BaseException) -> None:
    """Remember a transient error the running result task met in our code: the pre-fix
    body swallows it and logs only its text, and Sentry's event for that line is classified
    from this note."""
    run = context.current()
    if run is not None and classify(e).transient:
        run.transient = e


def update_state(manager, processed_image_ids, stage: str, failed_image_ids=None, *, host):
    from redis.exceptions import NoScriptError

    ids, failed = _ids(processed_image_ids), _ids(failed_image_ids)
    run = context.current()
    delivery = run.delivery if run is not None else None
    if run is not None:
        run.stage = stage
    # Acked already (the pre-fix order): the results stage is not held for counts, so no
    # lock is waited for before the count, and the count mark rides on the claim's round trip.
    count = bool(ids and delivery and stage == COUNTED_STAGE and run is not None and run.ack_attempted)
    try:
        try:
            results = _execute(manager, stage, ids, failed, delivery, by_sha=True, count=count)
        except NoScriptError:  # first use since Redis started: send the script once in full
            results = _execute(manager, stage, ids, failed, delivery, by_sha=False, count=count)
    except Exception as e:
        note_transient(e)
        raise
    remaining, failed_count, total_raw = (int(results[-3]), int(results[-2]), results[-1])
    if total_raw is None:
        _report_missing(manager, stage, host, run)
        return None
    total = int(total_raw)
    processed = total - remaining
    percentage = processed / total if total else 1.0
    counted = None
    if count:
        newly, mine, done = (int(x) for x in results[0])
        counted = (mine, done)
    else:
        newly = int(results[0]) if ids else 0
    if run is not None:
        run.newly[stage] = newly
        run.claims[stage] = Claim(manager._get_redis(), counted_key(manager, stage), ids if newly else [], total,
                                  ttl=_ttl(manager), delivery=delivery, counted=counted,
                                  owner=owner_key(manager, stage))
    logging.getLogger(type(manager).__module__).info(
        f"Pending images from Redis for job {manager.job_id} {stage}: {remaining}/{total}: {percentage * 100}%"
    )
    return host.progress(
        remaining=remaining, total=total, processed=processed, percentage=percentage, failed=failed_count,
        newly_removed=newly,
    )


def cleanup_extra(manager) -> None:
    """Delete what this module adds beside the host's keys (best effort, like the host's)."""
    stages = getattr(manager, "STAGES", ("process", "results"))
    try:
        keys = [k for s in stages for k in (owner_key(manager, s), counted_key(manager, s))]
        manager._get_redis().delete(*keys)
    except Exception as e:  # noqa: BLE001 - the host's cleanup swallows Redis errors too
        logging.getLogger(__name__).warning("could not delete claim hashes of job %s: %s", manager.job_id, e)


def _report_missing(manager, stage: str, host, run) -> None:
    facts = missing_state_facts(manager, host)
    why = explain(facts)
    if run is not None:
        run.missing_state = why
    # The host fails the job next and logs that at ERROR; a late result for a finished
    # job is routine.
    level = logging.INFO if facts.job_status in FINAL_STATUSES else logging.WARNING
    if level == logging.WARNING:
        during_blip = board.in_blip()
        metrics.job_failed("state_missing", during_blip, manager.job_id)
        sentry.terminal("state_missing", "redis", stage, f"Job {manager.job_id} failed: Job state keys not found in "
                        f"Redis: {why}", sentry.current_retries(), manager.job_id, during_blip)
    host.job_logger(manager.job_id).log(level, f"Job state keys not found in Redis (stage={stage}): {why}")


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
    except Exception:  # noqa: BLE001 - diagnosis is best effort: CONFIG may be disabled, Redis may blip
        pass
    return facts


def missing_state_facts(manager, host) -> MissingStateFacts:
    facts = redis_facts(manager._get_redis())
    status, started = host.job_status_and_start(manager.job_id)
    age = None if started is None else time.time() - started
    return MissingStateFacts(
        job_status=status, job_age=age, state_ttl=float(getattr(manager, "TIMEOUT", 7 * 86400)), **facts
    )
