"""Thread-based TCP proxy with injectable faults (in-flight reset, refused connection, reply stall)."""

from __future__ import annotations

import socket
import struct
import threading
import time

from .procs import free_port

_LINGER_RST = struct.pack("ii", 1, 0)


class _Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.last_request = b""
        self.closed = False
        self.lock = threading.Lock()

    def close(self, reset: bool = False) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            if reset:
                _reset(self.client)
            else:
                _shut(self.client)
            _shut(self.upstream)


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER (1, 0): the peer sees ECONNRESET, not EOF."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Forward 127.0.0.1:<port> to an upstream; faults are armed per call."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.port = 0
        self.resets_fired = 0
        self.refusals_fired = 0
        self._listener: socket.socket | None = None
        self._pairs: set[_Pair] = set()
        self._cond = threading.Condition()
        self._reset_armed = 0
        self._reset_match: bytes | None = None
        self._refuse_armed = 0
        self._stall_until = 0.0
        self._stall_match: bytes | None = None
        self._running = False

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    # -- lifecycle -------------------------------------------------------
    def start(self) -> None:
        if self._running:
            return
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port or free_port()))
        lst.listen(128)
        self.port = lst.getsockname()[1]
        self._listener = lst
        self._running = True
        threading.Thread(target=self._accept_loop, name=f"proxy-{self.port}", daemon=True).start()

    def stop(self) -> None:
        self._running = False
        if self._listener is not None:
            _shut(self._listener)
            self._listener = None
        with self._cond:
            pairs = list(self._pairs)
            self._pairs.clear()
            self._stall_until = 0.0
            self._cond.notify_all()
        for pair in pairs:
            pair.close()

    # -- faults ------------------------------------------------------------
    def reset_next(self, match: bytes | None = b"SREM", count: int = 1) -> None:
        """Drop the next ``count`` client chunks containing ``match`` and RST that client."""
        with self._cond:
            self._reset_match = match
            self._reset_armed = count

    def refuse_next(self, count: int = 1) -> None:
        """Hang up on the next ``count`` new client connections at once, the way a server at
        its connection limit does: the client connects, then reads EOF, and fails fast. (Not
        an RST: that can land before the client sees its connect complete, and a connect
        call that fails is retried silently by some clients, nats-py among them.)"""
        with self._cond:
            self._refuse_armed = count

    def wait_fired(self, timeout: float) -> bool:
        """Wait until every armed reset happened."""
        with self._cond:
            return self._cond.wait_for(lambda: self._reset_armed == 0, timeout)

    def stall(self, seconds: float, match: bytes | None = None) -> None:
        """Hold server->client data for ``seconds`` (optionally only after ``match`` requests)."""
        with self._cond:
            self._stall_match = match
            self._stall_until = time.monotonic() + seconds
            self._cond.notify_all()

    def connections(self) -> int:
        with self._cond:
            return len(self._pairs)

    # -- plumbing ----------------------------------------------------------
    def _accept_loop(self) -> None:
        lst = self._listener
        while self._running and lst is not None:
            try:
                client, _ = lst.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        with self._cond:
            refuse = self._refuse_armed > 0
            if refuse:
                self._refuse_armed -= 1
                self.refusals_fired += 1
                self._cond.notify_all()
        if refuse:
            _shut(client)
            return
        try:
            upstream = socket.create_connection((self.upstream_host, self.upstream_port), timeout=2)
        except OSError:
            _reset(client)  # upstream down: the client sees a connection error
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        with self._cond:
            if not self._running:
                pair.close()
                return
            self._pairs.add(pair)
        threading.Thread(target=self._server_to_client, args=(pair,), daemon=True).start()
        self._client_to_server(pair)

    def _forget(self, pair: _Pair, reset: bool = False) -> None:
        pair.close(reset=reset)
        with self._cond:
            self._pairs.discard(pair)

    def _should_reset(self, chunk: bytes) -> bool:
        with self._cond:
            if self._reset_armed <= 0:
                return False
            if self._reset_match is not None and self._reset_match not in chunk:
                return False
            self._reset_armed -= 1
            self.resets_fired += 1
            self._cond.notify_all()
            return True

    def _client_to_server(self, pair: _Pair) -> None:
        try:
            while True:
                chunk = pair.client.recv(65536)
                if not chunk:
                    break
                pair.last_request = chunk
                if self._should_reset(chunk):
                    self._forget(pair, reset=True)
                    return
                pair.upstream.sendall(chunk)
        except OSError:
            pass
        self._forget(pair)

    def _hold_while_stalled(self, pair: _Pair) -> None:
        with self._cond:
            while self._running and not pair.closed:
                left = self._stall_until - time.monotonic()
                match = self._stall_match
                if left <= 0 or (match is not None and match not in pair.last_request):
                    return
                self._cond.wait(left)

    def _server_to_client(self, pair: _Pair) -> None:
        try:
            while True:
                chunk = pair.upstream.recv(65536)
                if not chunk:
                    break
                self._hold_while_stalled(pair)
                pair.client.sendall(chunk)
        except OSError:
            pass
        self._forget(pair)
