"""A real RabbitMQ node (plus its own epmd) on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

import amqp
from kombu import Connection

from .server import ManagedServer
from .procs import free_port, log_tail, spawn, stop_pid, wait_until

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
EPMD = "/usr/bin/epmd"


class RabbitMQServer(ManagedServer):
    name = "rabbitmq-server"

    """rabbitmq-server started directly; durable queues survive ``restart()``."""

    def __init__(self, workdir: Path, start_timeout: float = 60.0) -> None:
        self.workdir = Path(workdir)
        self.start_timeout = start_timeout
        self.port = 0
        self.dist_port = 0
        self.epmd_port = 0
        self.proc: subprocess.Popen | None = None
        self.epmd_proc: subprocess.Popen | None = None
        self._lock = threading.RLock()
        self.log_path = self.workdir / "rabbitmq.out"


    @property
    def epmd_pid(self) -> int | None:
        return self.epmd_proc.pid if self.epmd_proc else None

    @property
    def nodename(self) -> str:
        return f"bg{self.port}@localhost"

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        w = self.workdir
        for sub in ("home", "mnesia", "log"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "enabled_plugins").write_text("[].\n")
        (w / "rabbitmq.conf").write_text("")
        (w / "rabbitmq-env.conf").write_text("")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(w / "home"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            # we run epmd ourselves (stopped by PID); erl must not start one
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-start_epmd false",
        })
        return env

    def amqp_ok(self) -> bool:
        # py-amqp directly: kombu's connect() retries with a 2 s back-off
        try:
            conn = amqp.Connection(host=f"127.0.0.1:{self.port}", connect_timeout=1)
            conn.connect()
            conn.close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not yet"
            return False

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"rabbitmq-server exited:\n{log_tail(self.log_path)}")
        return self.amqp_ok()

    def _start_epmd(self, env: dict[str, str]) -> None:
        argv = [EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"]
        self.epmd_proc = spawn(argv, self.workdir / "epmd.log", env=env)

        def listening() -> bool:
            if self.epmd_proc is not None and self.epmd_proc.poll() is not None:
                raise RuntimeError(f"epmd exited:\n{log_tail(self.workdir / 'epmd.log')}")
            try:
                socket.create_connection(("127.0.0.1", self.epmd_port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_until(listening, 5, f"epmd on port {self.epmd_port}", 0.01)

    def start(self) -> None:
        with self._lock:
            if self.proc is not None and self.proc.poll() is None:
                return
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.port = self.port or free_port()
            self.dist_port = self.dist_port or free_port()
            self.epmd_port = self.epmd_port or free_port()
            env = self._env()
            self._start_epmd(env)
            self.proc = spawn([RABBITMQ_SERVER], self.log_path, env=env, cwd=self.workdir)
            wait_until(self._ready, self.start_timeout, f"rabbitmq on port {self.port}", 0.05)

    def stop(self) -> None:
        with self._lock:
            proc, self.proc = self.proc, None
            epmd, self.epmd_proc = self.epmd_proc, None
            if proc is not None:
                stop_pid(proc.pid, timeout=20)
            if epmd is not None:
                stop_pid(epmd.pid, timeout=5)

    def ctl(self, *args: str, timeout: float = 30) -> str:
        env = self._env()
        out = subprocess.run([RABBITMQCTL, "-n", self.nodename, "-q", *args], env=env, cwd=self.workdir,
                             capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def close_connections_from(self, client_ports: set[int], reason: str = "test: idle connection dropped") -> int:
        """Close, from the broker's side, the client connections whose local ports are
        ``client_ports`` (as a missed-heartbeat timeout does). Returns how many it closed."""
        closed = 0
        for line in self.ctl("list_connections", "pid", "peer_port", "--no-table-headers").splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit() and int(parts[1]) in client_ports:
                self.ctl("close_connection", parts[0], reason)
                closed += 1
        return closed

    def _declare_passive(self, queue: str) -> tuple[int, int]:
        with Connection(self.url, connect_timeout=5) as conn:
            channel = conn.channel()
            try:
                _, messages, consumers = channel.queue_declare(queue=queue, passive=True)
                return int(messages), int(consumers)
            except conn.channel_errors:
                return 0, 0
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001 - channel already closed by NOT_FOUND
                    pass

    def peek(self, queue: str, limit: int = 1000) -> list[dict]:
        """Headers of the messages waiting in ``queue``, left in place (got without ack,
        requeued when the channel closes)."""
        with Connection(self.url, connect_timeout=5) as conn:
            channel = conn.channel()
            headers = []
            try:
                for _ in range(limit):
                    message = channel.basic_get(queue, no_ack=False)
                    if message is None:
                        break
                    headers.append(dict(message.headers or {}))
            finally:
                channel.close()
            return headers

    def queue_depth(self, queue: str) -> int:
        """Ready messages in ``queue`` (0 if it does not exist)."""
        return self._declare_passive(queue)[0]

    def outstanding(self, queue: str) -> int:
        """Messages in ``queue`` not yet taken off it for good: ready ones plus those a
        consumer holds unacknowledged (prefetched, or running under late acks)."""
        for line in self.ctl("list_queues", "name", "messages_ready", "messages_unacknowledged",
                             "--no-table-headers").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == queue:
                return int(parts[1]) + int(parts[2])
        return 0

    def consumer_count(self, queue: str) -> int:
        """Consumers on ``queue`` (0 if it does not exist)."""
        return self._declare_passive(queue)[1]
