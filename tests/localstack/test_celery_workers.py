from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from celery import Celery

from blipguard.localstack.celery_workers import CeleryWorkers
from blipguard.localstack.procs import pid_alive, wait_until
from blipguard.localstack.rabbitmq import RabbitMQServer

pytestmark = pytest.mark.stack

APP = textwrap.dedent(
    """
    import os
    from celery import Celery

    app = Celery("tinyapp", broker=os.environ["CELERY_BROKER_URL"])
    app.conf.broker_connection_retry_on_startup = True

    @app.task(name="tinyapp.touch")
    def touch(path, text):
        with open(path, "w") as f:
            f.write(text)
    """
)


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def test_workers_execute_task_and_stop(tmp_path: Path, rabbit: RabbitMQServer) -> None:
    appdir = tmp_path / "app"
    appdir.mkdir()
    (appdir / "tinyapp.py").write_text(APP)
    workers = CeleryWorkers(
        "tinyapp", "q1", {"CELERY_BROKER_URL": rabbit.url}, tmp_path / "w", [str(appdir)]
    )
    try:
        names = workers.start(count=2, concurrency=1)
        assert workers.hostnames == names and len(set(names)) == 2
        workers.wait_ready(30)
        pids = [workers.pid(h) for h in names]
        assert group_members(pids[0])  # worker + its prefork child
        client = Celery(broker=rabbit.url)
        out = tmp_path / "out.txt"
        # Explicit: Celery prefers CELERY_BROKER_URL from os.environ (set once a test of
        # this session set Django up against the stack) over the broker= argument.
        with client.connection_for_write(rabbit.url) as conn:
            client.send_task("tinyapp.touch", args=[str(out), "hello"], queue="q1", connection=conn)
        wait_until(lambda: out.exists() and out.read_text() == "hello", 15, "task executed")
        assert rabbit.consumer_count("q1") == 2
        workers.stop(names[0])
        assert workers.hostnames == names[1:]
        assert "ready." in workers.logs(names[1])
    finally:
        workers.stop()
    assert workers.hostnames == []
    for pid in pids:
        assert not pid_alive(pid)
        assert group_members(pid) == []
