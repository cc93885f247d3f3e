"""Pause state shared between a worker's main process and its prefork children.

Control commands run in the main process; tasks run in forked children. The board is an
anonymous shared mmap created before the pool forks (the Django app's ``ready``), so a
pause written by the main process is seen by every child on its next task, without a
broker round trip.

Why no ``multiprocessing.Lock``: Celery SIGKILLs a child at its hard time limit, and a
semaphore held by a dead process is never released, so every other child and the main
process would hang on it for ever. Instead:

- Writers exclude each other with ``fcntl.lockf`` on an unlinked temp file opened before
  the fork. POSIX record locks belong to the process: the kernel drops them when the
  holder dies, however it dies. They do not exclude threads of one process, hence the
  per-process ``threading.Lock`` (re-made in each child after fork, in case a thread held
  it at fork time). A writer waits at most ``LOCK_TIMEOUT`` (a stopped holder) and then
  raises ``BoardBusy``; the main process waits less and retries from its event loop,
  which must stay free: it is what enforces the children's time limits.
- Writes never touch the data readers are reading: two slots, the writer fills the one not
  in use, then publishes it by bumping the 8-byte generation counter whose parity names
  the live slot. A writer killed half-way leaves a slot nobody reads. Each slot carries a
  CRC32 of its bytes.
- Reads take no lock at all (seqlock): read the generation, the live slot, the generation
  again; retry if it moved or the CRC does not match. A read whose generation has not
  changed since the last one returns the cached copy, so the per-task check costs one
  8-byte read.
"""

import errno
import fcntl
import json
import mmap
import os
import struct
import tempfile
import threading
import time
import weakref
import zlib

SIZE = 16384
LOCK_TIMEOUT = 5.0  # s a writer waits for another (live, but stuck) writer
READ_RETRIES = 1000

_GEN = struct.Struct("Q")  # generation; its parity is the live slot
_SLOT_HEADER = struct.Struct("II")  # length, crc32
_SLOT = (SIZE - _GEN.size) // 2
CAPACITY = _SLOT - _SLOT_HEADER.size


class BoardBusy(RuntimeError):
    """Another process held the board's write lock for longer than LOCK_TIMEOUT."""


def _encode(data: dict) -> bytes:
    blob = json.dumps(data, separators=(",", ":")).encode()
    if len(blob) > CAPACITY:
        raise ValueError(f"pause board overflow: {len(blob)} bytes > {CAPACITY}")
    return blob


class Board:
    def __init__(self):
        self._mem = mmap.mmap(-1, SIZE)
        self._lockfile = tempfile.TemporaryFile()
        self._thread_lock = threading.Lock()
        self._cache: tuple[int, dict] = (-1, {})
        me = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _renew_thread_lock(me()))
        self.write({})

    # -- reading (lock-free) ----------------------------------------------------
    def _generation(self) -> int:
        return _GEN.unpack_from(self._mem, 0)[0]

    def _slot_offset(self, generation: int) -> int:
        return _GEN.size + (generation % 2) * _SLOT

    def _read_slot(self, generation: int) -> bytes | None:
        at = self._slot_offset(generation)
        n, crc = _SLOT_HEADER.unpack_from(self._mem, at)
        if n > CAPACITY:
            return None
        blob = self._copy(at + _SLOT_HEADER.size, n)
        return blob if zlib.crc32(blob) == crc else None

    def _copy(self, at: int, n: int) -> bytes:
        return self._mem[at : at + n]

    def read(self) -> dict:
        """The current data. Shared with later reads: do not mutate it."""
        for attempt in range(READ_RETRIES):
            gen = self._generation()
            cached_gen, cached = self._cache
            if gen == cached_gen:
                return cached
            blob = self._read_slot(gen)
            if blob is not None and self._generation() == gen:
                data = json.loads(blob) if blob else {}
                self._cache = (gen, data)
                return data
            if attempt > 10:
                time.sleep(0.0001)
        with self._locked():  # no writer can be mid-write now
            return json.loads(self._read_slot(self._generation()) or b"{}")

    # -- writing (one writer at a time, across processes) -----------------------
    def _locked(self, timeout: float | None = None):
        return _WriteLock(self._thread_lock, self._lockfile.fileno(), LOCK_TIMEOUT if timeout is None else timeout)

    def _store(self, blob: bytes) -> None:
        gen = self._generation() + 1
        at = self._slot_offset(gen)
        self._mem[at + _SLOT_HEADER.size : at + _SLOT_HEADER.size + len(blob)] = blob
        _SLOT_HEADER.pack_into(self._mem, at, len(blob), zlib.crc32(blob))
        self._commit(gen)

    def _commit(self, gen: int) -> None:
        _GEN.pack_into(self._mem, 0, gen)

    def write(self, data: dict) -> None:
        blob = _encode(data)
        with self._locked():
            self._store(blob)

    def update(self, fn, timeout: float | None = None) -> dict:
        """Read-modify-write under the write lock; ``fn(data) -> data`` (it gets a fresh copy).
        Raises BoardBusy after `timeout` s (LOCK_TIMEOUT) if another writer holds the lock."""
        with self._locked(timeout):
            data = fn(json.loads(self._read_slot(self._generation()) or b"{}"))
            self._store(_encode(data))
        return data


def _renew_thread_lock(b: "Board | None") -> None:
    if b is not None:
        b._thread_lock = threading.Lock()


class _WriteLock:
    def __init__(self, thread_lock: threading.Lock, fd: int, timeout: float):
        self._thread_lock = thread_lock
        self._fd = fd
        self._timeout = timeout

    def __enter__(self):
        if not self._thread_lock.acquire(timeout=self._timeout):
            raise BoardBusy(f"pause board: another thread held the write lock for {self._timeout:g}s")
        deadline = time.monotonic() + self._timeout
        delay = 0.0001
        while True:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return self
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    self._thread_lock.release()
                    raise
                if time.monotonic() >= deadline:
                    self._thread_lock.release()
                    raise BoardBusy(f"pause board: another process held the write lock for {self._timeout:g}s") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.005)

    def __exit__(self, *exc):
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()


_board: Board | None = None


def create() -> Board:
    """Called in the worker's main process before the pool forks."""
    global _board
    if _board is None:
        _board = Board()
    return _board


def current() -> Board | None:
    return _board


def pause_span() -> dict:
    """This worker's pause in force since when (or None), and its last pause (since, ended)."""
    data = _board.read() if _board is not None else {}
    span = data.get("pause_span") or {}
    last = span.get("last")
    return {"paused_since": span.get("since"), "last": tuple(last) if last else None}


def first_time(key: str, keep: int = 64) -> bool:
    """True for the first caller on this worker (all its prefork children) to ask with
    ``key``; the last ``keep`` keys are remembered. True without a board."""
    if _board is None:
        return True
    first: list[bool] = []

    def claim(data: dict) -> dict:
        seen = data.get("once") or []
        first.append(key not in seen)
        return data if key in seen else {**data, "once": (seen + [key])[-keep:]}

    _board.update(claim)
    return first[0]


def in_blip(now: float | None = None) -> bool:
    """This worker is in a blip: paused, or in a streak of transient errors no result has
    ended yet (the breaker's count)."""
    if _board is None:
        return False
    return paused_for(now) is not None or any(_board.read().get("failures", {}).values())


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
