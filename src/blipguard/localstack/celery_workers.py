"""Real Celery worker processes (prefork), each its own Popen, log and PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Sequence

from .procs import pid_alive, spawn, stop_pid, wait_until


class CeleryWorkers:
    """Start/stop ``celery worker`` processes for ``app`` consuming ``queues``."""

    def __init__(
        self,
        app: str,
        queues: str,
        env: dict[str, str],
        workdir: Path,
        pythonpath: list[str] | None = None,
    ) -> None:
        self.app = app
        self.queues = queues
        self.env = dict(env)
        self.workdir = Path(workdir)
        self.pythonpath = list(pythonpath or [])
        self.procs: dict[str, subprocess.Popen] = {}
        self._uniq = uuid.uuid4().hex[:6]
        self._seq = 0

    @property
    def hostnames(self) -> list[str]:
        return list(self.procs)

    def log_path(self, hostname: str) -> Path:
        return self.workdir / f"celery-{hostname.split('@')[0]}.log"

    def logs(self, hostname: str) -> str:
        try:
            return self.log_path(hostname).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pid(self, hostname: str) -> int:
        return self.procs[hostname].pid

    def _child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        # A test process that set Django up for the reference app has its settings module in
        # os.environ: a worker of another app would load Django (Celery's Django fixup) too.
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env.update(self.env)
        paths = [*self.pythonpath, *filter(None, [env.get("PYTHONPATH", "")])]
        if paths:
            env["PYTHONPATH"] = os.pathsep.join(paths)
        return env

    def start_one(
        self, concurrency: int = 2, prefetch_multiplier: int = 1, extra_args: Sequence[str] = ()
    ) -> str:
        self.workdir.mkdir(parents=True, exist_ok=True)
        hostname = f"w{self._seq}-{self._uniq}@{socket.gethostname()}"
        self._seq += 1
        argv = [
            sys.executable, "-m", "celery", "-A", self.app, "worker",
            "-Q", self.queues, "-c", str(concurrency), "-P", "prefork",
            "--prefetch-multiplier", str(prefetch_multiplier), "-n", hostname,
            "--without-gossip", "--without-mingle", "-l", "INFO", *extra_args,
        ]
        log = self.log_path(hostname)
        log.write_bytes(b"")
        self.procs[hostname] = spawn(argv, log, env=self._child_env(), cwd=self.workdir)
        return hostname

    def start(
        self,
        count: int = 1,
        concurrency: int = 2,
        prefetch_multiplier: int = 1,
        extra_args: Sequence[str] = (),
    ) -> list[str]:
        return [
            self.start_one(concurrency, prefetch_multiplier, extra_args) for _ in range(count)
        ]

    def _is_ready(self, hostname: str) -> bool:
        proc = self.procs[hostname]
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker {hostname} exited:\n{self.logs(hostname)[-3000:]}")
        return " ready." in self.logs(hostname)

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait until every worker logged 'ready.' (it is then consuming)."""
        wait_until(
            lambda: all(self._is_ready(h) for h in list(self.procs)),
            timeout, f"celery workers {self.hostnames} ready", 0.05,
        )

    def alive(self, hostname: str) -> bool:
        return hostname in self.procs and pid_alive(self.procs[hostname].pid)

    def stop(self, hostname: str | None = None, timeout: float = 15) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL of the worker's process group."""
        names = [hostname] if hostname else list(self.procs)
        for name in names:  # signal all first so they shut down in parallel
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                try:
                    proc.terminate()
                except ProcessLookupError:
                    pass
        for name in names:
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop_pid(proc.pid, timeout=timeout)
