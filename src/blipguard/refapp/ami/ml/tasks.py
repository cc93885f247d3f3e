"""ML Celery tasks used by the result path.

``create_detection_images`` is enqueued by ``save_results`` (a broker call). On the
platform it crops detection images; here it only reads the images (minimal).
``update_pipeline_pull_services_seen`` is HEAD's heartbeat task (fact sheet §7); the
fact sheet does not say which module holds it, it lives here.
"""

import logging

from config import celery_app

logger = logging.getLogger(__name__)


@celery_app.task(soft_time_limit=60 * 10, time_limit=60 * 11)
def create_detection_images(source_image_ids: list[int]) -> int:
    from ami.main.models import Detection

    n = Detection.objects.filter(source_image_id__in=source_image_ids).exclude(bbox=None).count()
    logger.info(f"Detection images for {len(source_image_ids)} source image(s): {n} detection(s)")
    return n


@celery_app.task()
def update_pipeline_pull_services_seen(job_id: int) -> int:
    from ami.jobs.models import Job
    from ami.ml.models.processing_service import mark_pull_services_seen

    job = Job.objects.get(pk=job_id)
    return mark_pull_services_seen(job)
