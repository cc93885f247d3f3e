"""One run's acks share one ack timeout, so the retry policy can be fitted to it."""

import asyncio
import time

from blipguard.app_patch import context
from blipguard.app_patch.ack import ACK_AGAIN, make_acknowledge_task


class SlowConnection:
    """A NATS connection whose requests never get a reply (a reset that left the request hanging)."""

    def __init__(self):
        self.timeouts: list[float] = []

    async def request(self, subject, payload, timeout):
        self.timeouts.append(timeout)
        await asyncio.sleep(timeout)
        raise asyncio.TimeoutError()


class Manager:
    def __init__(self, nc):
        self.nc = nc


def test_the_acks_of_one_run_share_one_ack_timeout():
    nc = SlowConnection()
    ack = make_acknowledge_task(lambda: 0.3)
    run = context.TaskRun(7, delivery="d1")
    with context.running(run):
        assert asyncio.run(ack(Manager(nc), "$JS.ACK.job_7.job-7-consumer.1.1.1.1.0")) is False
        assert asyncio.run(ack(Manager(nc), "$JS.ACK.job_7.job-7-consumer.1.1.1.1.0")) is False
    assert len(nc.timeouts) == 1, "the second ack must not wait for JetStream again"
    assert nc.timeouts[0] <= 0.3 + 1e-6
    assert "no time left" in run.ack_unconfirmed


def test_a_new_run_gets_its_own_ack_time():
    nc = SlowConnection()
    ack = make_acknowledge_task(lambda: 0.2)
    for delivery in ("d1", "d1"):  # a Celery retry is a new run of the same delivery
        with context.running(context.TaskRun(7, delivery=delivery)):
            asyncio.run(ack(Manager(nc), "$JS.ACK.job_7.job-7-consumer.1.1.1.1.0"))
    assert len(nc.timeouts) == 2 and all(t > 0.15 for t in nc.timeouts)


class Host:
    """The host's ack helper: each call takes ``seconds`` and is never confirmed."""

    def __init__(self, run, seconds):
        self.run, self.seconds, self.calls = run, seconds, 0

    def job_logger(self, job_id):
        import logging

        return logging.getLogger("test.job")

    def helper(self, name):
        def ack(reply_subject, job_logger):
            self.calls += 1
            time.sleep(self.seconds)
            self.run.ack_unconfirmed = "nats: timeout"

        return ack


def test_inline_re_acks_stop_when_the_runs_ack_time_is_up():
    from blipguard.app_patch.errors import TransientDependencyError
    from blipguard.app_patch.result_task import _ack_again

    cause = TransientDependencyError("nats", "nats: timeout", "acknowledging the task")
    fast = context.TaskRun(7, ack_ends=time.monotonic() + 10)
    host = Host(fast, 0.0)
    assert _ack_again(host, 7, "subject", fast, cause) is False and host.calls == len(ACK_AGAIN)
    spent = context.TaskRun(7, ack_ends=time.monotonic() + 0.1)  # the first ack used its time
    host = Host(spent, 0.0)
    assert _ack_again(host, 7, "subject", spent, cause) is False and host.calls == 0
