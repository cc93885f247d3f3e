"""The processing-service job API (fact sheet §7): ``/api/v2/jobs/{id}/tasks/`` and
``/api/v2/jobs/{id}/result/``, plus read-only job list/detail.

Minimal where the fact sheet is silent: ``ObjectPermission`` lets any authenticated
member of the job's project (or a superuser) run the two actions; reads are open.
"""

import asyncio
import logging

import nats.errors
import pydantic
from asgiref.sync import async_to_sync
from django.core.cache import cache
from kombu.exceptions import KombuError
from rest_framework import permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response

from ami.jobs.models import Job, JobDispatchMode, JobState
from ami.jobs.schemas import QueuedTaskAcknowledgment
from ami.jobs.serializers import JobSerializer, ResultsRequestSerializer, TasksRequestSerializer
from ami.jobs.tasks import process_nats_pipeline_result
from ami.ml.orchestration.nats_queue import TaskQueueManager
from ami.ml.schemas import PipelineTaskResult
from ami.version import PRE

logger = logging.getLogger(__name__)

HEARTBEAT_THROTTLE_SECONDS = 30


class ObjectPermission(permissions.BasePermission):
    """Keyed on the action name: the processing-service actions need a project member."""

    PROCESSING_ACTIONS = ("tasks", "result")

    def has_permission(self, request, view):
        if view.action in self.PROCESSING_ACTIONS:
            return bool(request.user and request.user.is_authenticated)
        return request.method in permissions.SAFE_METHODS

    def has_object_permission(self, request, view, obj):
        if view.action in self.PROCESSING_ACTIONS:
            user = request.user
            return bool(user.is_superuser or obj.project.members.filter(pk=user.pk).exists())
        return request.method in permissions.SAFE_METHODS


def _who(request) -> str:
    token = getattr(request, "auth", None)
    key = getattr(token, "key", None)
    return f"user={request.user}" + (f", token_id={key[:8]}…" if key else "")


def _heartbeat(job: Job) -> None:
    if PRE:
        from ami.ml.models.processing_service import mark_pull_services_seen

        mark_pull_services_seen(job)
        return
    from ami.ml.tasks import update_pipeline_pull_services_seen

    if cache.add(f"heartbeat:pipeline:{job.pipeline_id}:project:{job.project_id}", 1, timeout=HEARTBEAT_THROTTLE_SECONDS):
        update_pipeline_pull_services_seen.delay(job.pk)


class JobViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = JobSerializer
    permission_classes = [ObjectPermission]

    def get_queryset(self):
        qs = Job.objects.select_related("project", "pipeline").order_by("-pk")
        params = self.request.query_params
        if params.get("project_id"):
            qs = qs.filter(project_id=params["project_id"])
        if params.get("incomplete_only") in ("1", "true", "True"):
            qs = qs.exclude(status__in=[s.value for s in JobState.final_states()])
        if params.get("pipeline__slug__in"):
            qs = qs.filter(pipeline__slug__in=params["pipeline__slug__in"].split(","))
        return qs

    def list(self, request, *args, **kwargs):
        if request.query_params.get("ids_only") in ("1", "true", "True"):
            return Response({"results": list(self.get_queryset().values_list("pk", flat=True))})
        return super().list(request, *args, **kwargs)

    @action(detail=True, methods=["post"])
    def tasks(self, request, pk=None):
        body = TasksRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        batch_size = body.validated_data["batch_size"]
        job: Job = self.get_object()
        if job.dispatch_mode != JobDispatchMode.ASYNC_API:
            raise ValidationError(["Only async_api jobs have fetchable tasks"])
        if job.status not in [s.value for s in JobState.active_states()]:
            if not PRE:
                job.logger.info(
                    f"Tasks requested for non-active job (status={job.status}); returning empty. {_who(request)}"
                )
            return Response({"tasks": []})
        if job.pipeline_id is None:
            raise ValidationError(["This job does not have a pipeline configured"])
        _heartbeat(job)

        async def reserve():
            async with TaskQueueManager() as manager:
                return await manager.reserve_tasks(job.pk, count=batch_size, timeout=0.5)

        try:
            tasks = async_to_sync(reserve)()
        except (asyncio.TimeoutError, OSError, nats.errors.Error) as e:
            logger.warning(f"NATS unavailable while fetching tasks for job {job.pk}: {e}")
            if not PRE:
                job.logger.warning(f"NATS unavailable while fetching tasks for job {job.pk}: {e}")
            return Response({"error": "Task queue temporarily unavailable"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        if not PRE:
            line = f"Tasks fetched: requested={batch_size}, delivered={len(tasks)}, {_who(request)}"
            if tasks:
                job.logger.info(line)
            else:
                job.logger.debug(line)
        return Response({"tasks": [task.dict() for task in tasks]})

    @action(detail=True, methods=["post"])
    def result(self, request, pk=None):
        job: Job = self.get_object()
        _heartbeat(job)
        body = ResultsRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            results = [PipelineTaskResult.parse_obj(item) for item in body.validated_data["results"]]
        except pydantic.ValidationError as e:
            raise ValidationError({"results": e.errors()}) from None

        queued: list[QueuedTaskAcknowledgment] = []
        try:
            for item in results:
                task = process_nats_pipeline_result.delay(
                    job_id=job.pk, result_data=item.result.dict(), reply_subject=item.reply_subject
                )
                logger.info(
                    "Queued pipeline result for job %s, task_id: %s, reply_subject: %s",
                    job.pk,
                    task.id,
                    item.reply_subject,
                )
                if not PRE:
                    job.logger.info(
                        f"Queued pipeline result: task_id={task.id}, reply_subject={item.reply_subject}, "
                        f"{_who(request)}"
                    )
                queued.append(QueuedTaskAcknowledgment(reply_subject=item.reply_subject, status="queued", task_id=task.id))
        except (OSError, KombuError):
            return Response(
                {"status": "error", "job_id": job.pk, "detail": "Task queue temporarily unavailable"},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(
            {
                "status": "accepted",
                "job_id": job.pk,
                "results_queued": len(queued),
                "tasks": [q.dict() for q in queued],
            }
        )
