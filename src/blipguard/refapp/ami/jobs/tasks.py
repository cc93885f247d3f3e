"""Job tasks: the async result task, job progress, failing a job, the NATS ack, the
``run_job`` signal handlers and the reapers (fact sheet §3).

The two platform commits differ in the result task (decorator and order of steps), in
``_update_job_progress`` and in the signal handlers; each is written out per version
(``ami.version.PRE``) rather than interleaved, so each reads like its commit.
"""

import datetime
import logging
import time

from asgiref.sync import async_to_sync
from celery.signals import task_failure, task_postrun, task_prerun
from django.db import transaction

from ami.ml.orchestration.async_job_state import AsyncJobStateManager
from ami.ml.orchestration.nats_queue import TaskQueueManager
from ami.ml.schemas import PipelineResultsError, PipelineResultsResponse
from ami.utils.timing import log_time
from ami.version import PRE
from config import celery_app

if not PRE:
    from asgiref.sync import sync_to_async  # noqa: F401 - imported at the top at HEAD
    from cachalot.api import cachalot_disabled
    from redis.exceptions import RedisError

    from ami.ml.orchestration.nats_queue import ConsumerState  # noqa: F401

logger = logging.getLogger(__name__)

FAILURE_THRESHOLD = 0.5

MISSING_STATE_REASON = (
    "Redis state missing for job" if PRE else "Job state keys not found in Redis (likely cleaned up concurrently)"
)


def _complete_state(progress_info):
    from ami.jobs.models import JobState

    if progress_info.total > 0 and progress_info.failed / progress_info.total > FAILURE_THRESHOLD:
        return JobState.FAILURE
    return JobState.SUCCESS


def _ids_and_result(result_data: dict):
    """Rebuild the payload; return (model, processed ids, failed ids, is_error)."""
    if "error" in result_data:
        error_result = PipelineResultsError(**result_data)
        ids = {str(error_result.image_id)} if error_result.image_id is not None else set()
        return error_result, ids, set(ids), True
    pipeline_result = PipelineResultsResponse(**result_data)
    return pipeline_result, {str(img.id) for img in pipeline_result.source_images}, set(), False


def _log_process_stage(job, job_id, reply_subject, progress_info, processed_image_ids, result, is_error):
    job.logger.info(f"Processing pipeline result for job {job_id}, reply_subject: {reply_subject}")
    job.logger.info(
        f" Job {job_id} progress: {progress_info.processed}/{progress_info.total} images processed "
        f"({progress_info.percentage * 100}%), {progress_info.remaining} remaining, "
        f"{progress_info.failed} failed, {len(processed_image_ids)} just processed"
    )
    if is_error:
        job.logger.error(f"Pipeline returned error for job {job_id}, image {result.image_id}: {result.error}")


def _save(job, job_id, pipeline_result, progress_info, elapsed):
    """save_results and its counts (detections, classifications, captures)."""
    assert job.pipeline is not None, "Job pipeline is None"
    job.pipeline.save_results(results=pipeline_result, job_id=job.pk)
    job.logger.info(f"Successfully saved results for job {job_id}")
    n = len(pipeline_result.detections)
    logger.info(
        f"Saved pipeline results to database with {n} detections, "
        f"percentage: {progress_info.percentage * 100}%: {elapsed():.3f}s"
    )
    return (
        n,
        sum(len(d.classifications) for d in pipeline_result.detections),
        len(pipeline_result.source_images),
    )


