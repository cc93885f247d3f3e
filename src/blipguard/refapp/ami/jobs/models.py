"""Jobs, their progress and their log (fact sheet §9).

Minimal where the fact sheet is silent: only the ML job type (``MLJob``) exists, and its
``run`` does what the platform's does before and including ``queue_images_to_nats``
(collect stage, STARTED); the other job types, data exports and the Celery-state sync of
``update_status`` are left out.
"""

import datetime
import logging

import pydantic
from django.conf import settings
from django.db import models, transaction
from django_pydantic_field import SchemaField

from ami.base.models import BaseModel
from ami.utils.schemas import OrderedEnum
from ami.version import PRE

logger = logging.getLogger(__name__)


class JobState(str, OrderedEnum):
    CREATED = "CREATED"
    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRY = "RETRY"
    CANCELING = "CANCELING"
    REVOKED = "REVOKED"
    RECEIVED = "RECEIVED"
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def final_states(cls):
        return [cls.SUCCESS, cls.FAILURE, cls.REVOKED]

    @classmethod
    def failed_states(cls):
        return [cls.FAILURE, cls.REVOKED, cls.UNKNOWN]

    @classmethod
    def active_states(cls):
        return [cls.STARTED, cls.RETRY]

    if PRE:

        @classmethod
        def running_states(cls):
            return [cls.CREATED, cls.PENDING, cls.STARTED, cls.RETRY]

    else:

        @classmethod
        def running_states(cls):
            return [cls.PENDING, cls.STARTED, cls.RETRY]

        @classmethod
        def finalizable_states(cls):
            return [cls.CREATED, cls.PENDING, cls.STARTED, cls.RETRY]


class JobDispatchMode(models.TextChoices):
    INTERNAL = "internal"
    SYNC_API = "sync_api"
    ASYNC_API = "async_api"


# --- progress ------------------------------------------------------------------------------
class ConfigurableStageParam(pydantic.BaseModel):
    name: str
    key: str
    category: str = "default"
    value: object = None


class JobProgressSummary(pydantic.BaseModel):
    status: JobState = JobState.CREATED
    progress: float = 0

    class Config:
        use_enum_values = True


class JobProgressStageDetail(pydantic.BaseModel):
    key: str
    name: str
    params: list[ConfigurableStageParam] = []
    status: JobState = JobState.CREATED
    progress: float = 0

    class Config:
        use_enum_values = True


class JobProgress(pydantic.BaseModel):
    summary: JobProgressSummary = pydantic.Field(default_factory=JobProgressSummary)
    stages: list[JobProgressStageDetail] = []
    errors: list[str] = []
    logs: list[str] = []

    class Config:
        use_enum_values = True

    def _find(self, stage_key_or_name: str) -> JobProgressStageDetail | None:
        for stage in self.stages:
            if stage.key == stage_key_or_name or stage.name == stage_key_or_name:
                return stage
        return None

    def get_stage(self, stage_key: str) -> JobProgressStageDetail:
        stage = self._find(stage_key)
        if stage is None:
            raise ValueError(f"Job stage with key '{stage_key}' not found in progress")
        return stage

    def add_stage(self, name: str, key: str | None = None) -> JobProgressStageDetail:
        key = key or name.lower().replace(" ", "_")
        stage = self._find(key)
        if stage is None:
            stage = JobProgressStageDetail(key=key, name=name)
            self.stages.append(stage)
        return stage

    def get_stage_param(self, stage_key: str, param_key: str) -> ConfigurableStageParam:
        for param in self.get_stage(stage_key).params:
            if param.key == param_key:
                return param
        raise ValueError(f"Job stage parameter with key '{param_key}' not found in stage '{stage_key}'")

    def add_or_update_stage_param(self, stage_key: str, param_key: str, value=None, name: str | None = None):
        stage = self.get_stage(stage_key)
        for param in stage.params:
            if param.key == param_key:
                param.value = value
                return param
        param = ConfigurableStageParam(name=name or param_key.replace("_", " ").capitalize(), key=param_key, value=value)
        stage.params.append(param)
        return param

    def update_stage(self, stage_key_or_name: str, **stage_parameters) -> JobProgressStageDetail:
        stage = self.get_stage(stage_key_or_name)
        for k, v in stage_parameters.items():
            if k in JobProgressStageDetail.__fields__ and k not in ("key", "params"):
                setattr(stage, k, v.value if isinstance(v, JobState) else v)
            else:
                self.add_or_update_stage_param(stage.key, k, v)
        return stage

    def is_complete(self) -> bool:
        if not self.stages:
            return False
        final = {s.value for s in JobState.final_states()}
        return all(stage.progress >= 1.0 and str(stage.status) in final for stage in self.stages)


def default_job_progress() -> JobProgress:
    return JobProgress()


class JobLogs(pydantic.BaseModel):
    stdout: list[str] = []
    stderr: list[str] = []


