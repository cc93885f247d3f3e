"""The per-job JetStream task queue (fact sheet §4).

One stream ``job_{id}`` (subject ``job.{id}.tasks``, max_age 24 h), one durable pull
consumer ``job-{id}-consumer`` with explicit acks, and a dead-letter consumer
``job-{id}-dlq`` on the shared ``advisories`` stream. Every ``async with`` opens a fresh
connection. The ack is a plain core-NATS publish of ``+ACK`` plus a flush.
"""

import asyncio
import json
import logging
from dataclasses import dataclass

import nats
import nats.errors
from asgiref.sync import sync_to_async
from django.conf import settings
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from ami.ml.schemas import PipelineProcessingTask
from ami.version import PRE

logger = logging.getLogger(__name__)

NATS_JETSTREAM_TIMEOUT = 10  # seconds: stream/consumer metadata calls and publish
# Read once, at import. PRE has no NATS_TASK_TTR setting, so the fallback (30) applies.
TASK_TTR = getattr(settings, "NATS_TASK_TTR", 30)
# Test-only, NOT part of the platform: config.settings.base.REFAPP_TEST_TASK_TTR.
if getattr(settings, "REFAPP_TEST_TASK_TTR", None):
    TASK_TTR = float(settings.REFAPP_TEST_TASK_TTR)
ADVISORY_STREAM_NAME = "advisories"
if not PRE:
    NATS_MAX_DELIVER = getattr(settings, "NATS_MAX_DELIVER", 2)

_NOT_OPEN = "Connection is not open. Use TaskQueueManager as an async context manager."


async def get_connection(nats_url: str) -> tuple[nats.NATS, JetStreamContext]:
    nc = await nats.connect(nats_url, connect_timeout=5, allow_reconnect=False)
    js = nc.jetstream()
    return nc, js


if not PRE:

    @dataclass
    class ConsumerState:
        num_pending: int | None = None
        num_ack_pending: int | None = None
        num_redelivered: int | None = None


