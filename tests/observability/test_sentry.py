"""Sentry events from the real result path, posted by the real SDK to a local envelope
endpoint, with the host's full ``sentry_sdk.init`` (Django, Celery, Redis and Logging
integrations, error-level log lines as events: fact sheet §10).

Two prefork worker hosts and the API (in this process, as the patched app's ``ready()``
sets it up) report to the endpoint. A carried Redis outage yields transient events (at most
one per worker per blip), genuine state loss a terminal one, each with its own fingerprint,
level and tags; a planted broker password, API token and payload marker appear nowhere.
"""

import collections
import re

import pytest

from blipguard.app_patch import sentry as patch_sentry
from blipguard.harness.jobrun import run_job
from blipguard.harness.simulator import fake_result
from blipguard.localstack import faults
from blipguard.localstack.sentry_sink import SentrySink

pytestmark = [pytest.mark.observability, pytest.mark.stack]

BROKER_PASSWORD = "brokercanary7f3a"
PAYLOAD_MARKER = "payloadcanary91c2"
ENV = {"BLIPGUARD_SOCKET_TIMEOUT": "1", "BLIPGUARD_CONNECT_TIMEOUT": "1", "BLIPGUARD_REDIS_RETRIES": "0"}


def host_init(dsn: str) -> None:
    """What the platform's settings do (config/settings/base.py of the reference app)."""
    import logging

    import sentry_sdk
    from sentry_sdk.integrations.celery import CeleryIntegration
    from sentry_sdk.integrations.django import DjangoIntegration
    from sentry_sdk.integrations.logging import LoggingIntegration
    from sentry_sdk.integrations.redis import RedisIntegration

    sentry_sdk.init(dsn=dsn, integrations=[LoggingIntegration(level=logging.INFO, event_level=logging.ERROR),
                                           DjangoIntegration(), CeleryIntegration(), RedisIntegration()],
                    traces_sample_rate=0.0)


@pytest.fixture
def sink(stack, worker_pool, platform):
    import sentry_sdk

    stack.rabbitmq.ctl("add_user", "canary", BROKER_PASSWORD)
    stack.rabbitmq.ctl("set_permissions", "-p", "/", "canary", ".*", ".*", ".*")
    broker = re.sub(r"//[^@/]*@", f"//canary:{BROKER_PASSWORD}@", stack.rabbitmq.url)
    assert BROKER_PASSWORD in broker
    with SentrySink() as s:
        host_init(s.dsn)
        patch_sentry.setup()  # the API process runs the patched app's ready() too
        worker_pool.ensure(platform.patched_settings, count=2, concurrency=2, **ENV,
                           SENTRY_DSN=s.dsn, CELERY_BROKER_URL=broker)
        try:
            yield s
        finally:
            sentry_sdk.flush(5)
            sentry_sdk.init()  # no DSN: this process stops reporting
            worker_pool.stop()
            stack.rabbitmq.ctl("delete_user", "canary")
    assert not s.errors, s.errors


def ours(events, kind: str) -> list[dict]:
    return [e for e in events if (e.get("fingerprint") or [None, None])[:2] == ["blipguard", kind]]


def host_cleanup_race(event: dict) -> bool:
    """The host's own second cleanup of a finished job: two result tasks can both see the job complete and both
    delete its stream; the later one logs ERROR 'Failed to delete NATS consumer ... stream not found'. That race is
    the platform's (it fires cleanup after the transaction, with no claim), blip or no blip; not the outage's."""
    message = (event.get("logentry") or {}).get("message") or event.get("message") or ""
    return message.startswith("Failed to delete NATS") and "not found" in message


def marked(ids):
    return {i: {**fake_result(i), "note": PAYLOAD_MARKER} for i in ids}


def no_canary(sink: SentrySink, token: str) -> None:
    raw = sink.raw()
    assert raw, "nothing was sent: the canary check would prove nothing"
    for canary in (BROKER_PASSWORD, PAYLOAD_MARKER, token):
        assert canary.encode() not in raw, f"{canary!r} was sent to Sentry"


