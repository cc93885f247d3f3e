"""LocalStack: postgres, redis (+ fault proxy), nats and rabbitmq started in parallel."""

from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from .nats import NatsServer
from .postgres import PostgresServer
from .rabbitmq import RabbitMQServer
from .redis import RedisServer
from .tcpproxy import FaultProxy


def _interrupt_on_sigterm() -> None:
    """SIGTERM would end Python without running `finally` or atexit: turn it into a
    KeyboardInterrupt, so the stack (and pytest's teardown) still stops every server."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _stop_all(stoppers: list[Callable[[], Any]]) -> None:
    """Run every stopper in parallel; errors are swallowed (best effort)."""

    def safe(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception:  # noqa: BLE001 - stopping must reach every server
            pass

    threads = [threading.Thread(target=safe, args=(fn,), daemon=True) for fn in stoppers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)


class LocalStack:
    """``with LocalStack() as s:`` real servers on free ports, stopped by PID on exit."""

    def __init__(self, workdir: Path | str | None = None, redis_config: dict[str, str] | None = None) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="blipguard-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.postgres = PostgresServer(self.workdir / "postgres")
        self.redis = RedisServer(self.workdir / "redis", redis_config)
        self.redis_proxy: FaultProxy | None = None
        self.nats = NatsServer(self.workdir / "nats")
        self.rabbitmq = RabbitMQServer(self.workdir / "rabbitmq")
        self.started_in = 0.0
        self._stoppers: list[Callable[[], Any]] = []
        self._finalizer = weakref.finalize(self, _stop_all, self._stoppers)

    def _start_redis(self) -> None:
        self.redis.start()
        self.redis_proxy = FaultProxy("127.0.0.1", self.redis.port)
        self.redis_proxy.start()
        self._stoppers.append(self.redis_proxy.stop)

    def start(self) -> "LocalStack":
        _interrupt_on_sigterm()
        t0 = time.monotonic()
        self._stoppers[:] = [self.postgres.stop, self.redis.stop, self.nats.stop, self.rabbitmq.stop]
        errors: list[BaseException] = []

        def run(fn: Callable[[], None]) -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised below
                errors.append(exc)

        jobs = [self.rabbitmq.start, self.postgres.start, self._start_redis, self.nats.start]
        threads = [threading.Thread(target=run, args=(fn,), daemon=True) for fn in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.stop()
            raise errors[0]
        self.started_in = time.monotonic() - t0
        return self

    def stop(self) -> None:
        _stop_all(list(reversed(self._stoppers)))
        self._stoppers.clear()

    def env(self) -> dict[str, str]:
        assert self.redis_proxy is not None, "stack not started"
        return {
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis_proxy.url(),
            "REDIS_DIRECT_URL": self.redis.url(),
            "CELERY_BROKER_URL": self.rabbitmq.url,
            "NATS_URL": self.nats.url,
        }

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if self._own_workdir and exc_type is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
