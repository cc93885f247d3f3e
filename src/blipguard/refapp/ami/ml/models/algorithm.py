"""ML algorithms registered on pipelines (minimal: name, key, task type)."""

from django.db import models

from ami.base.models import BaseModel


class Algorithm(BaseModel):
    name = models.CharField(max_length=255)
    key = models.SlugField(max_length=255, unique=True)
    # "detection", "classification", ... as on the platform (only "detection" is special).
    task_type = models.CharField(max_length=255, null=True, blank=True)
    version = models.IntegerField(default=1)

    DETECTION_TASK_TYPES = ("detection", "localization", "segmentation")

    def __str__(self) -> str:
        return self.key
