"""A real PostgreSQL 15 cluster on a free 127.0.0.1 port (tuned for speed, not safety)."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Any

import psycopg2

from .server import ManagedServer
from .procs import free_port, spawn, stop_pid, wait_until

PG_BIN = Path(os.environ.get("BLIPGUARD_PG_BIN", "/usr/lib/postgresql/15/bin"))
DB_NAME = "blipguard"
_TEMPLATE_LOCK = threading.Lock()


def _as_postgres() -> dict[str, Any]:
    """Popen kwargs dropping root to the postgres user (initdb/postgres refuse root)."""
    if os.geteuid() != 0:
        return {}
    return {"user": "postgres", "group": "postgres", "extra_groups": []}


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(path, pw.pw_uid, pw.pw_gid)


def _postgres_can_reach(path: Path) -> bool:
    """True if every ancestor of ``path`` is traversable by the postgres user."""
    if os.geteuid() != 0:
        return True
    pw = pwd.getpwnam("postgres")
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == pw.pw_uid:
            ok = st.st_mode & 0o100
        elif st.st_gid == pw.pw_gid:
            ok = st.st_mode & 0o010
        else:
            ok = st.st_mode & 0o001
        if not ok:
            return False
    return True


def _template_dir() -> Path:
    """An initdb'd cluster (with database ``blipguard``) cached once per machine."""
    version = (PG_BIN / "postgres").stat().st_mtime_ns
    cache = Path(tempfile.gettempdir()) / f"blipguard-pgtemplate-{os.geteuid()}-{version}"
    if (cache / ".complete").exists():
        return cache
    with _TEMPLATE_LOCK:
        if (cache / ".complete").exists():
            return cache
        build = Path(tempfile.mkdtemp(prefix="blipguard-pgbuild-"))
        build.chmod(0o755)
        data = build / "data"
        data.mkdir()
        _chown_postgres(data)
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(data), "--auth=trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8", "--locale=C.UTF-8"],
            check=True, capture_output=True, **_as_postgres(),
        )
        subprocess.run(
            [str(PG_BIN / "postgres"), "--single", "-D", str(data), "-F", "template1"],
            input=f"CREATE DATABASE {DB_NAME};\n".encode(), check=True,
            capture_output=True, **_as_postgres(),
        )
        (build / ".complete").touch()
        try:
            build.rename(cache)
        except OSError:  # another process won the race
            shutil.rmtree(build, ignore_errors=True)
        return cache


def _fast_tmp_base() -> str | None:
    """/dev/shm if it is a writable dir (override: BLIPGUARD_PG_RUNDIR_BASE, '' = off)."""
    base = os.environ.get("BLIPGUARD_PG_RUNDIR_BASE", "/dev/shm")
    if base and os.path.isdir(base) and os.access(base, os.W_OK):
        return base
    return None


class PostgresServer(ManagedServer):
    name = "postgres"

    """postgres -D <data> on 127.0.0.1 with fsync/synchronous_commit/full_page_writes off."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.rundir: Path | None = None
        self._own_rundir = False
        self.log_path = self.workdir / "postgres.log"


    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{DB_NAME}"

    def connect(self) -> Any:
        return psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres",
                                dbname=DB_NAME, connect_timeout=2)

    def is_up(self) -> bool:
        try:
            self.connect().close()
            return True
        except psycopg2.Error:
            return False


    def _prepare(self) -> Path:
        """Copy the cached cluster into a fresh run dir (tmpfs when available: ~10x faster)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        base = _fast_tmp_base()
        if base is None and _postgres_can_reach(self.workdir):
            self.rundir = self.workdir / "pg"
            self.rundir.mkdir(exist_ok=True)
        else:  # tmpfs, or pytest's 0700 tmp root which postgres cannot traverse
            self.rundir = Path(tempfile.mkdtemp(prefix="blipguard-pg-", dir=base))
            self._own_rundir = True
            (self.workdir / "pg-rundir").write_text(str(self.rundir))
            weakref.finalize(self, shutil.rmtree, str(self.rundir), True)  # also at exit
        self.rundir.chmod(0o755)
        data = self.rundir / "data"
        if not data.exists():
            subprocess.run(["cp", "-a", str(_template_dir() / "data"), str(data)], check=True)
        sock = self.rundir / "sock"
        sock.mkdir(exist_ok=True)
        _chown_postgres(sock)
        return data

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        data = self._prepare() if self.rundir is None else self.rundir / "data"
        self.port = self.port or free_port()
        argv = [
            str(PG_BIN / "postgres"), "-D", str(data), "-p", str(self.port),
            "-h", "127.0.0.1", "-k", str(self.rundir / "sock"),
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]
        self.proc = spawn(argv, self.log_path, cwd=self.rundir, **_as_postgres())
        wait_until(self._ready, 30, f"postgres on port {self.port}", 0.01)

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID, SIGKILL of the group as a fallback."""
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_pid(proc.pid, timeout=10, sig=signal.SIGINT)
        if self._own_rundir and self.rundir is not None:
            shutil.rmtree(self.rundir, ignore_errors=True)
            self.rundir = None
            self._own_rundir = False

    def restart(self, downtime: float = 0.0) -> None:
        own, self._own_rundir = self._own_rundir, False  # keep the data dir
        self.stop()
        self._own_rundir = own
        if downtime > 0:
            threading.Event().wait(downtime)
        self.start()
