"""A NATS JetStream ack that the server confirms (a "double ack")."""

import re

from .classify import classify
from .errors import TransientDependencyError

ACK = b"+ACK"
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


async def confirmed_ack(nc, reply_subject: str, timeout: float) -> None:
    """Ack and wait for JetStream's reply; raise TransientDependencyError when it doesn't come."""
    try:
        await nc.request(reply_subject, ACK, timeout=timeout)
    except Exception as e:
        c = classify(e)
        if c.transient:
            raise TransientDependencyError("nats", e, "acknowledging the task") from e
        raise


def make_acknowledge_task(timeout_getter):
    """A drop-in for the host queue manager's ``acknowledge_task(self, reply_subject)``."""

    async def acknowledge_task(self, reply_subject: str) -> bool:
        await confirmed_ack(self.nc, reply_subject, timeout_getter())
        return True

    acknowledge_task.blipguard_patched = True
    return acknowledge_task
