"""Async-job orchestration: seeding a job's state and queue, and cleaning them up (§5)."""

import asyncio
import logging

from asgiref.sync import async_to_sync

from ami.ml.orchestration.async_job_state import AsyncJobStateManager
from ami.ml.orchestration.nats_queue import TaskQueueManager
from ami.ml.schemas import PipelineProcessingTask
from ami.version import PRE

logger = logging.getLogger(__name__)

NATS_PUBLISH_FANOUT_CHUNK_SIZE = 200  # HEAD


def cleanup_async_job_resources(job_id: int) -> bool:
    from ami.jobs.models import Job

    job = Job.objects.filter(pk=job_id).first()
    job_logger = job.logger if job is not None else logger

    redis_ok = False
    try:
        AsyncJobStateManager(job_id).cleanup()
        job_logger.info(f"Cleaned up Redis state for job {job_id}")
        redis_ok = True
    except Exception as e:  # noqa: BLE001
        job_logger.error(f"Error cleaning up Redis state for job {job_id}: {e}")

    async def cleanup_nats() -> bool:
        async with TaskQueueManager(job_logger=job.logger if job is not None else None) as manager:
            return await manager.cleanup_job_resources(job_id)

    nats_ok = False
    try:
        nats_ok = async_to_sync(cleanup_nats)()
        if nats_ok:
            job_logger.info(f"Cleaned up NATS resources for job {job_id}")
        else:
            job_logger.warning(f"Failed to clean up NATS resources for job {job_id}")
    except Exception as e:  # noqa: BLE001
        job_logger.error(f"Error cleaning up NATS resources for job {job_id}: {e}")
    return redis_ok and nats_ok


def cleanup_async_job_if_needed(job) -> None:
    from ami.jobs.models import JobDispatchMode

    if job.dispatch_mode == JobDispatchMode.ASYNC_API:
        cleanup_async_job_resources(job.pk)


def queue_images_to_nats(job, images: list) -> bool:
    """One task per image with a URL; the Redis state is initialized before publishing."""
    tasks: list[PipelineProcessingTask] = []
    skipped = 0
    for image in images:
        url = image.url()
        if not url:
            job.logger.warning(f"Image {image.pk} has no URL, skipping queuing to NATS for job '{job.pk}'")
            skipped += 1
            continue
        tasks.append(PipelineProcessingTask(id=str(image.pk), image_id=str(image.pk), image_url=url))

    AsyncJobStateManager(job.pk).initialize_job([t.image_id for t in tasks])
    job.logger.info(f"Initialized task state tracking for {len(tasks)} images")

    async def publish_all() -> list[bool]:
        async with TaskQueueManager(job_logger=job.logger) as manager:
            if PRE:
                return [await manager.publish_task(job.pk, task) for task in tasks]
            await manager.ensure_job_resources(job.pk)
            results: list[bool] = []
            for i in range(0, len(tasks), NATS_PUBLISH_FANOUT_CHUNK_SIZE):
                chunk = tasks[i : i + NATS_PUBLISH_FANOUT_CHUNK_SIZE]
                results.extend(await asyncio.gather(*(manager.publish_task(job.pk, t) for t in chunk)))
            return results

    published = async_to_sync(publish_all)()
    return all(published) and skipped == 0