class TaskQueueManager:
    def __init__(
        self,
        nats_url: str | None = None,
        max_ack_pending: int | None = None,
        job_logger: logging.Logger | None = None,
    ):
        self.nats_url = nats_url or getattr(settings, "NATS_URL", None) or "nats://nats:4222"
        self.max_ack_pending = max_ack_pending or getattr(settings, "NATS_MAX_ACK_PENDING", None) or 1000
        self.job_logger = job_logger
        self.nc: nats.NATS | None = None
        self.js: JetStreamContext | None = None
        self._streams_logged: set[int] = set()
        self._consumers_logged: set[int] = set()

    # --- context manager ------------------------------------------------------------
    async def __aenter__(self) -> "TaskQueueManager":
        self.nc, self.js = await get_connection(self.nats_url)
        try:
            await self._ensure_advisory_stream()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, exc_type, exc, tb) -> bool:
        await self._close()
        return False

    async def _close(self) -> None:
        nc, self.nc, self.js = self.nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except Exception:  # noqa: BLE001 - closing is best effort
                pass

    def _require_js(self) -> JetStreamContext:
        if self.nc is None or self.js is None:
            raise RuntimeError(_NOT_OPEN)
        return self.js

    async def _ensure_advisory_stream(self) -> None:
        js = self._require_js()
        try:
            await asyncio.wait_for(js.stream_info(ADVISORY_STREAM_NAME), timeout=NATS_JETSTREAM_TIMEOUT)
        except NotFoundError:
            await asyncio.wait_for(
                js.add_stream(name=ADVISORY_STREAM_NAME, subjects=["$JS.EVENT.ADVISORY.>"], max_age=3600),
                timeout=NATS_JETSTREAM_TIMEOUT,
            )
            logger.info("Advisory stream created")

    # --- names ------------------------------------------------------------------------
    def _get_stream_name(self, job_id: int) -> str:
        return f"job_{job_id}"

    def _get_subject(self, job_id: int) -> str:
        return f"job.{job_id}.tasks"

    def _get_consumer_name(self, job_id: int) -> str:
        return f"job-{job_id}-consumer"

    def _get_dlq_consumer_name(self, job_id: int) -> str:
        return f"job-{job_id}-dlq"

    # --- logging ----------------------------------------------------------------------
    async def log_async(self, level: int, msg: str, *, exc_info: bool = False) -> None:
        logger.log(level, msg, exc_info=exc_info)
        if self.job_logger is not None:
            try:
                await sync_to_async(self.job_logger.log)(level, msg, exc_info=exc_info)
            except Exception:  # noqa: BLE001 - the job log must never break the queue
                pass

    # --- resources --------------------------------------------------------------------
    async def _stream_exists(self, job_id: int) -> bool:
        js = self._require_js()
        try:
            await asyncio.wait_for(js.stream_info(self._get_stream_name(job_id)), timeout=NATS_JETSTREAM_TIMEOUT)
            return True
        except NotFoundError:
            return False

    async def _ensure_stream(self, job_id: int) -> None:
        js = self._require_js()
        name = self._get_stream_name(job_id)
        try:
            info = await asyncio.wait_for(js.stream_info(name), timeout=NATS_JETSTREAM_TIMEOUT)
            if job_id not in self._streams_logged:
                self._streams_logged.add(job_id)
                await self.log_async(
                    logging.INFO,
                    f"Reusing NATS stream {name} (messages={info.state.messages}, last_seq={info.state.last_seq})",
                )
        except NotFoundError:
            await asyncio.wait_for(
                js.add_stream(name=name, subjects=[self._get_subject(job_id)], max_age=86400),
                timeout=NATS_JETSTREAM_TIMEOUT,
            )
            self._streams_logged.add(job_id)
            await self.log_async(logging.INFO, f"Created NATS stream {name}")

    def _max_deliver(self) -> int:
        return 5 if PRE else NATS_MAX_DELIVER

    async def _ensure_consumer(self, job_id: int) -> None:
        js = self._require_js()
        stream, name = self._get_stream_name(job_id), self._get_consumer_name(job_id)
        try:
            info = await asyncio.wait_for(js.consumer_info(stream, name), timeout=NATS_JETSTREAM_TIMEOUT)
            if job_id not in self._consumers_logged:
                self._consumers_logged.add(job_id)
                await self.log_async(logging.INFO, f"Reusing NATS consumer {name} ({self._consumer_stats(info)})")
        except NotFoundError:
            config = ConsumerConfig(
                durable_name=name,
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=TASK_TTR,
                max_deliver=self._max_deliver(),
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=self.max_ack_pending,
                filter_subject=self._get_subject(job_id),
            )
            await asyncio.wait_for(js.add_consumer(stream, config), timeout=NATS_JETSTREAM_TIMEOUT)
            self._consumers_logged.add(job_id)
            await self.log_async(
                logging.INFO,
                f"Created NATS consumer {name} (max_deliver={config.max_deliver}, ack_wait={TASK_TTR}s, "
                f"max_ack_pending={config.max_ack_pending}, deliver_policy={config.deliver_policy}, "
                f"ack_policy={config.ack_policy})",
            )

    @staticmethod
    def _consumer_stats(info) -> str:
        return (
            f"delivered={info.delivered.consumer_seq if info.delivered else None} "
            f"ack_floor={info.ack_floor.consumer_seq if info.ack_floor else None} "
            f"num_pending={info.num_pending} num_ack_pending={info.num_ack_pending} "
            f"num_redelivered={info.num_redelivered}"
        )

    # --- tasks ------------------------------------------------------------------------
    async def publish_task(self, job_id: int, data: PipelineProcessingTask) -> bool:
        js = self._require_js()
        try:
            await self._ensure_stream(job_id)
            await self._ensure_consumer(job_id)
            ack = await js.publish(
                self._get_subject(job_id), json.dumps(data.dict()).encode(), timeout=NATS_JETSTREAM_TIMEOUT
            )
            logger.info(f"Published task to stream for job '{job_id}', sequence {ack.seq}")
            return True
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to publish task to stream for job '{job_id}': {e}")
            return False

    async def reserve_tasks(self, job_id: int, count: int, timeout: float = 5) -> list[PipelineProcessingTask]:
        js = self._require_js()
        try:
            if not await self._stream_exists(job_id):
                return []
            await self._ensure_consumer(job_id)
        except (asyncio.TimeoutError, nats.errors.TimeoutError):
            raise
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to reserve tasks for job '{job_id}': {e}")
            return []
        try:
            psub = await js.pull_subscribe(
                self._get_subject(job_id), self._get_consumer_name(job_id), stream=self._get_stream_name(job_id)
            )
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to reserve tasks for job '{job_id}': {e}")
            return []
        try:
            try:
                msgs = await psub.fetch(count, timeout=timeout)
            except nats.errors.TimeoutError:
                return []
            tasks = []
            for msg in msgs:
                task = PipelineProcessingTask(**json.loads(msg.data))
                task.reply_subject = msg.reply
                tasks.append(task)
            return tasks
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to reserve tasks for job '{job_id}': {e}")
            return []
        finally:
            try:
                await psub.unsubscribe()
            except Exception:  # noqa: BLE001
                pass

    async def acknowledge_task(self, reply_subject: str) -> bool:
        if self.nc is None:
            raise RuntimeError(_NOT_OPEN)
        try:
            await self.nc.publish(reply_subject, b"+ACK")
            await self.nc.flush()
            return True
        except Exception as e:  # noqa: BLE001
            logger.error(f"Failed to acknowledge task: {e}")
            return False

    # --- deletion ---------------------------------------------------------------------
    async def delete_consumer(self, job_id: int) -> bool:
        js = self._require_js()
        name = self._get_consumer_name(job_id)
        try:
            await asyncio.wait_for(
                js.delete_consumer(self._get_stream_name(job_id), name), timeout=NATS_JETSTREAM_TIMEOUT
            )
            await self.log_async(logging.INFO, f"Deleted NATS consumer {name} for job '{job_id}'")
            return True
        except Exception as e:  # noqa: BLE001
            await self.log_async(logging.ERROR, f"Failed to delete NATS consumer {name} for job '{job_id}': {e}")
            return False

    async def delete_stream(self, job_id: int) -> bool:
        js = self._require_js()
        name = self._get_stream_name(job_id)
        try:
            await asyncio.wait_for(js.delete_stream(name), timeout=NATS_JETSTREAM_TIMEOUT)
            await self.log_async(logging.INFO, f"Deleted NATS stream {name} for job '{job_id}'")
            return True
        except Exception as e:  # noqa: BLE001
            await self.log_async(logging.ERROR, f"Failed to delete NATS stream {name} for job '{job_id}': {e}")
            return False

    async def delete_dlq_consumer(self, job_id: int) -> bool:
        js = self._require_js()
        name = self._get_dlq_consumer_name(job_id)
        try:
            await asyncio.wait_for(js.delete_consumer(ADVISORY_STREAM_NAME, name), timeout=NATS_JETSTREAM_TIMEOUT)
            await self.log_async(logging.INFO, f"Deleted NATS consumer {name} for job '{job_id}'")
            return True
        except NotFoundError:
            return True
        except Exception as e:  # noqa: BLE001
            await self.log_async(logging.ERROR, f"Failed to delete NATS consumer {name} for job '{job_id}': {e}")
            return False

    async def _stats_or_unavailable(self, job_id: int) -> str:
        js = self._require_js()
        try:
            info = await asyncio.wait_for(
                js.consumer_info(self._get_stream_name(job_id), self._get_consumer_name(job_id)),
                timeout=NATS_JETSTREAM_TIMEOUT,
            )
            return self._consumer_stats(info)
        except Exception as e:  # noqa: BLE001
            return f"stats unavailable: {e}"

    async def cleanup_job_resources(self, job_id: int) -> bool:
        stats = await self._stats_or_unavailable(job_id)
        await self.log_async(
            logging.INFO, f"Finalizing NATS consumer {self._get_consumer_name(job_id)} before deletion ({stats})"
        )
        consumer_ok = await self.delete_consumer(job_id)
        stream_ok = await self.delete_stream(job_id)
        dlq_ok = await self.delete_dlq_consumer(job_id)
        return consumer_ok and stream_ok and dlq_ok

    async def get_dead_letter_image_ids(self, job_id: int, n: int = 10) -> list[str]:
        """Image ids of messages that hit max_deliver, read from the DLQ consumer on the
        advisories stream (created here on first use: the fact sheet does not say when
        the platform creates it)."""
        js = self._require_js()
        stream, consumer = self._get_stream_name(job_id), self._get_consumer_name(job_id)
        subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"
        dlq = self._get_dlq_consumer_name(job_id)
        psub = await js.pull_subscribe(subject, dlq, stream=ADVISORY_STREAM_NAME)
        ids: list[str] = []
        try:
            try:
                msgs = await psub.fetch(n, timeout=1)
            except nats.errors.TimeoutError:
                return []
            for msg in msgs:
                advisory = json.loads(msg.data)
                try:
                    raw = await js.get_msg(stream, advisory["stream_seq"])
                    ids.append(str(json.loads(raw.data)["image_id"]))
                except Exception:  # noqa: BLE001 - the message may be gone
                    pass
                await msg.ack()
        finally:
            await psub.unsubscribe()
        return ids

    async def log_consumer_stats_snapshot(self, job_id: int) -> None:
        stats = await self._stats_or_unavailable(job_id)
        await self.log_async(logging.INFO, f"NATS consumer status {self._get_consumer_name(job_id)} ({stats})")

    if not PRE:

        async def ensure_job_resources(self, job_id: int) -> None:
            await self._ensure_stream(job_id)
            await self._ensure_consumer(job_id)

        async def get_consumer_state(self, job_id: int) -> "ConsumerState | None":
            js = self._require_js()
            try:
                info = await asyncio.wait_for(
                    js.consumer_info(self._get_stream_name(job_id), self._get_consumer_name(job_id)),
                    timeout=NATS_JETSTREAM_TIMEOUT,
                )
            except Exception:  # noqa: BLE001
                return None
            return ConsumerState(
                num_pending=info.num_pending,
                num_ack_pending=info.num_ack_pending,
                num_redelivered=info.num_redelivered,
            )

        async def list_job_stream_snapshots(self) -> list[dict]:
            """One dict per ``job_*`` stream: name, job_id, messages, last_seq (minimal)."""
            js = self._require_js()
            snapshots = []
            for info in await js.streams_info():
                name = info.config.name
                if not name.startswith("job_"):
                    continue
                snapshots.append(
                    {
                        "stream": name,
                        "job_id": int(name.split("_", 1)[1]) if name.split("_", 1)[1].isdigit() else None,
                        "messages": info.state.messages,
                        "last_seq": info.state.last_seq,
                    }
                )
            return snapshots

        async def populate_redelivered_counts(self, snapshots: list[dict], concurrency: int = 8) -> None:
            sem = asyncio.Semaphore(concurrency)

            async def one(snapshot: dict) -> None:
                async with sem:
                    state = await self.get_consumer_state(snapshot["job_id"]) if snapshot["job_id"] else None
                    snapshot["num_redelivered"] = state.num_redelivered if state else None

            await asyncio.gather(*(one(s) for s in snapshots))
