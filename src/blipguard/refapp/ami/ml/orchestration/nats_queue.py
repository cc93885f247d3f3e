"""One JetStream stream and durable pull consumer per job, one message per image."""

import asyncio
import json
import logging

import nats
from django.conf import settings
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

logger = logging.getLogger(__name__)


def stream_name(job_id: int) -> str:
    return f"job_{job_id}"


def subject(job_id: int) -> str:
    return f"job.{job_id}.tasks"


def consumer_name(job_id: int) -> str:
    return f"job-{job_id}-consumer"


async def _quiet_error(e: Exception) -> None:
    logger.debug("NATS connection: %s", e)


class TaskQueueManager:
    """Async context manager holding one NATS connection."""

    def __init__(self, nats_url: str | None = None, connect_timeout: float = 2.0):
        self.nats_url = nats_url or settings.NATS_URL
        self.connect_timeout = connect_timeout
        self.nc = None
        self.js = None

    async def __aenter__(self):
        self.nc = await nats.connect(
            self.nats_url,
            connect_timeout=self.connect_timeout,
            allow_reconnect=False,
            # Fail fast when the server is down (nats-py otherwise retries the first
            # connect for up to two minutes, hiding the outage inside one call).
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=_quiet_error,
        )
        self.js = self.nc.jetstream()
        return self

    async def __aexit__(self, *exc):
        if self.nc is not None:
            await self.nc.close()

    async def setup_job(self, job_id: int, ack_wait: float | None = None) -> None:
        await self.js.add_stream(name=stream_name(job_id), subjects=[subject(job_id)])
        await self.js.add_consumer(
            stream_name(job_id),
            ConsumerConfig(
                durable_name=consumer_name(job_id),
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=float(ack_wait or settings.NATS_TASK_TTR),
                max_deliver=2,
                max_ack_pending=1000,
            ),
        )

    async def publish_task(self, job_id: int, data: dict) -> None:
        await self.js.publish(subject(job_id), json.dumps(data).encode())

    async def reserve_tasks(self, job_id: int, count: int, timeout: float = 0.5) -> list[dict]:
        sub = await self.js.pull_subscribe_bind(durable=consumer_name(job_id), stream=stream_name(job_id))
        try:
            msgs = await sub.fetch(count, timeout=timeout)
        except (NatsTimeoutError, asyncio.TimeoutError):
            msgs = []
        finally:
            await sub.unsubscribe()
        return [dict(json.loads(m.data), reply_subject=m.reply) for m in msgs]

    async def acknowledge_task(self, reply_subject: str) -> bool:
        # Fire-and-forget, as on the reference platform: nothing confirms the ack.
        await self.nc.publish(reply_subject, b"+ACK")
        await self.nc.flush()
        return True

    async def stream_exists(self, job_id: int) -> bool:
        try:
            await self.js.stream_info(stream_name(job_id))
        except NotFoundError:
            return False
        return True

    async def delete_consumer(self, job_id: int) -> None:
        try:
            await self.js.delete_consumer(stream_name(job_id), consumer_name(job_id))
        except NotFoundError:
            pass

    async def delete_stream(self, job_id: int) -> None:
        try:
            await self.js.delete_stream(stream_name(job_id))
        except NotFoundError:
            pass
