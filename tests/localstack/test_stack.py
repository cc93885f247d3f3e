from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from blipguard.localstack import faults
from blipguard.localstack.procs import pid_alive, wait_until
from blipguard.localstack.stack import LocalStack

pytestmark = pytest.mark.stack


def test_local_stack_env_faults_and_cleanup(tmp_path) -> None:  # noqa: ANN001
    with LocalStack(tmp_path) as stack:
        env = stack.env()
        assert set(env) == {
            "DATABASE_URL", "REDIS_URL", "REDIS_DIRECT_URL", "CELERY_BROKER_URL", "NATS_URL"
        }
        assert env["REDIS_URL"] == stack.redis_proxy.url()
        assert 0 < stack.started_in < 60
        pids = [
            stack.postgres.pid, stack.redis.pid, stack.nats.pid,
            stack.rabbitmq.pid, stack.rabbitmq.epmd_pid,
        ]
        assert all(pid and pid_alive(pid) for pid in pids)
        assert stack.rabbitmq.queue_depth("nothing") == 0

        app = redis.Redis.from_url(env["REDIS_URL"], retry=Retry(NoBackoff(), 0))
        app.set("job:7:state", "running")
        app.set("job:7:progress", "3")
        app.set("job:8:state", "running")
        assert faults.delete_job_state(stack, 7) == 2
        assert app.keys("job:*") == [b"job:8:state"]

        faults.inflight_reset(stack, match=b"SREM")
        with pytest.raises(redis.exceptions.ConnectionError, match="Connection reset by peer"):
            app.srem("set", "x")

        thread = faults.redis_down_for(stack, 0.3)
        wait_until(lambda: not stack.redis.is_up(), 2, "redis down")
        thread.join(10)
        assert app.get("job:8:state") == b"running"  # data kept across the outage

        slow = redis.Redis.from_url(env["REDIS_URL"], socket_timeout=0.3, retry=Retry(NoBackoff(), 0))
        slow.ping()
        faults.redis_stall(stack, 1)
        with pytest.raises(redis.exceptions.TimeoutError):
            slow.ping()

        nats_thread = faults.nats_down_for(stack, 0.2)
        nats_thread.join(10)
        assert stack.nats.is_up()
    for pid in pids:
        assert not pid_alive(pid)


def test_partial_start_failure_stops_what_started(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    stack = LocalStack(tmp_path)

    def boom() -> None:
        raise RuntimeError("rabbit refused to boot")

    monkeypatch.setattr(stack.rabbitmq, "start", boom)
    with pytest.raises(RuntimeError, match="refused"):
        with stack:
            pass  # pragma: no cover
    assert stack.redis.proc is None and stack.postgres.proc is None and stack.nats.proc is None


def test_atexit_safety_net(tmp_path) -> None:  # noqa: ANN001
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path\n"
        "from blipguard.localstack.redis import RedisServer\n"
        f"r = RedisServer(Path({str(tmp_path)!r})); r.start(); print(r.pid, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    pid = int(out.stdout.strip())
    wait_until(lambda: not pid_alive(pid), 5, "orphan redis gone")
