"""Pause a job's JetStream consumers with a server-side deadline (NATS >= 2.11).

Processing services pull through the consumer; while it is paused they get no new work,
and the server resumes it by itself at the deadline if nobody does. Works on nats-py
2.10 (raw `$JS.API.CONSUMER.PAUSE` request) and newer.
"""

import datetime as dt
import json

from ..errors import BlipguardError


class ConsumerPauseError(BlipguardError):
    pass


def _rfc3339(ts: dt.datetime) -> str:
    return ts.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def _request(nc, stream: str, consumer: str, body: dict, timeout: float) -> dict:
    subject = f"$JS.API.CONSUMER.PAUSE.{stream}.{consumer}"
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout)
    reply = json.loads(msg.data or b"{}")
    if "error" in reply:
        err = reply["error"]
        raise ConsumerPauseError(f"pausing {stream}/{consumer}: {err.get('description', err)} (code {err.get('err_code')})")
    return reply


async def pause_consumer(nc, stream: str, consumer: str, seconds: float, timeout: float = 2.0) -> dict:
    """Pause until now + seconds; returns {"paused": bool, "pause_until": str, "pause_remaining_s": float}."""
    if not 0 < seconds <= 24 * 3600:
        raise ConsumerPauseError(f"pause seconds must be in (0, 86400], got {seconds!r}")
    until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds)
    reply = await _request(nc, stream, consumer, {"pause_until": _rfc3339(until)}, timeout)
    return _summary(reply)


async def resume_consumer(nc, stream: str, consumer: str, timeout: float = 2.0) -> dict:
    return _summary(await _request(nc, stream, consumer, {}, timeout))


def _summary(reply: dict) -> dict:
    return {
        "paused": bool(reply.get("paused")),
        "pause_until": reply.get("pause_until"),
        "pause_remaining_s": (reply.get("pause_remaining") or 0) / 1e9,
    }


async def pause_job(nc, job_id: int, seconds: float, stream_fmt="job_{id}", consumer_fmt="job-{id}-consumer") -> dict:
    """Pause the job's task consumer (reference-platform names by default)."""
    return await pause_consumer(nc, stream_fmt.format(id=job_id), consumer_fmt.format(id=job_id), seconds)


async def resume_job(nc, job_id: int, stream_fmt="job_{id}", consumer_fmt="job-{id}-consumer") -> dict:
    return await resume_consumer(nc, stream_fmt.format(id=job_id), consumer_fmt.format(id=job_id))
