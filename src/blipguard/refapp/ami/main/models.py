"""Capture-side models, only as far as the result path needs them (fact sheet §8).

Minimal: Project (members, feature flags), Deployment, SourceImage (a URL and its
re-save), SourceImageCollection, Taxon, Detection (bbox stored as ``[x1, y1, x2, y2]``),
Classification and Occurrence. Events, deployment counts, crops and the many other
fields of the platform's models are left out.
"""

from django.conf import settings
from django.db import models

from ami.base.models import BaseModel


class Project(BaseModel):
    name = models.CharField(max_length=255)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="projects")
    # The platform keeps feature flags on the project; `async_pipeline_workers` turns on
    # the async (NATS) dispatch mode for new ML jobs.
    feature_flags = models.JSONField(default=dict, blank=True)

    def __str__(self) -> str:
        return self.name


class Deployment(BaseModel):
    name = models.CharField(max_length=255)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="deployments")


class SourceImage(BaseModel):
    path = models.CharField(max_length=1024, blank=True, default="")
    public_base_url = models.CharField(max_length=1024, blank=True, default="")
    timestamp = models.DateTimeField(null=True, blank=True)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, null=True, related_name="captures")
    deployment = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True, blank=True)
    detections_count = models.IntegerField(null=True, blank=True)

    def url(self) -> str | None:
        if not self.path and not self.public_base_url:
            return None
        return f"{self.public_base_url.rstrip('/')}/{self.path.lstrip('/')}" if self.path else self.public_base_url

    def save(self, *args, **kwargs):
        if self.pk:
            self.detections_count = self.detections.exclude(bbox=None).count()
        super().save(*args, **kwargs)


class SourceImageCollection(BaseModel):
    name = models.CharField(max_length=255)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="collections")
    images = models.ManyToManyField(SourceImage, blank=True, related_name="collections")


class Taxon(BaseModel):
    name = models.CharField(max_length=255, unique=True)


class Occurrence(BaseModel):
    project = models.ForeignKey(Project, on_delete=models.SET_NULL, null=True)
    deployment = models.ForeignKey(Deployment, on_delete=models.SET_NULL, null=True)
    determination = models.ForeignKey(Taxon, on_delete=models.SET_NULL, null=True)
    determination_score = models.FloatField(null=True)


class Detection(BaseModel):
    source_image = models.ForeignKey(SourceImage, on_delete=models.CASCADE, related_name="detections")
    # [x1, y1, x2, y2], or None for a "null detection" (the image was processed, nothing found)
    bbox = models.JSONField(null=True, blank=True)
    timestamp = models.DateTimeField(null=True, blank=True)
    path = models.CharField(max_length=1024, null=True, blank=True)
    detection_algorithm = models.ForeignKey("ml.Algorithm", on_delete=models.SET_NULL, null=True)
    detection_time = models.DateTimeField(null=True, blank=True)
    occurrence = models.ForeignKey(Occurrence, on_delete=models.SET_NULL, null=True, related_name="detections")


class Classification(BaseModel):
    detection = models.ForeignKey(Detection, on_delete=models.CASCADE, related_name="classifications")
    taxon = models.ForeignKey(Taxon, on_delete=models.SET_NULL, null=True)
    score = models.FloatField(null=True)
    scores = models.JSONField(null=True, blank=True)
    logits = models.JSONField(null=True, blank=True)
    terminal = models.BooleanField(default=True)
    timestamp = models.DateTimeField(null=True, blank=True)
    algorithm = models.ForeignKey("ml.Algorithm", on_delete=models.SET_NULL, null=True)
