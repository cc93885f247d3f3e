from __future__ import annotations

from pathlib import Path

import pytest

from blipguard.localstack.procs import pid_alive, wait_until
from blipguard.localstack.redis import RedisServer

pytestmark = pytest.mark.stack


def test_start_restart_keeps_data_stop(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, extra_config={"maxmemory-policy": "noeviction"})
    try:
        server.start()
        assert server.is_up()
        client = server.client(db=1)
        client.sadd("s", "a", "b")
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        port, old_pid = server.port, server.pid
        server.restart()
        assert server.port == port and server.pid != old_pid
        assert not pid_alive(old_pid)
        assert server.client(db=1).smembers("s") == {b"a", b"b"}
        assert server.url(2) == f"redis://127.0.0.1:{port}/2"
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None and not pid_alive(pid)
    assert not server.is_up()


def test_down_for(redis_server: RedisServer) -> None:
    redis_server.client().set("k", "v")
    thread = redis_server.down_for(0.5)
    wait_until(lambda: not redis_server.is_up(), 2, "redis down")
    thread.join(10)
    assert redis_server.is_up()
    assert redis_server.client().get("k") == b"v"
