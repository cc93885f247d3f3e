"""The production incident, reproduced on the pre-fix reference app and real servers.

These tests prove the baseline: they fail if the reference app's bug is fixed.
"""

import pytest

from blipguard.harness.jobrun import run_job
from blipguard.localstack import faults

pytestmark = pytest.mark.incident

N_IMAGES = 840
MISLEADING = "Redis state missing for job"


@pytest.fixture
def prefix_workers(worker_pool):
    return worker_pool.ensure("refsite.settings")


def test_fault_free_job_succeeds(web, redis_direct, prefix_workers, queue_empty):
    outcome = run_job(web.url, redis_direct, N_IMAGES, settle=queue_empty)
    print(outcome.summary())
    assert outcome.status == "SUCCESS", outcome.log[-5:]
    assert (outcome.processed, outcome.failed, outcome.results_processed) == (N_IMAGES, 0, N_IMAGES)
    assert outcome.detections == outcome.expected_detections
    assert not outcome.errors


def _assert_killed_like_production(outcome, state_must_be_gone: bool):
    print(outcome.summary())
    assert outcome.fault_fired_at is not None and outcome.fault_fired_at >= 0.3
    assert outcome.status == "FAILURE"
    assert outcome.log_contains(f"marked as FAILURE: {MISLEADING}")
    # The real cause never reached the job's own log: users saw only the misleading line.
    assert not outcome.log_contains("Connection reset by peer")
    assert not outcome.log_contains("Error while reading")
    assert outcome.processed < N_IMAGES
    assert outcome.failed == 0
    assert not outcome.stream_exists, "the NATS stream should have been deleted"
    assert not outcome.stream_lost_while_running  # deleted by _fail_job, as the job ended
    if state_must_be_gone:
        assert outcome.redis_keys == []


def test_inflight_reset_kills_the_job(stack, web, redis_direct, prefix_workers, queue_empty):
    resets_before = stack.redis_proxy.resets_fired
    outcome = run_job(
        web.url, redis_direct, N_IMAGES, fault=lambda: faults.inflight_reset(stack), fault_at=0.3, settle=queue_empty
    )
    _assert_killed_like_production(outcome, state_must_be_gone=True)
    assert stack.redis_proxy.resets_fired - resets_before == 1, "one reset, as in production"


def test_redis_restart_kills_the_job(stack, web, redis_direct, prefix_workers, queue_empty):
    outcome = run_job(
        web.url,
        redis_direct,
        N_IMAGES,
        fault=lambda: faults.redis_down_for(stack, 2.0).join(),
        fault_at=0.3,
        settle=queue_empty,
    )
    # While Redis is down, _fail_job's own cleanup of the Redis keys fails too, so the
    # state may survive the restart; the NATS stream is gone either way.
    _assert_killed_like_production(outcome, state_must_be_gone=False)
