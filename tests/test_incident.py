"""The production incident, reproduced on the reference app and real servers.

PRE (``--platform pre-fix``): these tests prove the baseline: they fail if the reference
app's bug is fixed. HEAD (``--platform current``), unpatched: the fault-free job still
succeeds and HEAD's own autoretry carries an in-flight reset.
"""

import time

import pytest

from blipguard.harness.jobrun import run_job
from blipguard.localstack import faults
from blipguard.localstack.procs import wait_until

pytestmark = pytest.mark.incident

N_IMAGES = 840  # the incident's job
FAULT_FREE_IMAGES = 300  # the pre-fix platform saves ~6 results/s here: keep the baseline short
MISLEADING = "Redis state missing for job"


@pytest.fixture
def unpatched_workers(worker_pool, platform):
    # The current platform reads the job with a plain get() in _update_job_progress, so two
    # concurrent progress writes can lose one, and losing the last leaves the job STARTED
    # until its reaper. One worker process keeps its baseline runs deterministic (the
    # patched runs use two workers of two: the patch serializes progress writes).
    if platform.is_pre:
        return worker_pool.ensure(platform.settings)
    return worker_pool.ensure(platform.settings, count=1, concurrency=1)


def _failure_line_seen(outcome, workers) -> bool:
    """The job log holds the line. At PRE a line can be lost from the stored JSON log when
    another worker rewrites it concurrently (§9); the module logger always has it."""
    text = f"Job {outcome.job_id} marked as FAILURE: {MISLEADING}"
    if outcome.log_contains(text):
        return True
    worker_logs = "".join(workers.logs(h) for h in workers.hostnames)
    return f"ami.jobs.models {text}" in worker_logs


def test_fault_free_job_succeeds(platform, web, redis_direct, unpatched_workers, queue_empty):
    n = FAULT_FREE_IMAGES
    outcome = run_job(web.url, redis_direct, n, settle=queue_empty)
    print(outcome.summary())
    assert outcome.status == "SUCCESS", outcome.log[-5:]
    assert outcome.detections == outcome.expected_detections
    assert outcome.duplicate_detections == 0
    # Stage params are written as passed (§3.4): an older snapshot can land last at both
    # versions, and HEAD's plain get() can also lose a concurrent write.
    assert outcome.failed == 0 and outcome.processed >= n - 4
    assert not outcome.errors


def _assert_killed_like_production(outcome, workers, state_must_be_gone: bool):
    print(outcome.summary())
    assert outcome.fault_fired_at is not None, "the fault must have fired"
    assert outcome.status == "FAILURE"
    assert _failure_line_seen(outcome, workers)
    # The real cause never reached the job's own log: users saw only the misleading line.
    assert not outcome.log_contains("Connection reset by peer")
    assert not outcome.log_contains("Error while reading")
    assert outcome.processed < N_IMAGES
    assert outcome.failed == 0
    assert not outcome.stream_exists, "the NATS stream should have been deleted"
    assert not outcome.stream_lost_while_running  # deleted by _fail_job, as the job ended
    if state_must_be_gone:
        assert outcome.redis_keys == []


@pytest.fixture
def pre_only(platform):
    if not platform.is_pre:
        pytest.skip("the incident kills jobs on the pre-fix platform only")


@pytest.fixture
def head_only(platform):
    if platform.is_pre:
        pytest.skip("HEAD's own autoretry")


def test_inflight_reset_kills_the_job(pre_only, stack, web, redis_direct, unpatched_workers, queue_empty):
    resets_before = stack.redis_proxy.resets_fired
    outcome = run_job(
        web.url, redis_direct, N_IMAGES, fault=lambda: faults.inflight_reset(stack), fault_at=0.3, settle=queue_empty
    )
    _assert_killed_like_production(outcome, unpatched_workers, state_must_be_gone=True)
    assert stack.redis_proxy.resets_fired - resets_before == 1, "one reset, as in production"


def test_redis_restart_kills_the_job(pre_only, platform, stack, web, redis_direct, unpatched_workers, queue_empty):
    def restart(service):
        # As in production, the processing service keeps posting while Redis is down. Redis
        # stays down at least 2 s, and until a result posted meanwhile has been taken off
        # RabbitMQ by a worker, or the job ended: a result task has then run into the outage
        # (between two batches none may run, and the pre-fix workers keep up with the posts).
        posted = service.results_posted
        stack.redis.stop()
        down_at = time.monotonic()
        try:
            wait_until(
                lambda: service.done
                or (service.results_posted > posted and stack.rabbitmq.outstanding(platform.result_queue) == 0),
                60,
                "a result posted during the outage to be taken by a worker",
            )
            time.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))  # the outage's minimum length
        finally:
            stack.redis.start()

    outcome = run_job(
        web.url,
        redis_direct,
        N_IMAGES,
        fault=restart,
        fault_at=0.3,
        settle=queue_empty,
    )
    # While Redis is down, _fail_job's own cleanup of the Redis keys fails too, so the
    # state may survive the restart; the NATS stream is gone either way.
    _assert_killed_like_production(outcome, unpatched_workers, state_must_be_gone=False)


def test_inflight_reset_is_retried_at_head(head_only, stack, web, redis_direct, unpatched_workers, queue_empty):
    """HEAD: the RedisError propagates and autoretry (max 5, backoff <= 15 s) carries it."""
    resets_before = stack.redis_proxy.resets_fired
    outcome = run_job(
        web.url, redis_direct, N_IMAGES, fault=lambda: faults.inflight_reset(stack), fault_at=0.3, settle=queue_empty
    )
    print(outcome.summary())
    assert stack.redis_proxy.resets_fired - resets_before == 1
    assert outcome.fault_fired_at is not None, "the fault must have fired"
    assert outcome.status == "SUCCESS", outcome.log[-5:]
    assert outcome.failed == 0
    assert outcome.detections == outcome.expected_detections
    assert outcome.duplicate_detections == 0
    assert not outcome.log_contains("marked as FAILURE")
    worker_logs = "".join(unpatched_workers.logs(h) for h in unpatched_workers.hostnames)
    assert "Transient Redis error updating job" in worker_logs
