from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from blipguard.localstack.nats import NatsServer
from blipguard.localstack.procs import pid_alive, wait_until

pytestmark = pytest.mark.stack


async def _errors(_exc: Exception) -> None:
    """Silence reconnect tracebacks."""


async def _publish(url: str) -> None:
    nc = await nats.connect(url, error_cb=_errors)
    js = nc.jetstream()
    await js.add_stream(name="JOBS", subjects=["jobs.>"])
    await js.publish("jobs.a", b"one")
    await nc.close()


async def _count(url: str) -> int:
    nc = await nats.connect(url, error_cb=_errors)
    info = await nc.jetstream().stream_info("JOBS")
    await nc.close()
    return int(info.state.messages)


def test_start_restart_keeps_jetstream_stop(tmp_path: Path) -> None:
    server = NatsServer(tmp_path)
    try:
        server.start()
        port, old_pid = server.port, server.pid
        asyncio.run(_publish(server.url))
        server.restart()
        assert server.port == port and not pid_alive(old_pid)
        assert asyncio.run(_count(server.url)) == 1
        thread = server.down_for(0.3)
        wait_until(lambda: not server.is_up(), 2, "nats down")
        thread.join(10)
        assert asyncio.run(_count(server.url)) == 1
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None and not pid_alive(pid)