def default_job_logs() -> JobLogs:
    return JobLogs()


# --- the job logger --------------------------------------------------------------------------
class JobLogHandler(logging.Handler):
    max_log_length = 1000

    def __init__(self, job: "Job", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.job = job

    def emit(self, record: logging.LogRecord) -> None:
        msg = self.format(record)  # no formatter: the message, plus the traceback
        # Re-log on the module logger: how job-log lines reach stdout (and Sentry).
        logger.log(record.levelno, msg)
        if PRE:
            self._persist_json(record, msg)
        else:
            self._persist_row(record, msg)

    def _persist_json(self, record: logging.LogRecord, msg: str) -> None:
        try:
            self.job.refresh_from_db(fields=["logs"])
            timestamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
            line = f"[{timestamp}] {record.levelname} {msg}"
            if line not in self.job.logs.stdout:
                self.job.logs.stdout.insert(0, line)
            if record.levelno >= logging.ERROR and msg not in self.job.logs.stderr:
                self.job.logs.stderr.insert(0, msg)
            self.job.logs.stdout = self.job.logs.stdout[: self.max_log_length]
            self.job.save(update_fields=["logs"])
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to save logs for job #{self.job.pk}: {e}")

    def _persist_row(self, record: logging.LogRecord, msg: str) -> None:
        if not getattr(settings, "JOB_LOG_PERSIST_ENABLED", True):
            return
        try:
            JobLog.objects.create(job_id=self.job.pk, level=record.levelname, message=msg)
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to save log for job #{self.job.pk}: {e}")


# --- job types ---------------------------------------------------------------------------------
class MLJob:
    name = "ML pipeline"
    key = "ml"

    @classmethod
    def setup(cls, job: "Job") -> None:
        job.progress.add_stage("Collect", "collect")
        job.progress.add_or_update_stage_param("collect", "total_images", 0, "Total Images")
        job.progress.add_stage("Process", "process")
        for key in ("processed", "remaining", "failed"):
            job.progress.add_or_update_stage_param("process", key, 0)
        job.progress.add_stage("Results", "results")
        for key in ("captures", "detections", "classifications"):
            job.progress.add_or_update_stage_param("results", key, 0)
        if job.delay:
            job.progress.add_stage("Delay", "delay")

    @classmethod
    def collect_images(cls, job: "Job") -> list:
        if job.source_image_single_id:
            return [job.source_image_single]
        if job.source_image_collection_id:
            return list(job.source_image_collection.images.order_by("pk"))
        return []

    @classmethod
    def run(cls, job: "Job") -> None:
        """Collect, then (async_api) seed Redis and NATS. The sync path is left out."""
        from ami.ml.orchestration.jobs import queue_images_to_nats

        job.update_status(JobState.STARTED, save=False)
        job.started_at = datetime.datetime.now()
        job.finished_at = None
        job.progress.update_stage("collect", status=JobState.STARTED, progress=0)
        job.save()

        images = cls.collect_images(job)
        if job.limit:
            images = images[: job.limit]
        job.progress.update_stage("collect", status=JobState.SUCCESS, progress=1, total_images=len(images))
        job.progress.update_stage("process", status=JobState.STARTED, progress=0, remaining=len(images))
        job.save()
        job.logger.info(f"Collected {len(images)} images")

        if job.dispatch_mode == JobDispatchMode.ASYNC_API:
            if not queue_images_to_nats(job, images):
                job.logger.error(f"Some images could not be queued to NATS for job {job.pk}")
        else:
            raise NotImplementedError("Only the async_api dispatch mode is rebuilt in the reference app")


JOB_TYPES = {MLJob.key: MLJob}


# --- the job -----------------------------------------------------------------------------------
class Job(BaseModel):
    FAILED_CUTOFF_HOURS = 72  # PRE's stale-job reaper cutoff
    STALLED_JOBS_MAX_MINUTES = 10  # HEAD's

    name = models.CharField(max_length=255)
    queue = models.CharField(max_length=255, default="default")
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=255, default=JobState.CREATED.value)
    progress: JobProgress = SchemaField(JobProgress, default=default_job_progress)
    logs: JobLogs = SchemaField(JobLogs, default=default_job_logs)
    params = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    task_id = models.CharField(max_length=255, null=True, blank=True)
    delay = models.IntegerField(default=0)
    limit = models.IntegerField(null=True, blank=True, default=None)
    shuffle = models.BooleanField(default=True)
    job_type_key = models.CharField(max_length=255, default="unknown")
    dispatch_mode = models.CharField(
        max_length=32, choices=JobDispatchMode.choices, default=JobDispatchMode.INTERNAL
    )
    project = models.ForeignKey("main.Project", on_delete=models.CASCADE, related_name="jobs")
    deployment = models.ForeignKey("main.Deployment", on_delete=models.CASCADE, null=True, blank=True)
    source_image_single = models.ForeignKey("main.SourceImage", on_delete=models.CASCADE, null=True, blank=True)
    source_image_collection = models.ForeignKey(
        "main.SourceImageCollection", on_delete=models.SET_NULL, null=True, blank=True
    )
    # data_export: the platform's DataExport model is not rebuilt here.
    pipeline = models.ForeignKey("ml.Pipeline", on_delete=models.SET_NULL, null=True, blank=True)

    def __str__(self) -> str:
        return f'#{self.pk} "{self.name}" ({self.status})'

    def job_type(self):
        return JOB_TYPES[self.job_type_key]

    def setup(self) -> None:
        if self.job_type_key in JOB_TYPES and not self.progress.stages:
            self.job_type().setup(self)
        if self.job_type_key == MLJob.key and self.project_id:
            if (self.project.feature_flags or {}).get("async_pipeline_workers"):
                self.dispatch_mode = JobDispatchMode.ASYNC_API

    def run(self) -> None:
        self.job_type().run(self)

    def update_status(self, status=None, save=True) -> None:
        if not status:
            return
        status = status.value if isinstance(status, JobState) else str(status)
        if status != self.status:
            self.logger.info(f"Changing status of job {self.pk} from {self.status} to {status}")
        self.status = status
        self.progress.summary.status = status
        if save:
            self.save()

    def update_progress(self, save=True) -> None:
        """Recompute the summary. PRE also forces progress 1 on every stage whose status is
        final (so a FAILURE written at partial progress completes the stage)."""
        if PRE:
            final = {s.value for s in JobState.final_states()}
            for stage in self.progress.stages:
                if str(stage.status) in final and stage.progress < 1:
                    stage.progress = 1
        if self.progress.stages:
            total = sum(s.progress for s in self.progress.stages) / len(self.progress.stages)
        else:
            total = 0
        self.progress.summary.progress = total
        if save:
            self.save(update_progress=False)

    def save(self, update_progress=True, *args, **kwargs):
        if self.pk is None:
            self.setup()
        if update_progress:
            self.update_progress(save=False)
        super().save(*args, **kwargs)

    if not PRE:

        def _guarded_status_update(self, to_status, from_statuses, *, set_finished=False) -> int:
            to_status = to_status.value if isinstance(to_status, JobState) else str(to_status)
            fields: dict = {"status": to_status, "updated_at": datetime.datetime.now()}
            if set_finished:
                fields["finished_at"] = datetime.datetime.now()
            allowed = [s.value if isinstance(s, JobState) else str(s) for s in from_statuses]
            rows = Job.objects.filter(pk=self.pk, status__in=allowed).update(**fields)
            if rows:
                self.status = to_status
                if set_finished:
                    self.finished_at = fields["finished_at"]
            return rows

    def cancel(self) -> None:
        from ami.ml.orchestration.jobs import cleanup_async_job_if_needed

        self.update_status(JobState.CANCELING)
        if self.task_id:
            from config import celery_app

            celery_app.control.revoke(self.task_id, terminate=True)
        self.update_status(JobState.REVOKED)
        cleanup_async_job_if_needed(self)

    @property
    def logger(self) -> logging.Logger:
        _logger = logging.getLogger(f"ami.jobs.{self.pk}")
        handler = next((h for h in _logger.handlers if isinstance(h, JobLogHandler)), None)
        if handler is None:
            logger.info("Adding JobLogHandler to logger for job %s", self.pk)
            _logger.addHandler(JobLogHandler(self))
        else:
            handler.job = self  # repointed to the current instance
        _logger.propagate = False
        return _logger


class JobLog(models.Model):
    """HEAD: one row per job-log line (the table also exists at PRE, unused there)."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_entries")
    level = models.CharField(max_length=20)
    message = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]


def render_job_logs(job: Job, limit: int = 1000) -> dict[str, list[str]]:
    """The job's log as the API shows it: ``[YYYY-mm-dd HH:MM:SS] LEVEL message`` lines,
    newest first (``stdout``), and the ERROR/CRITICAL messages (``stderr``)."""
    if PRE:
        return {"stdout": list(job.logs.stdout[:limit]), "stderr": list(job.logs.stderr[:limit])}
    rows = list(JobLog.objects.filter(job_id=job.pk).order_by("-created_at", "-pk")[:limit])
    if not rows:  # read-only fallback on the legacy field
        return {"stdout": list(job.logs.stdout[:limit]), "stderr": list(job.logs.stderr[:limit])}
    stdout = [f"[{r.created_at.strftime('%Y-%m-%d %H:%M:%S')}] {r.level} {r.message}" for r in rows]
    stderr = [r.message for r in rows if r.level in ("ERROR", "CRITICAL")]
    return {"stdout": stdout, "stderr": stderr}
