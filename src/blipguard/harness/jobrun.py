"""Run one async job of the reference app end to end and report what a user would see."""

import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blipguard.harness import seed
from blipguard.harness.simulator import ProcessingService, expected_detections
from blipguard.localstack.procs import BackgroundThread, wait_until

FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


@dataclass
class JobOutcome:
    job_id: int
    status: str
    total: int  # the `collect` stage's total_images
    processed: int  # the `process` stage's `processed` (success plus failed)
    failed: int  # the `process` stage's `failed`
    results_processed: int  # the `results` stage: its progress fraction times total
    detections: int  # Detection rows stored for the job's images
    expected_detections: int
    duplicate_detections: int  # (image, bbox) pairs stored more than once
    detections_counter: int  # the `results` stage's `detections` param
    redis_keys: list[str]
    stream_exists: bool
    log: list[str]  # the job log, oldest first, as `[YYYY-mm-dd HH:MM:SS] LEVEL message`
    errors: list[str]  # the job's error messages (stderr), oldest first
    elapsed: float
    fault_fired_at: float | None = None  # the processed fraction observed when the fault fired
    stream_lost_while_running: bool = False  # the NATS stream vanished before the job ended
    results_refused: int = 0  # results the API refused (e.g. 500): their tasks come back from NATS
    notes: list[str] = field(default_factory=list)

    def consumer_at_cleanup(self) -> dict[str, int]:
        """The job consumer's counters as the host logged them just before deleting it
        (``Finalizing NATS consumer ... (num_ack_pending=0 num_redelivered=3 ...)``)."""
        return consumer_stats(self.log)

    def log_contains(self, text: str) -> bool:
        return any(text in line for line in self.log)

    def summary(self) -> str:
        return (
            f"job {self.job_id}: {self.status} {self.processed}/{self.total} processed, {self.failed} failed, "
            f"detections {self.detections}/{self.expected_detections} ({self.duplicate_detections} duplicated), "
            f"redis keys left {len(self.redis_keys)}, stream {'intact' if self.stream_exists else 'gone'}, "
            f"{self.elapsed:.1f}s"
        )


def consumer_stats(lines) -> dict[str, int]:
    """The first ``Finalizing NATS consumer ... (delivered=...)`` line's counters. Later
    results of a completed job fire the cleanup again and find no stream (``stats
    unavailable``): those lines carry none."""
    for line in lines:
        if "Finalizing NATS consumer" in line and "delivered=" in line:
            return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
    return {}


def _stream_exists(job_id: int, unknown: bool | None = None) -> bool | None:
    """Whether the job's stream exists; with `unknown` given, NATS being down returns it."""
    import asyncio

    from asgiref.sync import async_to_sync
    from nats.js.errors import NotFoundError

    from ami.ml.orchestration.nats_queue import TaskQueueManager, get_connection

    async def check() -> bool:
        name = TaskQueueManager()._get_stream_name(job_id)
        nc, js = await get_connection(TaskQueueManager().nats_url)
        try:
            await asyncio.wait_for(js.stream_info(name), timeout=5)
            return True
        except NotFoundError:
            return False
        finally:
            await nc.close()

    if unknown is None:
        return async_to_sync(check)()
    try:
        return async_to_sync(check)()
    except Exception:
        return unknown


def _params(job, stage: str) -> dict:
    try:
        return {p.key: p.value for p in job.progress.get_stage(stage).params}
    except ValueError:
        return {}


def _int(value) -> int:
    return int(value) if value not in (None, "") else 0


def collect(job_id: int, redis_client, image_ids, error_ids=(), elapsed: float = 0.0) -> JobOutcome:
    from django.db.models import Count

    from ami.jobs.models import Job, render_job_logs
    from ami.main.models import Detection

    job = Job.objects.get(pk=job_id)
    dets = Detection.objects.filter(source_image_id__in=list(image_ids))
    dupes = (
        dets.exclude(bbox=None).values("source_image_id", "bbox").annotate(n=Count("id")).filter(n__gt=1).count()
    )
    ok_ids = [i for i in image_ids if i not in {int(e) for e in error_ids}]
    total = _int(_params(job, "collect").get("total_images"))
    process = _params(job, "process")
    try:
        results_fraction = job.progress.get_stage("results").progress
    except ValueError:
        results_fraction = 0.0
    logs = render_job_logs(job, 5000)
    return JobOutcome(
        job_id=job_id,
        status=job.status,
        total=total,
        processed=_int(process.get("processed")),
        failed=_int(process.get("failed")),
        results_processed=round(results_fraction * total),
        detections=dets.count(),
        expected_detections=expected_detections(ok_ids),
        duplicate_detections=dupes,
        detections_counter=_int(_params(job, "results").get("detections")),
        redis_keys=sorted(k.decode() if isinstance(k, bytes) else k for k in redis_client.keys(f"job:{job_id}:*")),
        stream_exists=bool(_stream_exists(job_id)),
        log=list(reversed(logs["stdout"])),
        errors=list(reversed(logs["stderr"])),
        elapsed=elapsed,
    )


