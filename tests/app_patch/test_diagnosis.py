"""explain(): on-call read *why* the job's state is gone, not just that it is."""

import pytest

from blipguard.app_patch.diagnosis import EVICTING_POLICIES, MissingStateFacts, explain
from blipguard.app_patch.errors import JobStateMissing

WEEK = 7 * 86400.0
HOUR = 3600.0

DEFAULT_WHY = "they were deleted while the job was running (likely cleaned up concurrently)"


def facts(**overrides) -> MissingStateFacts:
    """A running job, an hour old, 7-day TTL, healthy non-evicting Redis up for a week."""
    base = dict(
        job_status="STARTED",
        job_age=HOUR,
        state_ttl=WEEK,
        evicted_keys=0,
        maxmemory_policy="noeviction",
        redis_uptime=WEEK,
    )
    return MissingStateFacts(**{**base, **overrides})


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "REVOKED", "CANCELED", "CANCELLED", "success", "Revoked"])
def test_finished_job(status):
    why = explain(facts(job_status=status))
    assert "already finished or was cancelled" in why
    assert status in why


def test_finished_job_wins_over_every_other_explanation():
    why = explain(
        facts(job_status="SUCCESS", job_age=2 * WEEK, evicted_keys=10, maxmemory_policy="allkeys-lru", redis_uptime=1)
    )
    assert "already finished" in why


@pytest.mark.parametrize("status", ["STARTED", "PENDING", "RETRY", "CANCELING", None, ""])
def test_running_or_unknown_status_is_not_called_finished(status):
    assert "finished" not in explain(facts(job_status=status))


def test_ttl_outlived():
    why = explain(facts(job_age=8 * 86400.0))
    assert why.startswith("the keys outlived their TTL")
    assert "7.0 days" in why and "8.0 days" in why


def test_ttl_outlived_exactly_at_the_ttl():
    assert "outlived their TTL" in explain(facts(job_age=WEEK))


def test_ttl_not_outlived_just_before_it():
    assert "TTL" not in explain(facts(job_age=WEEK - 1))


@pytest.mark.parametrize("ttl", [None, 0])
def test_unknown_ttl_is_never_blamed(ttl):
    assert "TTL" not in explain(facts(job_age=10 * WEEK, state_ttl=ttl))


def test_unknown_job_age_blames_neither_ttl_nor_restart():
    assert explain(facts(job_age=None, redis_uptime=1.0)) == DEFAULT_WHY


def test_ttl_outlived_wins_over_eviction():
    why = explain(facts(job_age=2 * WEEK, evicted_keys=5, maxmemory_policy="allkeys-lru"))
    assert "TTL" in why and "evicted" not in why


def test_eviction_under_allkeys_lru():
    why = explain(facts(evicted_keys=1234, maxmemory_policy="allkeys-lru"))
    assert why.startswith("Redis evicted keys under maxmemory-policy allkeys-lru")
    assert "1234 evicted" in why
    assert "cannot be evicted" in why  # tells on-call what to do


@pytest.mark.parametrize("policy", sorted(EVICTING_POLICIES))
def test_every_evicting_policy_is_recognised(policy):
    assert f"maxmemory-policy {policy}" in explain(facts(evicted_keys=3, maxmemory_policy=policy))


def test_noeviction_policy_is_never_blamed_even_with_an_eviction_count():
    why = explain(facts(evicted_keys=50, maxmemory_policy="noeviction"))
    assert "evicted" not in why
    assert why == DEFAULT_WHY


def test_noeviction_falls_through_to_a_restart_when_there_was_one():
    why = explain(facts(evicted_keys=50, maxmemory_policy="noeviction", redis_uptime=60.0))
    assert "evicted" not in why and "restarted" in why


@pytest.mark.parametrize("evicted", [0, None])
def test_evicting_policy_without_evictions_is_not_blamed(evicted):
    assert explain(facts(evicted_keys=evicted, maxmemory_policy="allkeys-lru")) == DEFAULT_WHY


def test_unknown_policy_is_not_blamed():
    assert explain(facts(evicted_keys=9, maxmemory_policy=None)) == DEFAULT_WHY


def test_restart_after_the_job_started():
    why = explain(facts(job_age=HOUR, redis_uptime=300.0))
    assert why.startswith("Redis restarted 5 min ago, after the job started")
    assert "persistence" in why


def test_restart_before_the_job_started_is_not_blamed():
    assert explain(facts(job_age=HOUR, redis_uptime=2 * HOUR)) == DEFAULT_WHY


def test_unknown_uptime_is_not_blamed():
    assert explain(facts(redis_uptime=None)) == DEFAULT_WHY


def test_default_is_deleted_while_running():
    assert explain(facts()) == DEFAULT_WHY


def test_nothing_known_gives_the_default():
    assert explain(MissingStateFacts()) == DEFAULT_WHY


@pytest.mark.parametrize(
    "uptime, shown",
    [(5.0, "5 s"), (119.0, "119 s"), (120.0, "2 min"), (3 * HOUR, "3.0 h"), (3 * 86400.0, "3.0 days")],
)
def test_durations_are_human_readable(uptime, shown):
    why = explain(facts(job_age=10 * 86400.0, state_ttl=30 * 86400.0, redis_uptime=uptime))
    assert f"Redis restarted {shown} ago" in why


def test_job_state_missing_message_reads_as_one_sentence():
    e = JobStateMissing(17, explain(facts(redis_uptime=30.0)))
    assert str(e).startswith("Job state keys not found in Redis: Redis restarted 30 s ago")
    assert e.job_id == 17
