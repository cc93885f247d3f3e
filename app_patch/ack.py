"""A NATS JetStream ack that the server confirms (a "double ack").

The host acks with a plain publish and a flush: the message can be lost on the way and
nobody knows until ``ack_wait`` runs out and JetStream redelivers. The patched
``acknowledge_task`` sends ``+ACK`` as a request and waits for JetStream's reply; it keeps
the host's contract (returns a bool, raises only when there is no connection).
"""

from __future__ import annotations

import logging
import re
import time

from . import context
from .classify import classify
from .errors import describe

logger = logging.getLogger(__name__)

ACK = b"+ACK"
ACK_AGAIN = (0.2, 0.5)  # seconds before each inline re-ack (result_task.py): a Celery retry waits behind the queue
# $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>
# and the newer $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<...same...>.<token>
_V1 = re.compile(r"^\$JS\.ACK\.([^.]+)\.([^.]+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)$")
_V2 = re.compile(r"^\$JS\.ACK\.[^.]+\.[^.]+\.([^.]+)\.([^.]+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)\.(\d+)(\.[^.]+)?$")


def stream_and_seq(reply_subject: str) -> tuple[str, int] | None:
    """(stream, stream sequence) of the message a JetStream reply subject acks."""
    if not isinstance(reply_subject, str):
        return None
    m = _V1.match(reply_subject) or _V2.match(reply_subject)
    return (m.group(1), int(m.group(4))) if m else None


def ack_time_left(run, ack_timeout: float) -> float:
    """Seconds left of this run's ack time: its acks (the host's helper, its connect
    included) and the pauses before the inline re-acks share one ack timeout, as the retry
    fit counts them. Time spent acking, not since the first ack: on the pre-fix platform
    the results stage runs between the first ack and the re-acks. (The first request
    always gets the whole timeout, so a slow connect can overrun it by the host's
    connect_timeout.)"""
    running = time.monotonic() - run.ack_call_started if run.ack_call_started is not None else 0.0
    return ack_timeout - run.ack_spent - running


async def confirmed_ack(nc, reply_subject: str, timeout: float) -> None:
    """Ack and wait for JetStream's reply; raises what the request raised."""
    await nc.request(reply_subject, ACK, timeout=timeout)


def make_acknowledge_task(timeout_getter):
    """A drop-in for the host queue manager's ``async acknowledge_task(self, reply_subject) -> bool``."""

    async def acknowledge_task(self, reply_subject: str) -> bool:
        if self.nc is None:
            raise RuntimeError("Connection is not open. Use TaskQueueManager as an async context manager.")
        run = context.current()
        timeout = timeout_getter()
        if run is not None:
            if run.ack_requested:
                timeout = ack_time_left(run, timeout)
                if timeout < 0.05:
                    run.ack_unconfirmed = "no time left for another ack in this run (its acks share one ack timeout)"
                    logger.warning("Failed to acknowledge task: %s", run.ack_unconfirmed)
                    return False
            run.ack_requested = True
        try:
            await confirmed_ack(self.nc, reply_subject, timeout)
        except Exception as e:  # noqa: BLE001 - the host's contract: False, never an exception
            if run is not None:
                run.ack_unconfirmed = describe(e)
            level = logging.WARNING if classify(e).transient else logging.ERROR
            logger.log(level, "Failed to acknowledge task: %s", describe(e))
            return False
        if run is not None:
            run.ack_unconfirmed = None
        return True

    return acknowledge_task


def wrap_ack_helper(original):
    """The host's ``_ack_task_via_nats``: it never raises and says nothing (pre-fix) or a
    bool; a failed connect never reaches ``acknowledge_task``. Note any unconfirmed ack,
    and the time the call took (the host's connect included: ``ack_time_left``)."""

    def _ack_task_via_nats(reply_subject, job_logger, *args, **kwargs):
        run = context.current()
        if run is not None:
            run.ack_unconfirmed = "not attempted"
            run.ack_attempted = True
            run.ack_call_started = time.monotonic()
        try:
            result = original(reply_subject, job_logger, *args, **kwargs)
        finally:
            if run is not None and run.ack_call_started is not None:
                run.ack_spent += time.monotonic() - run.ack_call_started
                run.ack_call_started = None
        if run is not None and run.ack_unconfirmed == "not attempted":
            # Only a confirmed ack clears the mark: an exception inside the helper (a
            # failed connect, say) was caught and logged by the host.
            run.ack_unconfirmed = "the ack helper failed before JetStream could confirm"
        return result

    return _ack_task_via_nats