def _takes_service(fault: Callable) -> bool:
    return len(inspect.signature(fault).parameters) == 1


def run_job(
    base_url: str,
    redis_client,
    n_images: int = 840,
    *,
    fault: Callable[[], None] | None = None,
    fault_at: float = 0.3,
    error_ids_at: Callable[[list[int]], list[int]] | None = None,
    payloads_at: Callable[[list[int]], dict] | None = None,
    slow_first_at: Callable[[list[int]], dict] | None = None,
    settle: Callable[[], bool] | None = None,
    timeout: float = 240,
    batch_size: int = 8,
    sim_threads: int = 2,
    ack_wait: float | None = None,
    batch_seconds: float = 0.0,
) -> JobOutcome:
    """Start a job, let a simulated processing service work it, fire `fault` once when
    the `process` stage passes `fault_at`, and wait for the job's final state. A `fault`
    taking one argument is given the `ProcessingService`, to time itself on its traffic.

    `settle`, if given, is waited on after the final state (e.g. "the result queue is
    empty") so late tasks have run before the outcome is read. An exception raised by
    `fault` (in its own thread) is re-raised here.
    """
    from ami.jobs.models import Job

    t0 = time.monotonic()
    job = seed.create_async_job(n_images, name="blipguard-run")
    token = seed.processing_service_token(job.project)
    job = seed.start_async_job(job, ack_wait=ack_wait)
    image_ids = seed.image_ids(job)
    error_ids = error_ids_at(image_ids) if error_ids_at else []
    payloads = payloads_at(image_ids) if payloads_at else {}
    fired: dict[str, float] = {}
    fault_thread: BackgroundThread | None = None
    polls = {"n": 0, "stream_lost": False}

    def status_now() -> str:
        return Job.objects.filter(pk=job.pk).values_list("status", flat=True).get()

    def processed_now(progress) -> int:
        for stage in progress.stages:
            if stage.key == "process":
                return _int({p.key: p.value for p in stage.params}.get("processed"))
        return 0

    def status_and_fault() -> bool:
        nonlocal fault_thread
        polls["n"] += 1
        if polls["n"] % 25 == 0 and not polls["stream_lost"] and _stream_exists(job.pk, unknown=True) is False:
            # Gone is fine once the job ended (cleanup); before that, the job is lost.
            polls["stream_lost"] = status_now() not in FINAL_STATES
        status, progress = Job.objects.filter(pk=job.pk).values_list("status", "progress").get()
        if fault and "at" not in fired:
            processed = processed_now(progress)
            if processed >= fault_at * n_images:
                fired["at"] = processed / n_images  # what was observed, not what was asked
                call = (lambda: fault(sim)) if _takes_service(fault) else fault
                fault_thread = BackgroundThread(call, name="fault")
                fault_thread.start()
        return status in FINAL_STATES

    with ProcessingService(
        base_url,
        job.pk,
        token,
        batch_size=batch_size,
        threads=sim_threads,
        error_ids=error_ids,
        payloads=payloads,
        slow_first=slow_first_at(image_ids) if slow_first_at else None,
        batch_seconds=batch_seconds,
    ) as sim:
        try:
            wait_until(status_and_fault, timeout, f"job {job.pk} to reach a final state", interval=0.02)
        except TimeoutError as e:
            stuck = collect(job.pk, redis_client, image_ids, error_ids, time.monotonic() - t0)
            tail = "\n  ".join(stuck.log[-15:])
            raise TimeoutError(
                f"{e}\n{stuck.summary()}\nsimulator: {sim.errors[-3:]}\njob log tail:\n  {tail}"
            ) from None
        elapsed = time.monotonic() - t0
    if fault_thread is not None:
        fault_thread.join(timeout=120)  # re-raises the fault's own error
        if fault_thread.is_alive():
            raise TimeoutError("the fault thread did not finish within 120 s")
    if settle is not None:
        wait_until(settle, 300, "the stack to settle after the job ended")
    outcome = collect(job.pk, redis_client, image_ids, error_ids, elapsed)
    outcome.fault_fired_at = fired.get("at")
    outcome.stream_lost_while_running = polls["stream_lost"]
    outcome.results_refused = sim.results_refused
    outcome.notes.extend(sim.errors[:5])
    return outcome
