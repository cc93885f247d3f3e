"""The platform at HEAD (731cc2a2, current main)."""

import os

from .base import *  # noqa: F401,F403

ANTENNA_VERSION = "head"

CELERY_TASK_ROUTES = {
    "ami.jobs.tasks.run_job": {"queue": "jobs"},
    "ami.jobs.tasks.process_nats_pipeline_result": {"queue": "ml_results"},
    "ami.ml.models.pipeline.save_results": {"queue": "ml_results"},
    "ami.ml.tasks.create_detection_images": {"queue": "ml_results"},
}

# The task time-to-run: the JetStream consumer's ack_wait, in seconds.
NATS_TASK_TTR = int(os.environ.get("NATS_TASK_TTR", "300"))

JOB_LOG_PERSIST_ENABLED = True
