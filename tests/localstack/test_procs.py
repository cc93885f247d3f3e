from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from blipguard.localstack.procs import free_port, pid_alive, spawn, stop_pid, wait_until

pytestmark = pytest.mark.stack


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_wait_until_returns_value_and_times_out() -> None:
    assert wait_until(lambda: 42, 1, "answer") == 42
    with pytest.raises(TimeoutError, match=r"timed out after 0.1s waiting for never"):
        wait_until(lambda: False, 0.1, "never")


def test_stop_pid_kills_the_whole_group(tmp_path: Path) -> None:
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "time.sleep(60)\n"
    )
    log = tmp_path / "p.log"
    proc = spawn([sys.executable, "-c", code], log)
    child = int(wait_until(lambda: log.read_text().strip(), 5, "child pid"))
    stop_pid(proc.pid, timeout=0.3)  # parent ignores SIGTERM: escalates to SIGKILL
    assert not pid_alive(proc.pid)
    wait_until(lambda: not pid_alive(child), 5, "grandchild gone")


def test_stop_pid_on_dead_process(tmp_path: Path) -> None:
    proc = spawn([sys.executable, "-c", "pass"], tmp_path / "x.log")
    proc.wait(5)
    stop_pid(proc.pid)  # no error
    stop_pid(proc.pid)
