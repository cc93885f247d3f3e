"""Reading a JetStream ack reply subject back into (stream, stream sequence)."""

import asyncio

import pytest
from nats import errors as nats_errors
from nats.aio.msg import Msg

from blipguard.app_patch import context
from blipguard.app_patch.ack import ACK, confirmed_ack, make_acknowledge_task, stream_and_seq, wrap_ack_helper

TS = 1764430000123456789

V1 = f"$JS.ACK.job_12.job-12-consumer.3.4021.17.{TS}.9"
V2 = f"$JS.ACK.hub.ACCHASH4Q7.job_12.job-12-consumer.3.4021.17.{TS}.9.Xr7kL2pQ"


def nats_py_reading(subject: str) -> tuple[str, int]:
    """The same subject as nats-py itself reads it."""
    md = Msg.Metadata._from_reply(subject)
    return md.stream, md.sequence.stream


def test_v1_subject():
    assert stream_and_seq(V1) == ("job_12", 4021)


def test_v2_subject_with_domain_account_hash_and_token():
    assert stream_and_seq(V2) == ("job_12", 4021)


def test_v2_subject_without_the_trailing_token():
    assert stream_and_seq(V2.rsplit(".", 1)[0]) == ("job_12", 4021)


def test_v2_subject_with_no_domain():
    assert stream_and_seq(f"$JS.ACK._.ACCHASH.jobs.worker.1.77.5.{TS}.0.tok") == ("jobs", 77)


@pytest.mark.parametrize(
    "subject",
    [
        V1,
        V2,
        V2.rsplit(".", 1)[0],
        f"$JS.ACK._.HASH.S.C.1.1.1.{TS}.0.t",
        f"$JS.ACK.S.C.1.18446744073709551615.2.{TS}.0",
        f"$JS.ACK.ml-results.pull_1.12.9.8.{TS}.7",
    ],
)
def test_agrees_with_nats_py(subject):
    assert stream_and_seq(subject) == nats_py_reading(subject)


def test_stream_sequence_is_not_confused_with_the_other_counters():
    # delivered=1, stream seq=2, consumer seq=3, pending=5: only 2 is the stream sequence.
    assert stream_and_seq("$JS.ACK.s.c.1.2.3.4.5") == ("s", 2)
    assert stream_and_seq("$JS.ACK.d.h.s.c.1.2.3.4.5.t") == ("s", 2)


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "_INBOX.abc123",
        "$JS.ACK",
        "$JS.ACK.s.c.1.2.3",  # too short
        "$JS.ACK.s.c.1.2.3.4",  # 8 tokens
        "$JS.ACK.s.c.1.2.3.4.5.6",  # 10 tokens: neither form
        "$JS.ACK.s.c.1.x.3.4.5",  # sequence not a number
        "$JS.ACK.s.c.1.-2.3.4.5",
        "$JS.NAK.s.c.1.2.3.4.5",
        "$JS.API.STREAM.INFO.s",
        "JS.ACK.s.c.1.2.3.4.5",
        "$JS.ACK.s.c.1.2.3.4.5 ",
        "$JS.ACK.s..1.2.3.4.5",  # empty consumer token
    ],
    ids=repr,
)
def test_non_ack_subjects_give_none(subject):
    assert stream_and_seq(subject) is None


@pytest.mark.parametrize("subject", [None, b"$JS.ACK.s.c.1.2.3.4.5", 42])
def test_non_string_gives_none(subject):
    assert stream_and_seq(subject) is None


class FakeNats:
    """Records requests; fails with `error` when one is set."""

    def __init__(self, error: BaseException | None = None):
        self.error = error
        self.requests = []

    async def request(self, subject, payload, timeout):
        self.requests.append((subject, payload, timeout))
        if self.error is not None:
            raise self.error
        return object()


def test_confirmed_ack_requests_a_reply_on_the_ack_subject():
    nc = FakeNats()
    asyncio.run(confirmed_ack(nc, V1, 5.0))
    assert nc.requests == [(V1, ACK, 5.0)]
    assert ACK == b"+ACK"


@pytest.mark.parametrize(
    "error", [nats_errors.TimeoutError(), nats_errors.NoRespondersError(), nats_errors.ConnectionClosedError()]
)
def test_unconfirmed_ack_keeps_the_hosts_contract_and_is_noted(error):
    """The host's acknowledge_task returns False on failure (never raises); the task run
    notes why, so the wrapper can retry the ack."""
    acknowledge_task = make_acknowledge_task(lambda: 5.0)
    manager = type("Manager", (), {"nc": FakeNats(error)})()
    run = context.TaskRun(job_id=7)
    with context.running(run):
        assert asyncio.run(acknowledge_task(manager, V1)) is False
    assert run.ack_unconfirmed and type(error).__name__ in run.ack_unconfirmed


def test_confirmed_ack_clears_the_mark():
    acknowledge_task = make_acknowledge_task(lambda: 5.0)
    manager = type("Manager", (), {"nc": FakeNats()})()
    run = context.TaskRun(job_id=7, ack_unconfirmed="not attempted")
    with context.running(run):
        assert asyncio.run(acknowledge_task(manager, V1)) is True
    assert run.ack_unconfirmed is None


def test_no_connection_raises_like_the_host():
    manager = type("Manager", (), {"nc": None})()
    with pytest.raises(RuntimeError, match="Connection is not open"):
        asyncio.run(make_acknowledge_task(lambda: 5.0)(manager, V1))


def test_ack_helper_wrapper_notes_a_failure_the_helper_swallowed():
    def host_helper(reply_subject, job_logger):
        return None  # pre-fix: the connect failed, the helper logged it and returned None

    run = context.TaskRun(job_id=7)
    with context.running(run):
        assert wrap_ack_helper(host_helper)(V1, None) is None
    assert run.ack_unconfirmed


def test_acknowledge_task_drop_in_uses_the_current_timeout():
    timeouts = iter([2.0, 7.0])
    acknowledge_task = make_acknowledge_task(lambda: next(timeouts))
    manager = type("Manager", (), {"nc": FakeNats()})()
    assert asyncio.run(acknowledge_task(manager, V1)) is True
    assert asyncio.run(acknowledge_task(manager, V2)) is True
    assert manager.nc.requests == [(V1, ACK, 2.0), (V2, ACK, 7.0)]
