import logging

from django.db import models, transaction
from django.utils import timezone

STAGES = ("process", "results")


class JobState(models.TextChoices):
    CREATED = "CREATED"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


FINAL_STATES = (JobState.SUCCESS, JobState.FAILURE)


def empty_progress(total: int = 0) -> dict:
    return {
        "stages": {
            stage: {"progress": 0.0, "processed": 0, "remaining": total, "failed": 0, "detections": 0}
            for stage in STAGES
        }
    }


class Job(models.Model):
    name = models.CharField(max_length=255, default="")
    status = models.CharField(max_length=16, choices=JobState.choices, default=JobState.CREATED)
    total_images = models.IntegerField(default=0)
    progress = models.JSONField(default=empty_progress)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    @property
    def logger(self) -> logging.Logger:
        return get_job_logger(self.pk)

    def stage(self, name: str) -> dict:
        return self.progress["stages"][name]

    def log_messages(self, errors_only: bool = False) -> list[str]:
        """The job's log as the UI shows it: "Logs" or, with errors_only, "Errors"."""
        lines = self.log_lines.order_by("id")
        if errors_only:
            lines = lines.filter(level__gte=logging.ERROR)
        return [line.formatted() for line in lines]


class JobLogLine(models.Model):
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_lines")
    created_at = models.DateTimeField(default=timezone.now)
    level = models.IntegerField()
    message = models.TextField()

    def formatted(self) -> str:
        stamp = self.created_at.strftime("%Y-%m-%d %H:%M:%S")
        return f"[{stamp}] {logging.getLevelName(self.level)} {self.message}"


class JobLogHandler(logging.Handler):
    """Appends each record to the job's stored log (one row per line: no lost updates)."""

    def __init__(self, job_id: int):
        super().__init__()
        self.job_id = job_id

    def emit(self, record: logging.LogRecord) -> None:
        try:
            JobLogLine.objects.create(job_id=self.job_id, level=record.levelno, message=record.getMessage())
        except Exception:  # a log line must never take the task down
            self.handleError(record)


def get_job_logger(job_id: int) -> logging.Logger:
    logger = logging.getLogger(f"ami.jobs.{job_id}")
    if not any(isinstance(h, JobLogHandler) for h in logger.handlers):
        logger.addHandler(JobLogHandler(job_id))
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
    return logger


def update_stage(job_id: int, stage: str, progress: float, add: dict | None = None, **values) -> Job:
    """Record one stage's progress under a row lock.

    Tasks finish out of order, so a stage never moves backwards: progress, processed and
    failed only grow, remaining only shrinks.
    """
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        st = job.progress["stages"][stage]
        st["progress"] = max(st.get("progress", 0.0), round(progress, 4))
        for key, value in values.items():
            if value is None:
                continue
            if key == "remaining":
                st[key] = min(st.get(key, value), value)
            elif key in ("processed", "failed"):
                st[key] = max(st.get(key, 0), value)
            else:
                st[key] = value
        for key, value in (add or {}).items():
            st[key] = st.get(key, 0) + value
        job.save(update_fields=["progress"])
    return job
