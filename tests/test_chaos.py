"""The patched reference app through real faults: nothing lost, failures accurate."""

import pytest

from blipguard.harness.jobrun import run_job
from blipguard.localstack import faults
from blipguard.localstack.procs import wait_until

pytestmark = pytest.mark.chaos

N_IMAGES = 840
PATCHED = "refsite.settings_patched"
# Short client timeouts so a stall is felt, the default retry policy (6 retries).
PATCHED_ENV = {"BLIPGUARD_SOCKET_TIMEOUT": "1", "BLIPGUARD_CONNECT_TIMEOUT": "1"}


@pytest.fixture
def patched_workers(worker_pool):
    return worker_pool.ensure(PATCHED, **PATCHED_ENV)


def assert_nothing_lost(outcome):
    print(outcome.summary())
    assert outcome.status == "SUCCESS", outcome.errors[-5:] or outcome.log[-5:]
    assert (outcome.processed, outcome.failed, outcome.results_processed) == (N_IMAGES, 0, N_IMAGES)
    assert outcome.detections == outcome.expected_detections
    assert outcome.duplicate_detections == 0
    assert outcome.detections_counter == outcome.expected_detections, "progress counters must be exact"
    assert outcome.redis_keys == [] and not outcome.stream_exists, "cleanup after completion"
    assert not outcome.stream_lost_while_running, "the NATS stream must stay until the job completes"
    assert not outcome.log_contains("marked as FAILURE")


def run(stack, web, redis_direct, queue_empty, fault, **kw):
    return run_job(web.url, redis_direct, N_IMAGES, fault=fault, fault_at=0.3, settle=queue_empty, **kw)


def test_inflight_reset_is_survived(stack, web, redis_direct, patched_workers, queue_empty):
    resets_before = stack.redis_proxy.resets_fired
    outcome = run(stack, web, redis_direct, queue_empty, lambda: faults.inflight_reset(stack))
    assert stack.redis_proxy.resets_fired - resets_before == 1
    assert_nothing_lost(outcome)
    assert outcome.log_contains("Connection reset by peer"), "the real cause belongs in the job log"
    assert outcome.log_contains("retried")


@pytest.mark.parametrize("downtime", [2.0, 10.0])
def test_redis_restart_is_survived(stack, web, redis_direct, patched_workers, queue_empty, downtime):
    outcome = run(stack, web, redis_direct, queue_empty, lambda: faults.redis_down_for(stack, downtime).join())
    assert_nothing_lost(outcome)
    assert outcome.log_contains("Transient redis error")
    assert outcome.log_contains("Retrying in")
    assert outcome.log_contains("Recovered from a transient redis error")


def test_redis_stall_past_socket_timeout_is_survived(stack, web, redis_direct, patched_workers, queue_empty):
    outcome = run(stack, web, redis_direct, queue_empty, lambda: faults.redis_stall(stack, 4.0))
    assert_nothing_lost(outcome)
    assert outcome.log_contains("Timeout")


def test_nats_restart_is_survived(stack, web, redis_direct, patched_workers, queue_empty):
    def nats_blip():
        # Results must be waiting in RabbitMQ when NATS goes, so some ack hits the outage.
        wait_until(lambda: stack.rabbitmq.queue_depth("ml_results") >= 10, 60, "results queued in RabbitMQ")
        faults.nats_down_for(stack, 3.0).join()

    outcome = run(stack, web, redis_direct, queue_empty, nats_blip, batch_size=60)
    assert_nothing_lost(outcome)
    assert outcome.log_contains("Transient nats error while acknowledging the task")
    assert outcome.log_contains("Recovered from a transient nats error")


def test_genuine_state_loss_fails_accurately(stack, web, redis_direct, patched_workers, queue_empty):
    job_ids = []
    outcome = run(
        stack, web, redis_direct, queue_empty,
        lambda: job_ids.append(faults.delete_job_state(stack, _running_job_id())),
    )
    print(outcome.summary())
    assert outcome.status == "FAILURE"
    assert outcome.log_contains(
        "marked as FAILURE: Job state keys not found in Redis: they were deleted while the job was running"
    )
    assert not outcome.log_contains("Retries exhausted")
    before_failure = outcome.log[: next(i for i, line in enumerate(outcome.log) if "marked as FAILURE" in line)]
    assert not any("Failed to acknowledge" in line for line in before_failure), "the task is acked before cleanup"
    assert not outcome.stream_exists and outcome.redis_keys == []


def test_outage_longer_than_retry_window_fails_as_exhausted(stack, web, redis_direct, worker_pool, queue_empty):
    # A short retry policy and no client-level retries, so the window is small.
    worker_pool.ensure(PATCHED, BLIPGUARD_MAX_RETRIES="2", BLIPGUARD_BACKOFF_BASE="0.5", BLIPGUARD_BACKOFF_MAX="1",
                       BLIPGUARD_REDIS_RETRIES="0", **PATCHED_ENV)

    def outage_until_the_job_fails():
        # Longer than the retry window by construction: Redis stays down until the job
        # has given up (deadline 120 s), then comes back.
        job_id = _running_job_id()
        stack.redis.stop()
        try:
            wait_until(lambda: _status(job_id) == "FAILURE", 120, f"job {job_id} to give up")
        finally:
            stack.redis.start()

    outcome = run(stack, web, redis_direct, queue_empty, outage_until_the_job_fails)
    print(outcome.summary())
    assert outcome.status == "FAILURE"
    assert outcome.log_contains("marked as FAILURE: Retries exhausted: gave up after 2 retries over")
    assert outcome.log_contains("last cause: redis")
    assert not outcome.log_contains("Job state keys not found")
    assert not outcome.log_contains("Redis state missing")


MALFORMED = {
    0: ["not", "an", "object"],
    1: {"source_images": [{"id": "abc"}], "detections": []},
    2: {"source_images": [{"id": 10**9}], "detections": []},  # an image outside the job
    3: {"source_images": [{"id": None}], "detections": [{"bbox": "x"}]},
}


def test_malformed_results_fail_only_their_image(stack, web, redis_direct, patched_workers, queue_empty):
    def payloads(image_ids):
        return {image_ids[100 + k]: payload for k, payload in MALFORMED.items()}

    outcome = run_job(web.url, redis_direct, N_IMAGES, payloads_at=payloads, settle=queue_empty)
    print(outcome.summary())
    assert outcome.status == "SUCCESS"
    assert outcome.processed == N_IMAGES and outcome.failed == len(MALFORMED)
    invalid = [line for line in outcome.errors if "Invalid result for image" in line]
    assert len(invalid) == len(MALFORMED), outcome.errors
    assert any("must be an integer image id" in line for line in invalid)
    assert any("but the task was for image" in line for line in invalid)
    assert any("result must be a JSON object" in line for line in invalid)
    # Everything else arrived exactly once.
    assert outcome.duplicate_detections == 0
    assert outcome.detections == outcome.detections_counter


def _status(job_id: int) -> str:
    from ami.jobs.models import Job

    return Job.objects.get(pk=job_id).status


def _running_job_id() -> int:
    from ami.jobs.models import Job

    return Job.objects.filter(status="STARTED").order_by("-pk").values_list("pk", flat=True).first()
