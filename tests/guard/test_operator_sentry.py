"""The operator's Sentry events: what a report becomes (pure), and the real SDK posting it,
scrubbed, to a local envelope endpoint."""

import subprocess
import sys
import textwrap

from blipguard.localstack.sentry_sink import SentrySink
from blipguard.operator import sentry_events
from blipguard.operator.model import ReportReason


def test_one_issue_per_event_and_dependency_with_the_blip_as_a_tag():
    event = sentry_events.event_for("ml", "jobs", ReportReason.BLIP_STARTED, "redis", "redis-1700000000000",
                                    "redis pod cache-0 restarted; pausing 4 workers")
    assert event["fingerprint"] == ["blipguard-operator", "BlipStarted", "redis"]
    assert event["level"] == "warning"
    assert event["tags"]["blipguard.blip"] == "redis-1700000000000" and event["tags"]["blipguard.guard"] == "jobs"
    degraded = sentry_events.event_for("ml", "jobs", ReportReason.DEGRADED, "nats", "nats-1", "max pause reached")
    assert degraded["level"] == "error" and degraded["fingerprint"][1:] == ["Degraded", "nats"]
    assert sentry_events.event_for("ml", "jobs", ReportReason.MODE_CHANGED, None, None, "x") is None


def test_the_real_sdk_posts_a_scrubbed_blip_event():
    # A fresh interpreter: the SDK is process-global.
    with SentrySink() as sink:
        code = textwrap.dedent(f"""
            import sentry_sdk
            from blipguard.operator import sentry_events
            from blipguard.operator.model import ReportReason
            assert sentry_events.setup({sink.dsn!r}, "test")
            sentry_events.report("ml", "jobs", ReportReason.BLIP_STARTED, "redis", "redis-1",
                                 "cannot pause through amqp://guard:brokersecret42@rabbit:5672//")
            sentry_sdk.flush(5)
        """)
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        [event] = sink.wait_for(lambda ev: ev, 10, "the blip event")
        assert event["fingerprint"] == ["blipguard-operator", "BlipStarted", "redis"]
        assert event["tags"]["blipguard.blip"] == "redis-1" and event["environment"] == "test"
        assert b"brokersecret42" not in sink.raw() and "amqp://guard:[Filtered]@" in event["message"]
        assert not sink.errors


def test_no_dsn_no_sentry():
    assert sentry_events.setup(None) is False and sentry_events.setup("") is False
