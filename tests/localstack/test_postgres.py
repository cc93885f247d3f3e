from __future__ import annotations

from pathlib import Path

import psycopg2
import pytest

from blipguard.localstack.postgres import PostgresServer
from blipguard.localstack.procs import pid_alive

pytestmark = pytest.mark.stack


def test_start_restart_keeps_data_stop(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path)
    try:
        server.start()
        assert server.url == f"postgres://postgres@127.0.0.1:{server.port}/blipguard"
        with psycopg2.connect(server.url) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (7)")
        old_pid = server.pid
        server.restart()
        assert not pid_alive(old_pid)
        with psycopg2.connect(server.url) as conn, conn.cursor() as cur:
            cur.execute("SELECT x FROM t")
            assert cur.fetchall() == [(7,)]
            cur.execute("SHOW fsync")
            assert cur.fetchone() == ("off",)
    finally:
        pid = server.pid
        server.stop()
    assert pid is not None and not pid_alive(pid)
    assert not server.is_up()
