"""Pipelines and the ``save_results`` task (fact sheet §8).

Kept: lookup/creation of the pipeline by the results' slug, the detection-algorithm and
registered-algorithm checks, a copy of the input, bbox stored as ``[x1, y1, x2, y2]``,
dedupe of real detections on (image, bbox) and of null detections on (image, detection
algorithm), classifications, occurrences, the source-image re-save, the
``create_detection_images.delay(...)`` broker call and the job-log lines. Left out: the
events' calculated fields and (HEAD) deployment counts and null-detection sentinels.
"""

import dataclasses
import datetime
import logging
import time

from django.db import models

from ami.base.models import BaseModel
from ami.ml.schemas import PipelineResultsResponse
from config import celery_app

logger = logging.getLogger(__name__)


class PipelineNotConfigured(ValueError):
    pass


class Pipeline(BaseModel):
    name = models.CharField(max_length=255)
    slug = models.SlugField(max_length=255, unique=True)
    algorithms = models.ManyToManyField("ml.Algorithm", blank=True, related_name="pipelines")
    projects = models.ManyToManyField("main.Project", blank=True, related_name="pipelines")

    def __str__(self) -> str:
        return f'#{self.pk} "{self.name}" ({self.slug})'

    def save_results(self, results: PipelineResultsResponse, job_id: int | None = None):
        # The task function, called synchronously in this process.
        return save_results(results=results, job_id=job_id)


@dataclasses.dataclass
class PipelineSaveResults:
    pipeline: Pipeline
    source_images: list
    detections: list
    classifications: list
    algorithms: dict
    total_time: float


def _naive(ts: datetime.datetime | None) -> datetime.datetime | None:
    """USE_TZ is False on the platform: store naive local time."""
    if ts is not None and ts.tzinfo is not None:
        return ts.astimezone().replace(tzinfo=None)
    return ts


@celery_app.task(soft_time_limit=240, time_limit=300)
def save_results(
    results: PipelineResultsResponse | None = None,
    results_json: str | None = None,
    job_id: int | None = None,
    return_created=False,
) -> "PipelineSaveResults | None":
    from ami.jobs.models import Job
    from ami.main.models import Classification, Detection, Occurrence, SourceImage, Taxon
    from ami.ml.models.algorithm import Algorithm
    from ami.ml.tasks import create_detection_images

    job_logger = logger
    if job_id:
        job = Job.objects.get(pk=job_id)  # Job.DoesNotExist propagates
        job_logger = job.logger
    if results_json:
        results = PipelineResultsResponse.parse_raw(results_json)
    elif results is not None:
        results = results.copy(deep=True)  # never mutate the caller's model
    else:
        raise ValueError("Either results or results_json is required")

    start = time.time()
    pipeline, _ = Pipeline.objects.get_or_create(slug=results.pipeline, defaults={"name": results.pipeline})
    job_logger.info(f"Saving results from pipeline {pipeline.slug}")

    algorithms_known: dict[str, Algorithm] = {a.key: a for a in pipeline.algorithms.all()}
    job_logger.info(f"Algorithms registered for pipeline: \n{', '.join(algorithms_known.keys())}")
    detectors = [a for a in algorithms_known.values() if a.task_type in Algorithm.DETECTION_TASK_TYPES]
    if not detectors:
        raise ValueError("Pipeline does not have a detection algorithm")
    if len(detectors) > 1:
        raise NotImplementedError("Multiple detection algorithms per pipeline are not supported")
    detection_algorithm = detectors[0]

    for det in results.detections:
        keys = [det.algorithm.key] + [c.algorithm.key for c in det.classifications]
        for key in keys:
            if key not in algorithms_known:
                raise PipelineNotConfigured(
                    f"Algorithm {key} is not registered to pipeline {pipeline.slug}. "
                    f"Known: {', '.join(algorithms_known)}"
                )

    source_images: dict[str, SourceImage] = {}
    for image_resp in results.source_images:
        try:
            source_images[image_resp.id] = SourceImage.objects.get(pk=int(image_resp.id))
        except SourceImage.DoesNotExist:
            job_logger.error(f"Source image {image_resp.id} not found, skipping")

    created_detections: list = []
    created, updated = 0, 0
    for det in results.detections:
        image = source_images.get(det.source_image_id)
        if image is None:
            try:
                image = SourceImage.objects.get(pk=int(det.source_image_id))
            except SourceImage.DoesNotExist:
                job_logger.error(f"Source image {det.source_image_id} not found, skipping detection")
                continue
            source_images[det.source_image_id] = image
        bbox = list(det.bbox.dict().values()) if det.bbox is not None else None
        if bbox is not None:
            existing = Detection.objects.filter(source_image=image, bbox=bbox).first()
        else:
            existing = Detection.objects.filter(
                source_image=image, bbox__isnull=True, detection_algorithm=detection_algorithm
            ).first()
        if existing is not None:
            detection = existing
            updated += 1
        else:
            detection = Detection.objects.create(
                source_image=image,
                bbox=bbox,
                timestamp=image.timestamp,
                path=det.crop_image_url,
                detection_algorithm=algorithms_known.get(det.algorithm.key, detection_algorithm),
                detection_time=_naive(det.timestamp),
            )
            created += 1
        created_detections.append(detection)

        for cls in det.classifications:
            taxon, _ = Taxon.objects.get_or_create(name=cls.classification)
            Classification.objects.get_or_create(
                detection=detection,
                algorithm=algorithms_known[cls.algorithm.key],
                taxon=taxon,
                terminal=cls.terminal,
                defaults={
                    "score": max(cls.scores) if cls.scores else None,
                    "scores": cls.scores,
                    "logits": cls.logits,
                    "timestamp": _naive(cls.timestamp),
                },
            )
    job_logger.info(
        f"Created {created} new detections, updated {updated} existing detections, "
        f"for {len(source_images)} source image(s)"
    )

    # Occurrences: one per real detection that has none, determined by its best terminal
    # classification.
    for detection in created_detections:
        if detection.bbox is None or detection.occurrence_id is not None:
            continue
        best = detection.classifications.filter(terminal=True).order_by("-score").first()
        occurrence = Occurrence.objects.create(
            project_id=detection.source_image.project_id,
            deployment_id=detection.source_image.deployment_id,
            determination=best.taxon if best else None,
            determination_score=best.score if best else None,
        )
        detection.occurrence = occurrence
        detection.save(update_fields=["occurrence", "updated_at"])

    for image in source_images.values():
        image.save()

    image_ids = [image.pk for image in source_images.values()]
    task = create_detection_images.delay(source_image_ids=image_ids)
    job_logger.info(f"Creating detection images in sub-task {task.id}")

    total_time = time.time() - start
    job_logger.info(f"Saved results from pipeline {pipeline} in {total_time:.2f} seconds")

    if return_created:
        return PipelineSaveResults(
            pipeline=pipeline,
            source_images=list(source_images.values()),
            detections=created_detections,
            classifications=[c for d in created_detections for c in d.classifications.all()],
            algorithms=algorithms_known,
            total_time=total_time,
        )
    return None