if PRE:

    @celery_app.task(bind=True, max_retries=0, soft_time_limit=300, time_limit=360)
    def process_nats_pipeline_result(self, job_id: int, result_data: dict, reply_subject: str) -> None:
        from ami.jobs.models import Job, JobState  # noqa: F401

        _, elapsed = log_time()
        result, processed_image_ids, failed_image_ids, is_error = _ids_and_result(result_data)

        state_manager = AsyncJobStateManager(job_id)
        progress_info = state_manager.update_state(
            processed_image_ids, stage="process", failed_image_ids=failed_image_ids
        )
        if not progress_info:
            _ack_task_via_nats(reply_subject, logger)
            _fail_job(job_id, "Redis state missing for job")
            return

        try:
            complete_state = _complete_state(progress_info)
            _update_job_progress(
                job_id,
                "process",
                progress_info.percentage,
                complete_state=complete_state,
                processed=progress_info.processed,
                remaining=progress_info.remaining,
                failed=progress_info.failed,
            )
            logger.info(
                f"TIME: Updated job {job_id} progress in PROCESS stage progress to "
                f"{progress_info.percentage * 100}%: {elapsed():.3f}s"
            )
            job = Job.objects.get(pk=job_id)
            _log_process_stage(job, job_id, reply_subject, progress_info, processed_image_ids, result, is_error)
        except Job.DoesNotExist:
            logger.error(f"Job {job_id} not found")
            _ack_task_via_nats(reply_subject, logger)
            return

        acked = False
        try:
            detections_count, classifications_count, captures_count = 0, 0, 0
            if not is_error:
                detections_count, classifications_count, captures_count = _save(
                    job, job_id, result, progress_info, elapsed
                )

            _ack_task_via_nats(reply_subject, job.logger)
            acked = True

            progress_info = state_manager.update_state(processed_image_ids, stage="results")
            if not progress_info:
                _fail_job(job_id, "Redis state missing for job")
                return

            complete_state = _complete_state(progress_info)
            _update_job_progress(
                job_id,
                "results",
                progress_info.percentage,
                complete_state=complete_state,
                detections=detections_count,
                classifications=classifications_count,
                captures=captures_count,
            )
        except Exception as e:  # noqa: BLE001 - PRE swallows everything, RedisError included
            error = f"Error processing pipeline result for job {job_id}: {e}"
            if not acked:
                error += ". NATS will re-deliver the task message."
            job.logger.error(error)

else:

    @celery_app.task(
        bind=True,
        autoretry_for=(RedisError, ConnectionError),
        retry_backoff=True,
        retry_backoff_max=15,
        retry_jitter=True,
        max_retries=5,
        soft_time_limit=300,
        time_limit=360,
    )
    @cachalot_disabled()
    def process_nats_pipeline_result(self, job_id: int, result_data: dict, reply_subject: str) -> None:
        from ami.jobs.models import Job, JobState  # noqa: F401

        _, elapsed = log_time()
        result, processed_image_ids, failed_image_ids, is_error = _ids_and_result(result_data)

        state_manager = AsyncJobStateManager(job_id)
        try:
            progress_info = state_manager.update_state(
                processed_image_ids, stage="process", failed_image_ids=failed_image_ids
            )
        except RedisError as e:
            logger.warning(
                f"Transient Redis error updating job {job_id} state (stage=process); Celery will retry: {e}",
                exc_info=True,
            )
            raise
        if not progress_info:
            _log_missing_state_context(job_id, "process")
            _ack_task_via_nats(reply_subject, logger)
            _fail_job(job_id, MISSING_STATE_REASON)
            return

        try:
            complete_state = _complete_state(progress_info)
            _update_job_progress(
                job_id,
                "process",
                progress_info.percentage,
                complete_state=complete_state,
                processed=progress_info.processed,
                remaining=progress_info.remaining,
                failed=progress_info.failed,
            )
            logger.info(
                f"TIME: Updated job {job_id} progress in PROCESS stage progress to "
                f"{progress_info.percentage * 100}%: {elapsed():.3f}s"
            )
            job = Job.objects.get(pk=job_id)
            _log_process_stage(job, job_id, reply_subject, progress_info, processed_image_ids, result, is_error)
        except Job.DoesNotExist:
            logger.error(f"Job {job_id} not found")
            _ack_task_via_nats(reply_subject, logger)
            return

        acked = False
        try:
            detections_count, classifications_count, captures_count = 0, 0, 0
            if not is_error:
                detections_count, classifications_count, captures_count = _save(
                    job, job_id, result, progress_info, elapsed
                )

            try:
                progress_info = state_manager.update_state(processed_image_ids, stage="results")
            except RedisError as e:
                job.logger.warning(
                    f"Transient Redis error updating job {job_id} state (stage=results); Celery will retry: {e}",
                    exc_info=True,
                )
                raise
            if not progress_info:
                _log_missing_state_context(job_id, "results")
                _ack_task_via_nats(reply_subject, job.logger)
                _fail_job(job_id, MISSING_STATE_REASON)
                return

            if progress_info.newly_removed > 0:
                counts = dict(
                    detections=detections_count, classifications=classifications_count, captures=captures_count
                )
            else:  # a replay: this image was already counted
                counts = dict(detections=0, classifications=0, captures=0)
            complete_state = _complete_state(progress_info)
            _update_job_progress(
                job_id, "results", progress_info.percentage, complete_state=complete_state, **counts
            )

            acked = _ack_task_via_nats(reply_subject, job.logger)
        except RedisError:
            raise
        except Exception as e:  # noqa: BLE001
            error = f"Error processing pipeline result for job {job_id}: {e}"
            if not acked:
                error += ". NATS will re-deliver the task message."
            job.logger.error(error)


