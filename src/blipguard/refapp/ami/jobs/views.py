"""The processing-service API: reserve tasks, submit results."""

import asyncio
import json

from asgiref.sync import async_to_sync
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from nats.errors import Error as NatsError
from nats.js.errors import NotFoundError

from ami.jobs.models import Job
from ami.jobs.tasks import process_nats_pipeline_result
from ami.ml.orchestration.nats_queue import TaskQueueManager


def _body(request: HttpRequest) -> dict:
    try:
        data = json.loads(request.body or b"{}")
    except ValueError as e:
        raise ValueError(f"request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError("request body must be a JSON object")
    return data


@require_GET
def job_detail(request: HttpRequest, job_id: int) -> JsonResponse:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        return JsonResponse({"error": f"job {job_id} not found"}, status=404)
    return JsonResponse({"id": job.pk, "status": job.status, "progress": job.progress})


@csrf_exempt
@require_POST
def reserve_tasks(request: HttpRequest, job_id: int) -> JsonResponse:
    try:
        batch = int(_body(request).get("batch_size", 1))
    except (ValueError, TypeError) as e:
        return JsonResponse({"error": str(e)}, status=400)

    async def pull() -> list[dict]:
        async with TaskQueueManager() as manager:
            return await manager.reserve_tasks(job_id, max(1, min(batch, 100)))

    try:
        tasks = async_to_sync(pull)()
    except NotFoundError:
        return JsonResponse({"tasks": [], "error": f"job {job_id} has no task stream"}, status=404)
    except (NatsError, OSError, asyncio.TimeoutError) as e:
        return JsonResponse({"tasks": [], "error": f"task queue unavailable: {type(e).__name__}: {e}"}, status=503)
    return JsonResponse({"tasks": tasks})


@csrf_exempt
@require_POST
def submit_results(request: HttpRequest, job_id: int) -> JsonResponse:
    try:
        results = _body(request).get("results")
    except ValueError as e:
        return JsonResponse({"error": str(e)}, status=400)
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and isinstance(r.get("reply_subject"), str) for r in results
    ):
        return JsonResponse({"error": "`results` must be a list of {reply_subject, result} objects"}, status=400)
    for item in results:
        process_nats_pipeline_result.delay(
            job_id=job_id, result_data=item.get("result"), reply_subject=item["reply_subject"]
        )
    return JsonResponse({"queued": len(results)}, status=202)
