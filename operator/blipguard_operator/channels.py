"""The operator's I/O toward the fleet: Celery control through the broker, and the
per-job JetStream consumers. Blocking Celery/kombu calls run in threads."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from blipguard.app_patch.pause import client as pause_client
from blipguard.app_patch.pause import nats_consumers

from .spec import NatsTarget

logger = logging.getLogger(__name__)


@dataclass
class Sent:
    """One command's outcome across the fleet."""

    confirmed: list[str]
    answered: list[str]
    errors: dict[str, str]
    failure: str | None = None  # nothing was sent (broker unreachable)


class CeleryChannel:
    def __init__(self, broker_url: str, queues: tuple[str, ...], expected: int | None, timeout: float = 1.0):
        from celery import Celery

        self.queues = queues
        self.expected = expected
        self.timeout = timeout
        self.app = Celery("blipguard-operator", broker=broker_url, set_as_current=False)
        # Celery prefers a CELERY_BROKER_URL environment variable over broker=; the write
        # and read URLs set here win over it, so the guard's Secret is what is used.
        self.app.conf.broker_write_url = self.app.conf.broker_read_url = broker_url
        self.app.conf.broker_connection_retry_on_startup = False

    def _sent(self, replies: list[pause_client.FleetReply]) -> Sent:
        confirmed = set.intersection(*(set(r.confirmed) for r in replies)) if replies else set()
        answered = set().union(*(set(r.hostnames) for r in replies)) if replies else set()
        errors: dict[str, str] = {}
        for r in replies:
            errors.update(r.errors)
        return Sent(sorted(confirmed), sorted(answered), errors)

    async def _run(self, fn) -> Sent:
        try:
            return await asyncio.to_thread(fn)
        except pause_client.BrokerUnreachable as e:
            return Sent([], [], {}, failure=str(e))

    async def pause(self, lease: float, reason: str, dependency: str) -> Sent:
        def call() -> Sent:
            return self._sent([
                pause_client.pause(self.app, lease, reason, dependency=dependency, queue=q, timeout=self.timeout,
                                   expect=self.expected)
                for q in self.queues
            ])
        return await self._run(call)

    async def resume(self) -> Sent:
        return await self._run(lambda: self._sent([
            pause_client.resume(self.app, timeout=self.timeout, expect=self.expected)]))

    async def status(self) -> dict[str, dict]:
        def call() -> dict[str, dict]:
            return pause_client.status(self.app, timeout=self.timeout, expect=self.expected).replies
        return await asyncio.to_thread(call)

    async def ready_messages(self) -> int:
        """Results waiting in the result queues (the held-back ones, after a resume)."""
        def call() -> int:
            total = 0
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1)
                channel = conn.channel()
                try:
                    for q in self.queues:
                        try:
                            _, ready, _ = channel.queue_declare(queue=q, passive=True)
                        except conn.channel_errors:
                            channel = conn.channel()  # NOT_FOUND closed it: nothing waits there
                            continue
                        total += int(ready)
                finally:
                    try:
                        channel.close()
                    except Exception:  # noqa: BLE001 - already closed by the broker
                        pass
            return total
        return await asyncio.to_thread(call)

    def close(self) -> None:
        self.app.close()


def not_consuming(replies: dict[str, dict], queues: tuple[str, ...]) -> list[str]:
    """'worker: queue, ...' for each worker that is not paused yet misses one of its
    result queues (pure)."""
    out = []
    for host, reply in sorted(replies.items()):
        if not isinstance(reply, dict) or not reply.get("ok") or reply.get("paused"):
            continue
        consuming = set(reply.get("consuming", []))
        missing = [q for q in reply.get("queues", queues) if q in queues and q not in consuming]
        if missing:
            out.append(f"{host}: {', '.join(missing)}")
    return out


