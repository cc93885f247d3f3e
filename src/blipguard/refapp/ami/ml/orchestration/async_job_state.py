"""Per-job progress state of async (NATS) ML jobs, in Redis (fact sheet §2).

Keys (raw, unprefixed, DB 0, 7-day TTL): ``job:{id}:pending_images:{stage}`` for the
stages ``process`` and ``results``, ``job:{id}:pending_images_total`` and
``job:{id}:failed_images``. The client is django-redis's raw redis-py client for the
``default`` cache: the cache's IGNORE_EXCEPTIONS does not apply to it.
"""

import logging
from dataclasses import dataclass

from django_redis import get_redis_connection
from redis.exceptions import RedisError

from ami.version import PRE

logger = logging.getLogger(__name__)


if PRE:

    @dataclass
    class JobStateProgress:
        remaining: int = 0
        total: int = 0
        processed: int = 0  # success plus failed
        percentage: float = 0.0  # 0-1 fraction
        failed: int = 0

else:

    @dataclass
    class JobStateProgress:
        remaining: int = 0
        total: int = 0
        processed: int = 0  # success plus failed
        percentage: float = 0.0  # 0-1 fraction
        failed: int = 0
        newly_removed: int = 0  # the SREM reply; 0 on a replay


class AsyncJobStateManager:
    TIMEOUT = 86400 * 7
    STAGES = ["process", "results"]

    def __init__(self, job_id: int):
        self.job_id = job_id
        # A prefix: no key has exactly this name (see _get_pending_key).
        self._pending_key = f"job:{job_id}:pending_images"
        self._total_key = f"job:{job_id}:pending_images_total"
        self._failed_key = f"job:{job_id}:failed_images"

    def _get_redis(self):
        return get_redis_connection("default")

    def _get_pending_key(self, stage: str) -> str:
        return f"{self._pending_key}:{stage}"

    def initialize_job(self, image_ids: list[str]) -> None:
        try:
            pipe = self._get_redis().pipeline()
            for stage in self.STAGES:
                key = self._get_pending_key(stage)
                pipe.delete(key)
                if image_ids:
                    pipe.sadd(key, *image_ids)
                    pipe.expire(key, self.TIMEOUT)
            pipe.delete(self._failed_key)
            pipe.set(self._total_key, len(image_ids), ex=self.TIMEOUT)
            pipe.execute()
        except RedisError as e:
            logger.error(f"Redis error initializing job {self.job_id}: {e}")
            raise

    def _update_state(
        self, processed_image_ids: set[str], stage: str, failed_image_ids: set[str] | None
    ) -> "JobStateProgress | None":
        pending_key = self._get_pending_key(stage)
        pipe = self._get_redis().pipeline()
        if processed_image_ids:
            pipe.srem(pending_key, *processed_image_ids)
        if failed_image_ids:
            pipe.sadd(self._failed_key, *failed_image_ids)
            pipe.expire(self._failed_key, self.TIMEOUT)
        pipe.scard(pending_key)
        pipe.scard(self._failed_key)
        pipe.get(self._total_key)
        replies = pipe.execute()
        remaining, failed, total_raw = replies[-3:]
        if total_raw is None:
            return None
        total = int(total_raw)
        remaining = int(remaining)
        processed = total - remaining
        percentage = processed / total if total > 0 else 1.0
        logger.info(
            f"Pending images from Redis for job {self.job_id} {stage}: {remaining}/{total}: {percentage * 100}%"
        )
        progress = JobStateProgress(
            remaining=remaining, total=total, processed=processed, percentage=percentage, failed=int(failed)
        )
        if not PRE:
            progress.newly_removed = int(replies[0]) if processed_image_ids else 0
        return progress

    if PRE:

        def update_state(
            self, processed_image_ids: set[str], stage: str, failed_image_ids: set[str] | None = None
        ) -> "JobStateProgress | None":
            try:
                return self._update_state(processed_image_ids, stage, failed_image_ids)
            except RedisError as e:
                # PRE: the same value as "total key missing".
                logger.error(f"Redis error updating job {self.job_id} state: {e}")
                return None

    else:

        def update_state(
            self, processed_image_ids: set[str], stage: str, failed_image_ids: set[str] | None = None
        ) -> "JobStateProgress | None":
            # HEAD: a RedisError reaches the caller; None means only "total key missing".
            return self._update_state(processed_image_ids, stage, failed_image_ids)

    def get_progress(self, stage: str) -> "JobStateProgress | None":
        try:
            pipe = self._get_redis().pipeline()
            pipe.scard(self._get_pending_key(stage))
            pipe.scard(self._failed_key)
            pipe.get(self._total_key)
            remaining, failed, total_raw = pipe.execute()
        except RedisError as e:
            logger.error(f"Redis error reading job {self.job_id} progress: {e}")
            return None
        if total_raw is None:
            return None
        total = int(total_raw)
        processed = total - int(remaining)
        return JobStateProgress(
            remaining=int(remaining),
            total=total,
            processed=processed,
            percentage=processed / total if total > 0 else 1.0,
            failed=int(failed),
        )

    if not PRE:

        def get_pending_image_ids(self) -> set[str]:
            try:
                members = self._get_redis().sunion(*[self._get_pending_key(s) for s in self.STAGES])
            except RedisError as e:
                logger.error(f"Redis error reading pending image ids for job {self.job_id}: {e}")
                return set()
            return {m.decode() if isinstance(m, bytes) else str(m) for m in members}

    def cleanup(self) -> None:
        try:
            keys = [self._get_pending_key(s) for s in self.STAGES] + [self._failed_key, self._total_key]
            self._get_redis().delete(*keys)
        except RedisError as e:
            logger.warning(f"Redis error cleaning up job {self.job_id}: {e}")
