"""Pause state shared between a worker's main process and its prefork children.

Control commands run in the main process; tasks run in forked children. The board is an
anonymous shared mmap created before the pool forks (``worker_init``), so a pause written
by the main process is seen by every child on its next task, without a broker round trip.
"""

import json
import mmap
import multiprocessing
import struct
import time

SIZE = 16384
_HEADER = struct.Struct("I")


class Board:
    def __init__(self):
        self._mem = mmap.mmap(-1, SIZE)
        self._lock = multiprocessing.get_context("fork").Lock()
        self.write({})

    def write(self, data: dict) -> None:
        blob = json.dumps(data, separators=(",", ":")).encode()
        if len(blob) + _HEADER.size > SIZE:
            raise ValueError("pause board overflow")
        with self._lock:
            self._mem.seek(0)
            self._mem.write(_HEADER.pack(len(blob)) + blob)

    def read(self) -> dict:
        with self._lock:
            (n,) = _HEADER.unpack(self._mem[: _HEADER.size])
            blob = self._mem[_HEADER.size : _HEADER.size + n]
        return json.loads(blob) if blob else {}

    def update(self, fn) -> dict:
        """Read-modify-write under the lock; ``fn(data) -> data``."""
        with self._lock:
            (n,) = _HEADER.unpack(self._mem[: _HEADER.size])
            data = json.loads(self._mem[_HEADER.size : _HEADER.size + n] or b"{}")
            data = fn(data)
            blob = json.dumps(data, separators=(",", ":")).encode()
            self._mem.seek(0)
            self._mem.write(_HEADER.pack(len(blob)) + blob)
        return data


_board: Board | None = None


def create() -> Board:
    """Called in the worker's main process before the pool forks."""
    global _board
    if _board is None:
        _board = Board()
    return _board


def current() -> Board | None:
    return _board


def paused_for(now: float | None = None) -> dict | None:
    """The active pause this process should obey, or None. Wall-clock leases."""
    if _board is None:
        return None
    now = time.time() if now is None else now
    leases = _board.read().get("leases", {})
    active = {dep: v for dep, v in leases.items() if v["until"] > now}
    if not active:
        return None
    dep, lease = max(active.items(), key=lambda kv: kv[1]["until"])
    return {"dependency": dep, "reason": lease.get("reason", ""), "until": lease["until"]}
