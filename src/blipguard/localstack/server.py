"""What every local server shares: one child process, its log, restarts and outages."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

from .procs import BackgroundThread, log_tail


class ManagedServer:
    """Subclasses set ``name``, ``proc``, ``log_path``, ``port``, ``_lock`` and implement
    ``start``, ``stop`` and ``is_up``."""

    name = "server"
    proc: subprocess.Popen | None
    log_path: Path
    port: int
    _lock: threading.RLock

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def is_up(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{log_tail(self.log_path)}")
        return self.is_up()

    def restart(self, downtime: float = 0.0) -> None:
        """Stop (keeping data), stay down ``downtime`` seconds, start on the same port."""
        with self._lock:
            self.stop()
            if downtime > 0:
                time.sleep(downtime)
            self.start()

    def down_for(self, seconds: float) -> BackgroundThread:
        """A timed outage in the background; ``join()`` re-raises a failed restart."""
        t = BackgroundThread(lambda: self.restart(downtime=seconds), f"{self.name}-down-{self.port}")
        t.start()
        return t
