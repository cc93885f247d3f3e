"""Processing services: async ("pull") services have no endpoint URL and are seen
through the heartbeat of the job API (fact sheet §7). Minimal."""

from django.db import models

from ami.base.models import BaseModel


class ProcessingService(BaseModel):
    name = models.CharField(max_length=255)
    endpoint_url = models.CharField(max_length=1024, null=True, blank=True)
    projects = models.ManyToManyField("main.Project", blank=True, related_name="processing_services")
    pipelines = models.ManyToManyField("ml.Pipeline", blank=True, related_name="processing_services")
    last_seen = models.DateTimeField(null=True, blank=True)
    last_seen_live = models.BooleanField(null=True)


def mark_pull_services_seen(job) -> int:
    """The heartbeat: ``last_seen``/``last_seen_live`` of the pipeline's async
    processing services in the job's project. Returns the number of rows updated."""
    import datetime

    if job.pipeline_id is None:
        return 0
    return ProcessingService.objects.filter(
        pipelines=job.pipeline_id, projects=job.project_id, endpoint_url__isnull=True
    ).update(last_seen=datetime.datetime.now(), last_seen_live=True)