def _get_current_counts_from_job_progress(job, stage: str) -> tuple[int, int, int]:
    try:
        stage_obj = job.progress.get_stage(stage)
    except ValueError:
        return 0, 0, 0
    values = {p.key: p.value for p in stage_obj.params}

    def count(key: str) -> int:
        value = values.get(key)
        return int(value) if value is not None else 0

    return count("detections"), count("classifications"), count("captures")


def _stage_status_and_progress(job, stage: str, progress_percentage: float, complete_state):
    """Steps 3-4 of _update_job_progress: max() clamp, sticky FAILURE, the stage status."""
    from ami.jobs.models import JobState

    existing = None
    try:
        stage_obj = job.progress.get_stage(stage)
        existing = stage_obj.progress
        progress_percentage = max(existing, progress_percentage)
        if str(stage_obj.status) == JobState.FAILURE.value:
            complete_state = JobState.FAILURE
    except ValueError:
        pass
    if progress_percentage >= 1.0:
        status = complete_state
    elif complete_state == JobState.FAILURE:
        status = JobState.FAILURE
    else:
        status = JobState.STARTED
    return existing, progress_percentage, complete_state, status


def _add_result_counts(job, stage: str, state_params: dict) -> None:
    if stage == "results":
        detections, classifications, captures = _get_current_counts_from_job_progress(job, stage)
        for key, old in (("detections", detections), ("classifications", classifications), ("captures", captures)):
            if key in state_params:
                state_params[key] = old + (state_params[key] or 0)


if PRE:

    def _update_job_progress(
        job_id: int, stage: str, progress_percentage: float, complete_state: "JobState", **state_params
    ) -> None:
        from ami.jobs.models import Job
        from ami.ml.orchestration.jobs import cleanup_async_job_if_needed

        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            _add_result_counts(job, stage, state_params)
            _, progress_percentage, complete_state, status = _stage_status_and_progress(
                job, stage, progress_percentage, complete_state
            )
            job.progress.update_stage(stage, status=status, progress=progress_percentage, **state_params)
            job.logger.info(f"Updated job {job_id} progress in stage '{stage}' to {progress_percentage * 100}%")
            if job.progress.is_complete():
                job.status = str(complete_state)
                job.progress.summary.status = str(complete_state)
                job.finished_at = datetime.datetime.now()
            job.save()

        if job.progress.is_complete():
            job = Job.objects.get(pk=job_id)
            cleanup_async_job_if_needed(job)

