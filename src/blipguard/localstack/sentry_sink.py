"""A local HTTP endpoint speaking Sentry's envelope protocol, for tests.

It accepts what sentry-sdk really posts (``POST /api/<project>/envelope/``, gzip or plain)
and keeps every envelope, decompressed, so a test can check the events' fingerprints, tags
and levels, and that no secret appears anywhere in what was sent.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


@dataclass
class Envelope:
    raw: bytes
    header: dict
    items: list[tuple[dict, bytes]] = field(default_factory=list)

    def events(self) -> list[dict]:
        return [json.loads(payload) for h, payload in self.items if h.get("type") == "event"]


def parse(raw: bytes) -> Envelope:
    """Header line, then items: a header line and a payload (``length`` bytes or one line)."""
    first, _, rest = raw.partition(b"\n")
    envelope = Envelope(raw, json.loads(first or b"{}"))
    while rest.strip():
        line, _, rest = rest.partition(b"\n")
        if not line.strip():
            continue
        item = json.loads(line)
        length = item.get("length")
        if length is None:
            payload, _, rest = rest.partition(b"\n")
        else:
            payload, rest = rest[:length], rest[length:]
            rest = rest[1:] if rest.startswith(b"\n") else rest
        envelope.items.append((item, payload))
    return envelope


class SentrySink:
    def __init__(self, project: int = 1, key: str = "blipguardtestkey") -> None:
        self.project = project
        self.key = key
        self.envelopes: list[Envelope] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    encoding = (self.headers.get("Content-Encoding") or "").lower()
                    if encoding == "gzip":
                        body = gzip.decompress(body)
                    elif encoding == "deflate":
                        body = zlib.decompress(body)
                    elif encoding:
                        raise ValueError(f"unexpected Content-Encoding {encoding!r}")
                    if not self.path.startswith(f"/api/{sink.project}/envelope/"):
                        raise ValueError(f"unexpected path {self.path}")
                    envelope = parse(body)
                except Exception as e:  # noqa: BLE001 - reported to the test, never swallowed
                    with sink._lock:
                        sink.errors.append(f"{self.path}: {e!r}")
                    self.send_response(400)
                    self.end_headers()
                    return
                with sink._lock:
                    sink.envelopes.append(envelope)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sentry-sink", daemon=True)

    @property
    def dsn(self) -> str:
        return f"http://{self.key}@127.0.0.1:{self._server.server_address[1]}/{self.project}"

    def events(self) -> list[dict]:
        with self._lock:
            return [e for env in self.envelopes for e in env.events()]

    def raw(self) -> bytes:
        with self._lock:
            return b"\n".join(env.raw for env in self.envelopes)

    def wait_for(self, predicate: Callable[[list[dict]], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            found = predicate(self.events())
            if found:
                return found
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}; "
                                   f"{len(self.events())} events so far, errors {self.errors}")
            time.sleep(0.05)

    def __enter__(self) -> "SentrySink":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
