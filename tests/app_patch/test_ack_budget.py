"""One run's acks share one ack timeout, so the retry policy can be fitted to it.

The host's ack helper is a sync function that opens a connection and awaits the queue
manager's ``acknowledge_task``; here a fake helper does the same with a connection whose
requests never get a reply (a reset that left the request hanging), wrapped as the patch
wraps the host's.
"""

import asyncio
import logging
import time
import types

from blipguard.app_patch import context
from blipguard.app_patch.ack import ACK_AGAIN, make_acknowledge_task, wrap_ack_helper
from blipguard.app_patch.errors import TransientDependencyError
from blipguard.app_patch.result_task import _ack_again

SUBJECT = "$JS.ACK.job_7.job-7-consumer.1.1.1.1.0"


class HangingConnection:
    def __init__(self):
        self.timeouts: list[float] = []

    async def request(self, subject, payload, timeout):
        self.timeouts.append(timeout)
        await asyncio.sleep(timeout)
        raise asyncio.TimeoutError()


class FailingFastConnection(HangingConnection):
    async def request(self, subject, payload, timeout):
        self.timeouts.append(timeout)
        raise ConnectionResetError("Connection reset by peer")


def host_helper(nc, ack_timeout: float, before: float = 0.0):
    """The host's ``_ack_task_via_nats`` (``before``: its connect), patched as the patch does."""
    ack = make_acknowledge_task(lambda: ack_timeout)
    manager = types.SimpleNamespace(nc=nc)

    def _ack_task_via_nats(reply_subject, job_logger):
        time.sleep(before)
        return asyncio.run(ack(manager, reply_subject))

    return wrap_ack_helper(_ack_task_via_nats)


class Host:
    def __init__(self, helper, ack_timeout):
        self.helper_fn, self.config = helper, types.SimpleNamespace(ack_timeout=ack_timeout)

    def job_logger(self, job_id):
        return logging.getLogger("test.job")

    def helper(self, name):
        return self.helper_fn


CAUSE = TransientDependencyError("nats", "nats: timeout", "acknowledging the task")


def ack_then_re_ack(nc, ack_timeout: float, between: float = 0.0):
    """One run: the host's ack, ``between`` seconds of other work, then the inline re-acks.
    Returns the run and what the re-acks returned."""
    helper = host_helper(nc, ack_timeout)
    run = context.TaskRun(7, delivery="d1")
    with context.running(run):
        helper(SUBJECT, None)
        time.sleep(between)
        return run, _ack_again(Host(helper, ack_timeout), 7, SUBJECT, run, CAUSE)


def test_a_hanging_ack_uses_the_runs_ack_time_and_is_not_re_acked_inline():
    nc = HangingConnection()
    run, re_acked = ack_then_re_ack(nc, 0.3)
    assert re_acked is False
    assert nc.timeouts == [0.3], "no re-ack may wait for JetStream once the run's ack time is spent"
    assert run.ack_unconfirmed is not None


def test_a_fast_failure_leaves_time_for_the_re_acks_each_given_what_is_left():
    nc = FailingFastConnection()
    _, re_acked = ack_then_re_ack(nc, 5.0)
    assert re_acked is False
    assert len(nc.timeouts) == 1 + len(ACK_AGAIN)
    assert nc.timeouts[0] == 5.0 and all(t < 5.0 - ACK_AGAIN[0] for t in nc.timeouts[1:]), nc.timeouts


def test_time_outside_the_acks_is_not_counted():
    """The pre-fix platform runs its results stage between its ack and the re-acks."""
    nc = FailingFastConnection()
    ack_then_re_ack(nc, 1.0, between=1.0)  # between: the results stage
    assert len(nc.timeouts) == 1 + len(ACK_AGAIN)


def test_the_hosts_connect_counts_but_the_first_request_gets_the_whole_timeout():
    nc = HangingConnection()
    helper = host_helper(nc, 0.3, before=0.2)
    run = context.TaskRun(7, delivery="d1")
    with context.running(run):
        helper(SUBJECT, None)
    assert nc.timeouts == [0.3] and run.ack_spent >= 0.5


def test_a_new_run_gets_its_own_ack_time():
    nc = HangingConnection()
    helper = host_helper(nc, 0.2)
    for _ in range(2):  # a Celery retry is a new run of the same delivery
        with context.running(context.TaskRun(7, delivery="d1")):
            helper(SUBJECT, None)
    assert nc.timeouts == [0.2, 0.2]
