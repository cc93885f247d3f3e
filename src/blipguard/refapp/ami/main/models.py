from django.db import models


class SourceImage(models.Model):
    path = models.CharField(max_length=255)


class Detection(models.Model):
    job = models.ForeignKey("jobs.Job", on_delete=models.CASCADE, related_name="detections")
    source_image = models.ForeignKey(SourceImage, on_delete=models.CASCADE, related_name="detections")
    bbox = models.JSONField()
    label = models.CharField(max_length=255)
    score = models.FloatField()
    created_at = models.DateTimeField(auto_now_add=True)
