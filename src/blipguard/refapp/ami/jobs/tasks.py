"""The async job's Celery tasks, pre-fix (the code path of the incident)."""

import logging

from asgiref.sync import async_to_sync
from celery import shared_task
from django.utils import timezone

from ami.jobs.models import FINAL_STATES, Job, JobState, update_stage
from ami.ml.orchestration.async_job_state import AsyncJobStateManager
from ami.ml.orchestration.nats_queue import TaskQueueManager
from ami.ml.pipeline import save_results

logger = logging.getLogger(__name__)

FAILURE_THRESHOLD = 0.5


def result_image_ids(result_data: dict) -> tuple[list, list]:
    """(processed ids, failed ids) named by one result."""
    if "error" in result_data:
        image_id = result_data["image_id"]
        return [image_id], [image_id]
    return [img["id"] for img in result_data["source_images"]], []


@shared_task(bind=True, max_retries=0, soft_time_limit=300, time_limit=360)
def process_nats_pipeline_result(self, job_id: int, result_data: dict, reply_subject: str):
    job = Job.objects.get(pk=job_id)
    state = AsyncJobStateManager(job_id)
    processed_ids, failed_ids = result_image_ids(result_data)

    progress = state.update_state(processed_ids, stage="process", failed_image_ids=failed_ids)
    if not progress:
        _fail_job(job_id, "Redis state missing for job")
        return
    _update_job_progress(
        job_id, "process", progress.percentage,
        processed=progress.processed, remaining=progress.remaining, failed=progress.failed,
    )

    detections = 0
    if "error" in result_data:
        job.logger.error(f"Processing service failed on image {result_data.get('image_id')}: {result_data['error']}")
    else:
        detections = save_results(result_data, job_id)

    _ack_task_via_nats(reply_subject, job.logger)

    progress = state.update_state(processed_ids, stage="results")
    if not progress:
        _fail_job(job_id, "Redis state missing for job")
        return
    _update_job_progress(
        job_id, "results", progress.percentage,
        processed=progress.processed, remaining=progress.remaining, failed=progress.failed,
        detections=detections,
    )


COUNTERS = ("detections",)


def _update_job_progress(job_id: int, stage: str, progress_percentage: float, **state_params) -> None:
    # Counters are added up per result, so a retried or redelivered result inflates them.
    add = {k: state_params.pop(k) for k in COUNTERS if k in state_params}
    job = update_stage(job_id, stage, progress_percentage, add=add, **state_params)
    if job.status in FINAL_STATES:
        return
    st = job.progress["stages"][stage]
    if stage == "process" and st["remaining"] == 0 and job.total_images:
        if st["failed"] / job.total_images > FAILURE_THRESHOLD:
            _fail_job(job_id, f"{st['failed']} of {job.total_images} images failed")
            return
    stages = job.progress["stages"]
    if all(stages[s]["progress"] >= 1.0 for s in stages):
        _complete_job(job_id)


def _complete_job(job_id: int) -> None:
    updated = Job.objects.filter(pk=job_id).exclude(status__in=FINAL_STATES).update(
        status=JobState.SUCCESS, finished_at=timezone.now()
    )
    if updated:
        job = Job.objects.get(pk=job_id)
        job.logger.info(f"Job {job_id} completed")
        cleanup_async_job_resources(job_id)


def _fail_job(job_id: int, reason: str) -> None:
    Job.objects.filter(pk=job_id).update(status=JobState.FAILURE, finished_at=timezone.now())
    job = Job.objects.get(pk=job_id)
    job.logger.error(f"Job {job_id} marked as FAILURE: {reason}")
    cleanup_async_job_resources(job_id)


def _ack_task_via_nats(reply_subject: str, job_logger: logging.Logger) -> bool:
    async def ack() -> bool:
        async with TaskQueueManager() as manager:
            return await manager.acknowledge_task(reply_subject)

    try:
        return async_to_sync(ack)()
    except Exception as e:
        job_logger.error(f"Failed to acknowledge task via NATS: {e}")
        return False


def cleanup_async_job_resources(job_id: int) -> None:
    """Delete the job's Redis state and its NATS stream and consumer."""
    try:
        AsyncJobStateManager(job_id).cleanup()
    except Exception as e:
        logger.warning("Could not clean up Redis state of job %s: %s", job_id, e)

    async def drop() -> None:
        async with TaskQueueManager() as manager:
            await manager.delete_consumer(job_id)
            await manager.delete_stream(job_id)

    try:
        async_to_sync(drop)()
    except Exception as e:
        logger.warning("Could not delete NATS resources of job %s: %s", job_id, e)