def test_a_carried_outage_is_one_transient_issue_at_most_one_event_per_worker(sink, stack, web, redis_direct,
                                                                               platform):
    outcome = run_job(web.url, redis_direct, 120, fault=lambda: faults.redis_down_for(stack, 4.0).join(),
                      fault_at=0.3, payloads_at=marked,
                      settle=lambda: stack.rabbitmq.queue_depth(platform.result_queue) == 0)
    print(outcome.summary())
    assert outcome.status == "SUCCESS"
    sink.wait_for(lambda ev: [e for e in ours(ev, "transient") if e["tags"].get("blipguard.worker")], 30,
                  "a worker's transient event")
    events = sink.events()
    transient = ours(events, "transient")
    from_workers = [e for e in transient if e["tags"].get("blipguard.worker")]
    for e in from_workers:
        assert e["fingerprint"] == ["blipguard", "transient", "redis"]
        assert e["level"] == "warning"
        tags = e["tags"]
        assert tags["blipguard.kind"] == "transient" and tags["blipguard.dependency"] == "redis"
        assert tags["blipguard.blip_active"] == "true" and tags["blipguard.retries"].isdigit()
        assert tags["blipguard.stage"] in ("process", "results", "ack", "other")
        assert not any("job" in k for k in tags), "the job id is context, not a tag"
        if "celery_task_id" in tags:  # a result task's (the worker's main process has no job)
            assert e["contexts"]["blipguard"]["job_id"] == outcome.job_id
    # Every event the workers' result tasks sent is that one issue.
    from_tasks = [e for e in events if "celery_task_id" in (e.get("tags") or {}) and not host_cleanup_race(e)]
    assert from_tasks and all(e in from_workers for e in from_tasks), \
        [(e.get("message") or e.get("logentry"), e.get("fingerprint"), e.get("tags"))
         for e in from_tasks if e not in from_workers][:5]
    per_worker = collections.Counter(e["tags"]["blipguard.worker"] for e in from_workers)
    assert max(per_worker.values()) == 1, per_worker
    # The API (this process) meets the outage too: its NATS reserve calls time out while
    # its requests wait on Redis. At most one event per dependency for this blip.
    from_api = collections.Counter(e["fingerprint"][2] for e in transient if e not in from_workers)
    assert all(n == 1 for n in from_api.values()), from_api
    assert not ours(events, "terminal")
    assert not [e for e in events if re.match(r"ami\.jobs\.\d+$", e.get("logger") or "")], \
        "a job-log line must not be captured twice (job logger and its re-log)"
    from blipguard.harness import seed
    no_canary(sink, token_of(seed))


def token_of(seed) -> str:
    from ami.jobs.models import Job

    return seed.processing_service_token(Job.objects.order_by("-pk").first().project)


def test_genuine_state_loss_is_one_terminal_issue(sink, stack, web, redis_direct, platform):
    def lose_state():
        from ami.jobs.models import Job

        faults.delete_job_state(stack, Job.objects.order_by("-pk").values_list("pk", flat=True).first())

    outcome = run_job(web.url, redis_direct, 40, fault=lose_state, fault_at=0.3, payloads_at=marked,
                      settle=lambda: stack.rabbitmq.queue_depth(platform.result_queue) == 0)
    assert outcome.status == "FAILURE"
    terminal = sink.wait_for(lambda ev: ours(ev, "terminal"), 30, "a terminal event")
    for e in terminal:
        assert e["fingerprint"] == ["blipguard", "terminal", "state_missing"]
        assert e["level"] == "error"
        assert e["tags"]["blipguard.kind"] == "terminal" and e["tags"]["blipguard.reason"] == "state_missing"
        assert e["tags"]["blipguard.blip_active"] == "false"
        assert e["contexts"]["blipguard"]["job_id"] == outcome.job_id
    events = sink.events()
    assert not ours(events, "transient")
    doubled = [e for e in events if "marked as FAILURE" in str(e.get("logentry") or e.get("message"))
               and e not in terminal]
    assert not doubled, "the host's failure line duplicates the terminal event"
    from blipguard.harness import seed
    no_canary(sink, token_of(seed))
