"""The Sentry event processor and the per-blip limit (pure parts, no board: one process).
The real SDK posting from real workers is tests/observability/test_sentry.py."""

import logging

import pytest
import redis

from blipguard.app_patch import context, sentry
from blipguard.app_patch.scrub import scrub


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(sentry, "_local_sent", {"streaks": {}, "sent": []})


def record(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, None) if exc else None
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, (), exc_info)


def test_one_report_per_blip_until_a_quiet_success():
    key, first = sentry.claim_blip("redis", now=100.0)
    assert first and key == "redis-100000"
    assert sentry.claim_blip("redis", now=101.0) == (key, False)
    sentry.on_success(now=105.0)  # a result finishing as Redis went down: same blip
    assert sentry.claim_blip("redis", now=106.0) == (key, False)
    assert sentry.claim_blip("nats", now=106.0)[1], "another dependency is another blip"
    sentry.on_success(now=120.0)  # quiet for QUIET seconds: the blip is over
    key2, first2 = sentry.claim_blip("redis", now=130.0)
    assert first2 and key2 != key


def test_the_operator_blip_id_names_the_blip(monkeypatch):
    monkeypatch.setattr(sentry.board, "paused_for",
                        lambda now=None: {"dependency": "redis", "reason": "blip redis-42: pod restarted", "until": 1e12})
    assert sentry.claim_blip("redis", now=1.0) == ("redis-42", True)
    assert sentry.claim_blip("redis", now=50.0) == ("redis-42", False)


def test_the_job_loggers_own_copy_is_dropped():
    assert sentry.process_event({"message": "x"}, {"log_record": record("ami.jobs.12", "x")}) is None
    kept = sentry.process_event({"message": "x"}, {"log_record": record("ami.jobs.models", "x")})
    assert kept is not None


def test_a_swallowed_transient_error_logged_without_traceback_is_a_transient_event():
    run = context.TaskRun(job_id=7)
    run.transient = redis.ConnectionError("Connection reset by peer")
    with context.running(run):
        event = sentry.process_event({"level": "error"}, {"log_record": record(
            "ami.jobs.models", "Error processing pipeline result for job 7: Connection reset by peer")})
        assert event["fingerprint"] == ["blipguard", "transient", "redis"] and event["level"] == "warning"
        assert event["tags"]["blipguard.kind"] == "transient" and event["contexts"]["blipguard"]["job_id"] == 7
        again = sentry.process_event({"level": "error"}, {"log_record": record("ami.jobs.models", "same blip")})
        assert again is None, "one event per worker per blip"


def test_the_hosts_failure_line_after_a_terminal_report_is_dropped():
    run = context.TaskRun(job_id=7)
    line = record("ami.jobs.models", "Job 7 marked as FAILURE: Redis state missing for job")
    with context.running(run):
        tagged = sentry.process_event({}, {"log_record": line})
        assert tagged["fingerprint"] == ["blipguard", "terminal", "state_missing"]
        run.terminal_reported = True
        assert sentry.process_event({}, {"log_record": line}) is None


def test_secrets_and_payloads_are_scrubbed_everywhere():
    event = {
        "extra": {"celery-job": {"task_name": "t", "args": [1, {"detections": "PAYLOAD"}], "kwargs": {"r": "PAYLOAD"}}},
        "request": {"data": {"results": "PAYLOAD"}, "headers": {"Authorization": "Token SECRET"}},
        "exception": {"values": [{"value": "cannot connect to amqp://user:SECRET@rabbit:5672//"}]},
        "breadcrumbs": {"values": [{"message": "redis://:SECRET@redis:6379/0 down", "data": {"password": "SECRET"}}]},
    }
    out = scrub(event)
    assert "PAYLOAD" not in repr(out) and "SECRET" not in repr(out)
    assert out["extra"]["celery-job"]["task_name"] == "t"
    assert "amqp://user:[Filtered]@rabbit:5672//" in out["exception"]["values"][0]["value"]


def test_the_apis_reserve_failures_are_one_transient_nats_event_per_blip():
    line = record("ami.ml.orchestration.nats_queue", "Failed to reserve tasks for job '4': ")
    first = sentry.process_event({"level": "error"}, {"log_record": line})
    assert first["fingerprint"] == ["blipguard", "transient", "nats"] and first["level"] == "warning"
    assert sentry.process_event({"level": "error"}, {"log_record": line}) is None


def test_a_long_gap_starts_a_new_blip_where_no_result_ends_it():
    key, _ = sentry.claim_blip("nats", now=0.0)
    assert sentry.claim_blip("nats", now=100.0) == (key, False)
    assert sentry.claim_blip("nats", now=100.0 + sentry.GAP + 1)[1]


def test_celerys_redis_backend_reconnect_lines_are_one_transient_redis_event_per_blip():
    line = logging.LogRecord("celery.backends.redis", logging.ERROR, __file__, 1,
                             "Connection to Redis lost: Retry (%s/%s) %s.", (0, 20, "now"), None)
    first = sentry.process_event({"level": "error"}, {"log_record": line})
    assert first["fingerprint"] == ["blipguard", "transient", "redis"] and first["level"] == "warning"
    assert sentry.process_event({"level": "error"}, {"log_record": line}) is None


def test_a_transient_error_in_the_progress_write_is_noted_for_the_line_the_host_logs(monkeypatch):
    """The pre-fix body swallows an error after its ack and logs only its text: an error from
    the patched progress write (its count mark's Redis) must be noted, or that ERROR line
    becomes an unclassified event of its own."""
    import contextlib

    import redis

    from blipguard.app_patch import context, patcher

    def host_update_job_progress(job_id, stage, progress_percentage, complete_state=None, **state_params):
        raise redis.exceptions.ConnectionError("Connection closed by server.")

    monkeypatch.setattr(patcher, "progress_lock", lambda job_id: contextlib.nullcontext())
    wrapped = patcher._wrap_update_progress(host_update_job_progress, host=None)
    run = context.TaskRun(job_id=1)
    with context.running(run), pytest.raises(redis.exceptions.ConnectionError):
        wrapped(1, "results", 0.5, complete_state="SUCCESS")
    assert isinstance(run.transient, redis.exceptions.ConnectionError)