class NatsChannel:
    """Pauses every job consumer the pattern names, discovered at each call (jobs that
    start during a blip are caught at the next renewal)."""

    def __init__(self, url: str, target: NatsTarget):
        self.url = url
        self.target = target
        self._nc = None
        self.paused: set[tuple[str, str]] = set()

    async def _conn(self):
        import nats

        if self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect(self.url, connect_timeout=2, max_reconnect_attempts=-1,
                                          reconnect_time_wait=1, allow_reconnect=True)
        return self._nc

    async def consumers(self) -> list[tuple[str, str]]:
        nc = await self._conn()
        names: list[str] = []
        offset = 0
        while True:
            msg = await nc.request("$JS.API.STREAM.NAMES", json.dumps({"offset": offset}).encode(), timeout=2)
            reply = json.loads(msg.data or b"{}")
            if "error" in reply:
                raise nats_consumers.ConsumerPauseError(f"listing streams: {reply['error']}")
            page = reply.get("streams") or []
            names += page
            offset += len(page)
            if not page or offset >= reply.get("total", 0):
                break
        out = []
        for stream in names:
            job_id = self.target.job_id_of_stream(stream)
            if job_id is not None:
                out.append((stream, self.target.consumer_for(job_id)))
        return out

    async def pause(self, seconds: float) -> tuple[list[str], list[str]]:
        """(paused, errors)"""
        done, errors = [], []
        try:
            found = await self.consumers()
        except Exception as e:  # noqa: BLE001 - NATS itself may be the blip
            return [], [f"listing job streams at {self.url}: {e}"]
        nc = await self._conn()
        for stream, consumer in found:
            try:
                await nats_consumers.pause_consumer(nc, stream, consumer, seconds)
                self.paused.add((stream, consumer))
                done.append(f"{stream}/{consumer}")
            except Exception as e:  # noqa: BLE001 - a job that just ended has no consumer
                errors.append(f"{stream}/{consumer}: {e}")
        return done, errors

    async def hold(self, seconds: float) -> list[str]:
        """Extend the pause of the consumers paused for the blip (not of jobs started since):
        errors."""
        errors = []
        try:
            nc = await self._conn()
        except Exception as e:  # noqa: BLE001
            return [f"NATS at {self.url}: {e}"]
        for stream, consumer in sorted(self.paused):
            try:
                await nats_consumers.pause_consumer(nc, stream, consumer, seconds)
            except Exception as e:  # noqa: BLE001 - a job that just ended has no consumer
                if "not found" not in str(e).lower():
                    errors.append(f"{stream}/{consumer}: {e}")
        return errors

    async def resume(self) -> tuple[list[str], list[str]]:
        done, errors = [], []
        try:
            targets = set(self.paused) | set(await self.consumers())
            nc = await self._conn()
        except Exception as e:  # noqa: BLE001
            return [], [f"NATS at {self.url}: {e}"]
        for stream, consumer in sorted(targets):
            try:
                await nats_consumers.resume_consumer(nc, stream, consumer)
                done.append(f"{stream}/{consumer}")
            except Exception as e:  # noqa: BLE001 - gone with its job: nothing to resume
                errors.append(f"{stream}/{consumer}: {e}")
            self.paused.discard((stream, consumer))
        return done, errors

    async def adopt_paused(self) -> list[tuple[str, str]]:
        """Take over the job consumers that are paused now (by a predecessor of this process)."""
        nc = await self._conn()
        found = []
        for stream, consumer in await self.consumers():
            msg = await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=2)
            if json.loads(msg.data or b"{}").get("paused"):
                self.paused.add((stream, consumer))
                found.append((stream, consumer))
        return found

    async def ack_pending(self) -> int:
        """Tasks handed out by the paused consumers and not acked yet: their results are
        still on their way (held in the broker, or being saved). Resuming before they are
        acked redelivers every one whose ack_wait ran out during the pause."""
        nc = await self._conn()
        total = 0
        for stream, consumer in sorted(self.paused):
            msg = await nc.request(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", b"", timeout=2)
            info = json.loads(msg.data or b"{}")
            if "error" in info:
                continue  # the job ended and took its consumer with it
            total += int(info.get("num_ack_pending") or 0)
        return total

    async def close(self) -> None:
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
