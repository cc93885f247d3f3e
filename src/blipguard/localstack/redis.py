"""A real redis-server on a free 127.0.0.1 port, run as our child."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import redis as redis_lib

from .server import ManagedServer
from .procs import free_port, spawn, stop_pid, wait_until


class RedisServer(ManagedServer):
    name = "redis-server"

    """redis-server in the foreground; data survives ``restart()`` via SHUTDOWN SAVE."""

    def __init__(self, workdir: Path, extra_config: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.extra_config = dict(extra_config or {})
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.log_path = self.workdir / "redis.log"


    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0, **kw: object) -> redis_lib.Redis:
        return redis_lib.Redis(host="127.0.0.1", port=self.port, db=db, **kw)

    def _write_config(self) -> Path:
        cfg = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "daemonize": "no",
            "dir": str(self.workdir),
            "save": '""',
            "appendonly": "no",
            "logfile": '""',
            "protected-mode": "no",
        }
        cfg.update(self.extra_config)
        path = self.workdir / "redis.conf"
        path.write_text("".join(f"{k} {v}\n" for k, v in cfg.items()))
        return path

    def is_up(self) -> bool:
        if not self.port:
            return False
        try:  # raw socket: no client-side retries masking an outage
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False


    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            binary = shutil.which("redis-server") or "/usr/bin/redis-server"
            self.proc = spawn([binary, str(self._write_config())], self.log_path, cwd=self.workdir)
            wait_until(self._ready, 10, f"redis-server on port {self.port}", 0.005)

    def stop(self, save: bool = True) -> None:
        with self._lock:
            if self.proc is None:
                return
            proc, self.proc = self.proc, None
            if proc.poll() is None:
                self._send_shutdown(save)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            stop_pid(proc.pid)

    def _send_shutdown(self, save: bool) -> None:
        # Raw socket: redis-py's default retries would reconnect after SHUTDOWN.
        cmd = b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                s.sendall(cmd)
                while s.recv(4096):
                    pass
        except OSError:
            pass


