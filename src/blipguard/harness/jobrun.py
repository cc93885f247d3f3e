"""Run one async job of the reference app end to end and report what a user would see."""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from blipguard.harness.simulator import ProcessingService, expected_detections
from blipguard.localstack.procs import wait_until


@dataclass
class JobOutcome:
    job_id: int
    status: str
    total: int
    processed: int  # the `process` stage
    failed: int
    results_processed: int  # the `results` stage
    detections: int
    expected_detections: int
    duplicate_detections: int
    detections_counter: int  # what the job's progress says it found
    redis_keys: list[str]
    stream_exists: bool
    log: list[str]
    errors: list[str]
    elapsed: float
    fault_fired_at: float | None = None
    stream_lost_while_running: bool = False  # the NATS stream vanished before the job ended
    notes: list[str] = field(default_factory=list)

    def log_contains(self, text: str) -> bool:
        return any(text in line for line in self.log)

    def summary(self) -> str:
        return (
            f"job {self.job_id}: {self.status} {self.processed}/{self.total} processed, {self.failed} failed, "
            f"detections {self.detections}/{self.expected_detections} ({self.duplicate_detections} duplicated), "
            f"redis keys left {len(self.redis_keys)}, stream {'intact' if self.stream_exists else 'gone'}, "
            f"{self.elapsed:.1f}s"
        )


def _stream_exists(job_id: int, unknown: bool | None = None) -> bool | None:
    """Whether the job's stream exists; with `unknown` given, NATS being down returns it."""
    from asgiref.sync import async_to_sync

    from ami.ml.orchestration.nats_queue import TaskQueueManager

    async def check() -> bool:
        async with TaskQueueManager() as m:
            return await m.stream_exists(job_id)

    if unknown is None:
        return async_to_sync(check)()
    try:
        return async_to_sync(check)()
    except Exception:
        return unknown


def collect(job_id: int, redis_client, image_ids, error_ids=(), elapsed: float = 0.0) -> JobOutcome:
    from django.db.models import Count

    from ami.jobs.models import Job
    from ami.main.models import Detection

    job = Job.objects.get(pk=job_id)
    dets = Detection.objects.filter(job_id=job_id)
    dupes = (
        dets.values("source_image_id", "bbox").annotate(n=Count("id")).filter(n__gt=1).count()
    )
    ok_ids = [i for i in image_ids if i not in set(error_ids)]
    return JobOutcome(
        job_id=job_id,
        status=job.status,
        total=job.total_images,
        processed=job.stage("process")["processed"],
        failed=job.stage("process")["failed"],
        results_processed=job.stage("results")["processed"],
        detections=dets.count(),
        expected_detections=expected_detections(ok_ids),
        duplicate_detections=dupes,
        detections_counter=job.stage("results").get("detections", 0),
        redis_keys=sorted(k.decode() if isinstance(k, bytes) else k for k in redis_client.keys(f"job:{job_id}:*")),
        stream_exists=_stream_exists(job_id),
        log=job.log_messages(),
        errors=job.log_messages(errors_only=True),
        elapsed=elapsed,
    )


def run_job(
    base_url: str,
    redis_client,
    n_images: int = 840,
    *,
    fault: Callable[[], None] | None = None,
    fault_at: float = 0.3,
    error_ids_at: Callable[[list[int]], list[int]] | None = None,
    payloads_at: Callable[[list[int]], dict] | None = None,
    settle: Callable[[], bool] | None = None,
    timeout: float = 240,
    batch_size: int = 8,
    sim_threads: int = 2,
    ack_wait: float | None = None,
) -> JobOutcome:
    """Start a job, let a simulated processing service work it, fire `fault` once when
    the `process` stage passes `fault_at`, and wait for the job's final state.

    `settle`, if given, is waited on after the final state (e.g. "the result queue is
    empty") so late tasks have run before the outcome is read.
    """
    from ami.jobs.models import FINAL_STATES, Job
    from ami.jobs.services import start_async_job

    t0 = time.monotonic()
    job = start_async_job(n_images, name="blipguard-run", ack_wait=ack_wait)
    image_ids = job.image_ids
    error_ids = error_ids_at(image_ids) if error_ids_at else []
    payloads = payloads_at(image_ids) if payloads_at else {}
    fired: dict[str, float] = {}
    fault_thread: threading.Thread | None = None
    polls = {"n": 0, "stream_lost": False}

    def status_now() -> str:
        return Job.objects.filter(pk=job.pk).values_list("status", flat=True).get()

    def status_and_fault() -> bool:
        nonlocal fault_thread
        polls["n"] += 1
        if polls["n"] % 25 == 0 and not polls["stream_lost"] and _stream_exists(job.pk, unknown=True) is False:
            # Gone is fine once the job ended (cleanup); before that, the job is lost.
            polls["stream_lost"] = status_now() not in FINAL_STATES
        current = Job.objects.filter(pk=job.pk).values_list("status", "progress").get()
        processed = current[1]["stages"]["process"]["processed"]
        if fault and "at" not in fired and processed >= fault_at * n_images:
            fired["at"] = processed / n_images
            fault_thread = threading.Thread(target=fault, name="fault", daemon=True)
            fault_thread.start()
        return current[0] in FINAL_STATES

    with ProcessingService(
        base_url, job.pk, batch_size=batch_size, threads=sim_threads, error_ids=error_ids, payloads=payloads
    ) as sim:
        try:
            wait_until(status_and_fault, timeout, f"job {job.pk} to reach a final state", interval=0.02)
        except TimeoutError as e:
            stuck = collect(job.pk, redis_client, image_ids, error_ids, time.monotonic() - t0)
            tail = "\n  ".join(stuck.log[-15:])
            raise TimeoutError(f"{e}\n{stuck.summary()}\nsimulator: {sim.errors[-3:]}\njob log tail:\n  {tail}") from None
        elapsed = time.monotonic() - t0
    if fault_thread is not None:
        fault_thread.join(timeout=120)
    if settle is not None:
        wait_until(settle, 60, "the stack to settle after the job ended")
    outcome = collect(job.pk, redis_client, image_ids, error_ids, elapsed)
    outcome.fault_fired_at = fired.get("at")
    outcome.stream_lost_while_running = polls["stream_lost"]
    outcome.notes.extend(sim.errors[:5])
    return outcome

