"""Who sends what to a Redis server, per named client (CLIENT SETNAME), through MONITOR.

    with RedisTraffic(redis_url) as traffic:
        ...
    traffic.commands_from("antenna-worker")  # [(client name, command, args...), ...]

Connections are named by ``CLIENT LIST`` at the start and end, and by the ``CLIENT
SETNAME`` (or ``HELLO ... SETNAME``) a new connection sends; commands run inside a Lua
script are the script's caller's. Errors in the reading thread reach ``__exit__``.
"""

from __future__ import annotations

import threading

import redis


from .procs import BackgroundThread


class RedisTraffic:
    def __init__(self, url: str):
        self.url = url
        self.commands: list[tuple[str, str]] = []  # (client address, command line)
        self.names: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: BackgroundThread | None = None
        self._ready = threading.Event()

    def _client_list(self) -> None:
        with redis.Redis.from_url(self.url) as r:
            for c in r.client_list():
                if c.get("name"):
                    self.names.setdefault(c["addr"], c["name"])

    def _read(self) -> None:
        # redis-py 7 reads with a 5 s timeout by default, and a timeout drops the connection:
        # a quiet spell must not end the recording. __exit__ kills the connection instead.
        r = redis.Redis.from_url(self.url, socket_timeout=24 * 3600)
        try:
            with r.monitor() as m:
                self._ready.set()
                while True:
                    try:
                        entry = m.next_command()
                    except (redis.RedisError, AttributeError):
                        if self._stop.is_set():
                            return  # __exit__ killed the connection
                        raise
                    addr = f"{entry.get('client_address')}:{entry.get('client_port')}"
                    if entry.get("client_type") == "lua":
                        continue  # the EVAL/EVALSHA that ran it is counted once, for its caller
                    command = entry["command"]
                    words = command.split()
                    upper = [w.upper() for w in words]
                    if upper[:2] == ["CLIENT", "SETNAME"] and len(words) > 2:
                        self.names[addr] = words[2]
                    elif upper[:1] == ["HELLO"] and "SETNAME" in upper:
                        self.names[addr] = words[upper.index("SETNAME") + 1]
                    self.commands.append((addr, command))
        finally:
            r.close()

    def __enter__(self) -> "RedisTraffic":
        self._client_list()
        self._thread = BackgroundThread(self._read, "redis-monitor")
        self._thread.start()
        if not self._ready.wait(5):
            self._stop.set()
            self._thread.join(5)
            raise TimeoutError("MONITOR did not start within 5 s")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        with redis.Redis.from_url(self.url) as r:
            for c in r.client_list():
                if "O" in c.get("flags", ""):  # the MONITOR connection
                    r.client_kill_filter(_id=c["id"])
        self._thread.join(5)  # re-raises what the reader raised
        self._client_list()

    def commands_from(self, prefix: str) -> list[tuple[str, str]]:
        """(client name, command) of every command from a client whose name starts with ``prefix``."""
        out = []
        for addr, command in self.commands:
            name = self.names.get(addr, "")
            if name.startswith(prefix):
                out.append((name, command))
        return out

    def unnamed(self) -> int:
        return sum(1 for addr, _ in self.commands if addr not in self.names)
