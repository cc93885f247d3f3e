"""The reference app's HTTP API served from a thread of this process."""

import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    # socketserver's default backlog is 5: a burst of simulator threads plus the test's own
    # requests overflowed it under load and the kernel reset connections.
    request_queue_size = 128


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        pass


def _closing_db(app):
    from django.db import connections

    def wrapped(environ, start_response):
        try:
            return app(environ, start_response)
        finally:
            connections.close_all()

    return wrapped


class WebServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        from django.core.wsgi import get_wsgi_application

        self._server = make_server(
            host, port, _closing_db(get_wsgi_application()), server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self._thread = threading.Thread(target=self._server.serve_forever, name="refapp-http", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "WebServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