else:

    def _update_job_progress(
        job_id: int, stage: str, progress_percentage: float, complete_state: "JobState", **state_params
    ) -> None:
        from ami.jobs.models import Job, JobState
        from ami.ml.orchestration.jobs import cleanup_async_job_if_needed

        with transaction.atomic():
            job = Job.objects.get(pk=job_id)
            passed = progress_percentage
            _add_result_counts(job, stage, state_params)
            existing, progress_percentage, complete_state, status = _stage_status_and_progress(
                job, stage, progress_percentage, complete_state
            )
            job.progress.update_stage(stage, status=status, progress=progress_percentage, **state_params)
            if existing is not None and existing < 1.0 <= progress_percentage and passed < 1.0:
                job.logger.warning(
                    f"Stage '{stage}' progress lifted to 100% by max() guard: this worker passed "
                    f"{passed * 100:.1f}%, DB had {existing * 100:.1f}%. If no other worker just legitimately "
                    f"finished this stage, this is a state-race symptom."
                )
            job.logger.info(f"Updated job {job_id} progress in stage '{stage}' to {progress_percentage * 100}%")
            if job.progress.is_complete():
                to_status = complete_state.value if isinstance(complete_state, JobState) else str(complete_state)
                finished_at = datetime.datetime.now()
                rows = Job.objects.filter(
                    pk=job_id, status__in=[s.value for s in JobState.finalizable_states()]
                ).update(status=to_status, finished_at=finished_at)
                if rows:
                    job.status = to_status
                    job.finished_at = finished_at
                    job.progress.summary.status = to_status
                else:
                    job.logger.warning(
                        "Stage '%s' completed but the job was already in a terminal state; not applying %s.",
                        stage,
                        to_status,
                    )
            job.save(update_fields=["progress", "updated_at"])
            _log_throughput(job)

        if job.progress.is_complete():
            job = Job.objects.get(pk=job_id)
            stages = ", ".join(f"{s.key}={s.progress * 100:.1f}% {s.status}" for s in job.progress.stages)
            job.logger.info(f"is_complete()=True after stage='{stage}' update; firing cleanup. Stages: {stages}")
            cleanup_async_job_if_needed(job)

    def _log_throughput(job) -> None:
        if not job.started_at:
            return
        elapsed = datetime.datetime.now() - job.started_at
        if elapsed.total_seconds() < 3:
            return
        try:
            process = job.progress.get_stage("process")
            values = {p.key: p.value for p in process.params}
            processed = int(values.get("processed") or 0)
            total = processed + int(values.get("remaining") or 0)
        except ValueError:
            processed, total = 0, 0
        minutes = elapsed.total_seconds() / 60
        rate = processed / minutes if minutes > 0 else 0.0
        if rate > 0 and total >= processed:
            eta = datetime.timedelta(minutes=(total - processed) / rate)
            eta_text = str(eta).split(".")[0]
        else:
            eta_text = "unknown"
        job.logger.info(
            f"Job {job.pk} throughput: elapsed={str(elapsed).split('.')[0]}, processed={processed}/{total}, "
            f"rate={rate:.1f} imgs/min, ETA={eta_text}"
        )

    def _log_missing_state_context(job_id: int, stage: str) -> None:
        from ami.jobs.models import Job, JobState

        row = Job.objects.filter(pk=job_id).values_list("status", "created_at").first()
        if row is None:
            logger.warning("Job %s: progress state missing and the job no longer exists (stage=%s).", job_id, stage)
            return
        status, created_at = row
        if status == JobState.CANCELING.value or status in [s.value for s in JobState.final_states()]:
            logger.info(
                "Job %s: result arrived after the job already finished (status=%s, stage=%s); ignoring.",
                job_id,
                status,
                stage,
            )
            return
        age = int((datetime.datetime.now() - created_at).total_seconds()) if created_at else None
        logger.warning(
            "Job %s: progress state missing while the job is still running (status=%s, stage=%s, age=%ss); "
            "marking it failed.",
            job_id,
            status,
            stage,
            age,
        )


def _fail_job(job_id: int, reason: str) -> None:
    from ami.jobs.models import Job, JobState
    from ami.ml.orchestration.jobs import cleanup_async_job_resources

    try:
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.status in (
                JobState.CANCELING.value,
                JobState.SUCCESS.value,
                JobState.FAILURE.value,
                JobState.REVOKED.value,
            ):
                return
            job.update_status(JobState.FAILURE, save=False)
            job.finished_at = datetime.datetime.now()
            job.save(update_fields=["status", "progress", "finished_at"])
    except Job.DoesNotExist:
        logger.error(f"Cannot fail job {job_id}: not found")
        cleanup_async_job_resources(job_id)
        return
    job.logger.error(f"Job {job_id} marked as FAILURE: {reason}")
    cleanup_async_job_resources(job.pk)


