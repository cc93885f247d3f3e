"""Starting an async job: images, Redis state, and one NATS task per image."""

from asgiref.sync import async_to_sync
from django.utils import timezone

from ami.jobs.models import Job, JobState, empty_progress
from ami.main.models import SourceImage
from ami.ml.orchestration.async_job_state import AsyncJobStateManager
from ami.ml.orchestration.nats_queue import TaskQueueManager


def start_async_job(n_images: int, name: str = "", ack_wait: float | None = None) -> Job:
    """Create the images and the job, then queue it; `job.image_ids` lists its images."""
    images = SourceImage.objects.bulk_create([SourceImage(path=f"img-{i}.jpg") for i in range(n_images)])
    job = Job.objects.create(
        name=name,
        status=JobState.STARTED,
        total_images=n_images,
        progress=empty_progress(n_images),
        started_at=timezone.now(),
    )
    image_ids = [img.pk for img in images]
    job.image_ids = image_ids
    AsyncJobStateManager(job.pk).initialize_job(image_ids)

    async def queue() -> None:
        async with TaskQueueManager() as manager:
            await manager.setup_job(job.pk, ack_wait=ack_wait)
            for image in images:
                await manager.publish_task(job.pk, {"image_id": image.pk, "image_url": image.path})

    async_to_sync(queue)()
    job.logger.info(f"Queued {n_images} images")
    return job
