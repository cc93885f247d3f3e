"""Job progress state in Redis sets (pre-fix, as on the reference platform)."""

import logging
from dataclasses import dataclass

from django_redis import get_redis_connection
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

STAGES = ("process", "results")
STATE_TTL = 7 * 24 * 3600


@dataclass
class JobStateProgress:
    total: int
    remaining: int
    processed: int
    failed: int

    @property
    def percentage(self) -> float:
        return 1.0 if self.total == 0 else self.processed / self.total


class AsyncJobStateManager:
    TIMEOUT = STATE_TTL

    def __init__(self, job_id: int):
        self.job_id = job_id

    def _pending_key(self, stage: str) -> str:
        return f"job:{self.job_id}:pending_images:{stage}"

    @property
    def _total_key(self) -> str:
        return f"job:{self.job_id}:pending_images_total"

    @property
    def _failed_key(self) -> str:
        return f"job:{self.job_id}:failed_images"

    def _get_redis(self):
        return get_redis_connection("default")

    def initialize_job(self, image_ids: list) -> None:
        ids = [str(i) for i in image_ids]
        pipe = self._get_redis().pipeline()
        for stage in STAGES:
            pipe.delete(self._pending_key(stage))
            if ids:
                pipe.sadd(self._pending_key(stage), *ids)
            pipe.expire(self._pending_key(stage), STATE_TTL)
        pipe.set(self._total_key, len(ids), ex=STATE_TTL)
        pipe.delete(self._failed_key)
        pipe.execute()

    def update_state(self, processed_image_ids, stage: str, failed_image_ids=None) -> JobStateProgress | None:
        ids = [str(i) for i in processed_image_ids]
        failed = [str(i) for i in failed_image_ids or ()]
        try:
            pipe = self._get_redis().pipeline()
            if ids:
                pipe.srem(self._pending_key(stage), *ids)
            if failed:
                pipe.sadd(self._failed_key, *failed)
                pipe.expire(self._failed_key, STATE_TTL)
            pipe.scard(self._pending_key(stage))
            pipe.scard(self._failed_key)
            pipe.get(self._total_key)
            results = pipe.execute()
        except RedisError as e:
            # The bug: a transient error looks exactly like missing state to the caller,
            # and the cause goes to this module's logger, never to the job's own log.
            logger.error(f"Redis error updating job {self.job_id} state: {e}")
            return None
        remaining, failed_count, total_raw = results[-3:]
        if total_raw is None:
            return None
        total = int(total_raw)
        return JobStateProgress(
            total=total, remaining=remaining, processed=total - remaining, failed=failed_count
        )

    def cleanup(self) -> None:
        keys = [self._pending_key(s) for s in STAGES] + [self._total_key, self._failed_key]
        self._get_redis().delete(*keys)