if PRE:

    def _ack_task_via_nats(reply_subject: str, job_logger: logging.Logger) -> None:
        async def ack() -> bool:
            async with TaskQueueManager() as manager:
                return await manager.acknowledge_task(reply_subject)

        try:
            if async_to_sync(ack)():
                job_logger.info(f"Successfully acknowledged task via NATS: {reply_subject}")
            else:
                job_logger.warning(f"Failed to acknowledge task via NATS: {reply_subject}")
        except Exception as ack_error:  # noqa: BLE001 - never raises
            job_logger.error(f"Error acknowledging task via NATS: {ack_error}")

else:

    def _ack_task_via_nats(reply_subject: str, job_logger: logging.Logger) -> bool:
        async def ack() -> bool:
            async with TaskQueueManager() as manager:
                return await manager.acknowledge_task(reply_subject)

        try:
            if async_to_sync(ack)():
                job_logger.info(f"Successfully acknowledged task via NATS: {reply_subject}")
                return True
            job_logger.warning(f"Failed to acknowledge task via NATS: {reply_subject}")
            return False
        except Exception as ack_error:  # noqa: BLE001 - never raises
            job_logger.error(f"Error acknowledging task via NATS: {ack_error}", exc_info=True)
            return False


# --- run_job and its signal handlers (§3.7) ----------------------------------------------------
@celery_app.task(bind=True)
def run_job(self, job_id: int) -> None:
    from ami.jobs.models import Job

    job = Job.objects.get(pk=job_id)
    job.logger.info(f"Running job {job}")
    job.run()


def _job_for_task(task_id: str, task):
    from ami.jobs.models import Job

    job_id = (task.request.kwargs or {}).get("job_id") if task is not None else None
    try:
        if job_id is not None:
            return Job.objects.get(pk=job_id)
        return Job.objects.get(task_id=task_id)
    except Job.DoesNotExist:
        logger.error(f"No job found for task {task_id}")
        return None


@task_prerun.connect(sender=run_job)
def pre_update_job_status(sender, task_id, task, **kwargs):
    update_job_status(sender, task_id, task, "PENDING", **kwargs)


@task_postrun.connect(sender=run_job)
def update_job_status(sender, task_id, task, state: str, retval=None, **kwargs):
    from ami.jobs.models import JobState
    from ami.ml.orchestration.jobs import cleanup_async_job_if_needed

    job = _job_for_task(task_id, task)
    if job is None:
        return
    if state == JobState.SUCCESS and not job.progress.is_complete():
        msg = f"Job {job.pk} task completed but stages not finished - deferring SUCCESS status to progress handler"
        if PRE:
            job.logger.info(msg)
        else:
            job.logger.debug(msg)
        return
    if PRE or state != JobState.SUCCESS:
        job.update_status(state)
    else:
        job._guarded_status_update(JobState.SUCCESS, JobState.finalizable_states(), set_finished=True)
    if state == JobState.REVOKED:
        cleanup_async_job_if_needed(job)


@task_failure.connect(sender=run_job, retry=False)
def update_job_failure(sender, task_id, exception, *args, **kwargs):
    from ami.jobs.models import JobDispatchMode, JobState
    from ami.ml.orchestration.jobs import cleanup_async_job_if_needed

    job = _job_for_task(task_id, sender)
    if job is None:
        return
    if not PRE and job.dispatch_mode == JobDispatchMode.ASYNC_API and not job.progress.is_complete():
        job.logger.warning(
            f'Job #{job.pk} "{job.name}" run_job raised but async processing is in-flight; '
            f"deferring FAILURE to async progress handler: {exception}"
        )
        return
    job.logger.error(f'Job #{job.pk} "{job.name}" failed: {exception}')
    if PRE:
        job.update_status(JobState.FAILURE, save=False)
        job.finished_at = datetime.datetime.now()
        job.save()
    else:
        job._guarded_status_update(JobState.FAILURE, JobState.finalizable_states(), set_finished=True)
    cleanup_async_job_if_needed(job)


