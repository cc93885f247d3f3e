"""Process helpers: free ports, polling, spawning and stopping by PID."""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

_LIVE_PIDS: set[int] = set()  # spawned and not yet stopped (atexit safety net)
_SESSION_LEADERS: set[int] = set()  # spawned with start_new_session: pgid == pid
_LIVE_LOCK = threading.Lock()


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is currently free, and that this process has not
    handed out before: servers start in parallel threads, and the kernel may offer a port
    again as soon as the probe socket is closed, before the first server has bound it."""
    with _handed_out_lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free TCP port on 127.0.0.1 that was not handed out already")


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02
) -> Any:
    """Poll ``predicate`` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reaps it if it is our child)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _is_group_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_pid(pid: int, timeout: float = 10, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``pid``, wait up to ``timeout``, then SIGKILL.

    When ``pid`` leads its own process group (start_new_session=True), the
    rest of that group is SIGKILLed once the leader is gone.
    """
    with _LIVE_LOCK:
        leader = pid in _SESSION_LEADERS
    leader = leader or _is_group_leader(pid)
    try:
        if pid_alive(pid):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if pid_alive(pid):
            if leader:
                _killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: not pid_alive(pid), 5, f"pid {pid} to die")
    except ProcessLookupError:
        pass
    finally:
        if leader:
            _killpg(pid, signal.SIGKILL)
        with _LIVE_LOCK:
            _LIVE_PIDS.discard(pid)
            _SESSION_LEADERS.discard(pid)


def spawn(
    argv: Sequence[str],
    log_path: Path | str,
    env: Mapping[str, str] | None = None,
    cwd: Path | str | None = None,
    **popen_kw: Any,
) -> subprocess.Popen:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            **popen_kw,
        )
    with _LIVE_LOCK:
        _LIVE_PIDS.add(proc.pid)
        _SESSION_LEADERS.add(proc.pid)
    return proc


def log_tail(path: Path | str, chars: int = 2000) -> str:
    """Last ``chars`` characters of a log file ('' if missing)."""
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return ""


class BackgroundThread(threading.Thread):
    """Daemon thread that re-raises the target's exception from ``join()``."""

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._fn = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._fn()
        except BaseException as exc:  # noqa: BLE001 - surfaced by join()
            self.error = exc

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None and not self.is_alive():
            raise self.error


def _kill_leftovers() -> None:
    """Safety net at interpreter exit: stop every spawned PID still alive."""
    with _LIVE_LOCK:
        pids = list(_LIVE_PIDS)
    for pid in pids:
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 3
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        _killpg(pid, signal.SIGKILL)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


atexit.register(_kill_leftovers)


def pid_of_tcp_client(local_port: int) -> int | None:
    """The process holding the 127.0.0.1 TCP socket bound to ``local_port`` (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == local_port:
                inodes.add(fields[9])
    targets = {f"socket:[{i}]" for i in inodes if i != "0"}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in targets:
                    return int(proc.name)
        except OSError:
            continue
    return None
