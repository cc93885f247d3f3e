"""Seed the reference app for a test job, and start it the way the platform does.

``create_async_job`` makes a project (with the ``async_pipeline_workers`` flag), a
pipeline with one detection and one classification algorithm (the keys the simulator
sends), N source images with URLs in a collection, and an ML job over them: the job's
``setup`` switches it to the ``async_api`` dispatch mode. ``start_async_job`` then runs
``MLJob.run`` in this process: status STARTED, the collect stage, and
``queue_images_to_nats(job, images)`` (Redis state first, then one NATS message per
image). ``run_job`` on the platform does the same inside a Celery worker (queue ``jobs``
at HEAD, ``antenna`` at PRE), with its signal handlers around it: PENDING before, and
after it returns a SUCCESS that is deferred (the stages are not finished).
"""

import contextlib
import itertools

PIPELINE_SLUG = "blipguard-sim"
DETECTOR = {"name": "Simulated moth detector", "key": "blipguard-sim-detector"}
CLASSIFIER = {"name": "Simulated moth classifier", "key": "blipguard-sim-classifier"}
SERVICE_USER = "processing-service"
IMAGE_BASE_URL = "http://images.blipguard.invalid"

_seq = itertools.count(1)


def processing_service_token(project=None) -> str:
    """The DRF token of the processing-service user (a member of ``project``)."""
    from django.contrib.auth import get_user_model
    from rest_framework.authtoken.models import Token

    user, _ = get_user_model().objects.get_or_create(username=SERVICE_USER)
    if project is not None:
        project.members.add(user)
    token, _ = Token.objects.get_or_create(user=user)
    return token.key


def pipeline():
    from ami.ml.models import Algorithm, Pipeline

    pipe, _ = Pipeline.objects.get_or_create(slug=PIPELINE_SLUG, defaults={"name": "Blipguard simulated pipeline"})
    detector, _ = Algorithm.objects.get_or_create(key=DETECTOR["key"], defaults={"name": DETECTOR["name"], "task_type": "detection"})
    classifier, _ = Algorithm.objects.get_or_create(
        key=CLASSIFIER["key"], defaults={"name": CLASSIFIER["name"], "task_type": "classification"}
    )
    pipe.algorithms.add(detector, classifier)
    return pipe


def create_async_job(n_images: int, name: str = "blipguard-run"):
    """A new project, N images and an async_api ML job over them (status CREATED)."""
    from ami.jobs.models import Job, JobDispatchMode
    from ami.main.models import Project, SourceImage, SourceImageCollection
    from ami.ml.models import ProcessingService

    n = next(_seq)
    project = Project.objects.create(name=f"{name} project {n}", feature_flags={"async_pipeline_workers": True})
    pipe = pipeline()
    pipe.projects.add(project)
    service, _ = ProcessingService.objects.get_or_create(name="blipguard simulated service", endpoint_url=None)
    service.pipelines.add(pipe)
    service.projects.add(project)
    processing_service_token(project)
    images = SourceImage.objects.bulk_create(
        [SourceImage(project=project, path=f"{project.pk}/capture-{i:05d}.jpg", public_base_url=IMAGE_BASE_URL) for i in range(n_images)]
    )
    collection = SourceImageCollection.objects.create(name=f"{name} images", project=project)
    collection.images.add(*images)
    job = Job.objects.create(
        name=name, project=project, pipeline=pipe, source_image_collection=collection, job_type_key="ml"
    )
    assert job.dispatch_mode == JobDispatchMode.ASYNC_API, job.dispatch_mode
    return job


@contextlib.contextmanager
def _consumer_ack_wait(seconds: float | None):
    """The consumer is created here, when the tasks are published: its ack_wait is this
    process's ``nats_queue.TASK_TTR`` (read once at import on the platform)."""
    from ami.ml.orchestration import nats_queue

    if seconds is None:
        yield
        return
    old = nats_queue.TASK_TTR
    nats_queue.TASK_TTR = seconds
    try:
        yield
    finally:
        nats_queue.TASK_TTR = old


def start_async_job(job, ack_wait: float | None = None):
    """What ``run_job`` runs: ``MLJob.run`` (see the module docstring)."""
    from ami.jobs.models import Job

    with _consumer_ack_wait(ack_wait):
        job.run()
    return Job.objects.get(pk=job.pk)


def image_ids(job) -> list[int]:
    return list(job.source_image_collection.images.order_by("pk").values_list("pk", flat=True))


def reserve_tasks(job_id: int, n: int) -> list:
    """Take ``n`` of the job's NATS tasks, as a processing service does."""
    from asgiref.sync import async_to_sync

    from ami.ml.orchestration.nats_queue import TaskQueueManager

    async def pull() -> list:
        out: list = []
        async with TaskQueueManager() as m:
            while len(out) < n:
                out += await m.reserve_tasks(job_id, count=min(100, n - len(out)), timeout=2)
        return out

    return async_to_sync(pull)()