# --- reapers (§3.7) ------------------------------------------------------------------------------
def _reap(job, dry_run: bool) -> dict:
    from celery.result import AsyncResult

    from ami.jobs.models import JobState
    from ami.ml.orchestration.jobs import cleanup_async_job_if_needed

    previous = job.status
    new = JobState.REVOKED.value
    if job.task_id:
        celery_state = AsyncResult(job.task_id).state
        if celery_state in [s.value for s in JobState.final_states()]:
            new = celery_state  # adopt the terminal Celery state
    if not dry_run:
        if new == JobState.REVOKED.value and job.task_id:
            celery_app.control.revoke(job.task_id, terminate=True)
        job.update_status(new, save=False)
        job.finished_at = datetime.datetime.now()
        job.save()
        cleanup_async_job_if_needed(job)
    return {"job_id": job.pk, "previous_status": previous, "new_status": new, "dry_run": dry_run}


if PRE:

    def check_stale_jobs(hours: int | None = None, dry_run: bool = False) -> list[dict]:
        from ami.jobs.models import Job, JobState

        hours = Job.FAILED_CUTOFF_HOURS if hours is None else hours
        cutoff = datetime.datetime.now() - datetime.timedelta(hours=hours)
        stale = Job.objects.filter(
            status__in=[s.value for s in JobState.running_states()], updated_at__lt=cutoff
        )
        return [_reap(job, dry_run) for job in stale]

    @celery_app.task(soft_time_limit=600, time_limit=660)
    def jobs_health_check() -> dict:
        return {"stale_jobs": check_stale_jobs()}

else:

    def check_stale_jobs(minutes: int | None = None, dry_run: bool = False) -> list[dict]:
        from ami.jobs.models import Job, JobState

        minutes = Job.STALLED_JOBS_MAX_MINUTES if minutes is None else minutes
        cutoff = datetime.datetime.now() - datetime.timedelta(minutes=minutes)
        stale = Job.objects.filter(
            status__in=[s.value for s in JobState.running_states()], updated_at__lt=cutoff
        )
        return [_reap(job, dry_run) for job in stale]

    def mark_lost_images_failed(minutes: int | None = None, dry_run: bool = False) -> list[dict]:
        """Images still pending in Redis of a stalled async job are marked failed and both
        stages driven to 100% (minimal: the zombie-stream drain is left out)."""
        from ami.jobs.models import Job, JobDispatchMode, JobState

        minutes = Job.STALLED_JOBS_MAX_MINUTES if minutes is None else minutes
        cutoff = datetime.datetime.now() - datetime.timedelta(minutes=minutes)
        report = []
        jobs = Job.objects.filter(
            dispatch_mode=JobDispatchMode.ASYNC_API,
            status__in=[s.value for s in JobState.active_states()],
            updated_at__lt=cutoff,
        )
        for job in jobs:
            state = AsyncJobStateManager(job.pk)
            pending = state.get_pending_image_ids()
            if not pending:
                continue
            report.append({"job_id": job.pk, "lost_images": len(pending), "dry_run": dry_run})
            if dry_run:
                continue
            process = state.update_state(pending, stage="process", failed_image_ids=pending)
            results = state.update_state(pending, stage="results")
            for stage, info in (("process", process), ("results", results)):
                if info is None:
                    continue
                extra = (
                    dict(processed=info.processed, remaining=info.remaining, failed=info.failed)
                    if stage == "process"
                    else {}
                )
                _update_job_progress(job.pk, stage, 1.0, complete_state=_complete_state(info), **extra)
            job.logger.warning(
                f"jobs_health_check: marked {len(pending)} image(s) as failed for job {job.pk}: "
                f"still pending in Redis after {minutes} minutes"
            )
        return report

    @celery_app.task(soft_time_limit=600, time_limit=660)
    def jobs_health_check() -> dict:
        return {"lost_images": mark_lost_images_failed(), "stale_jobs": check_stale_jobs()}
