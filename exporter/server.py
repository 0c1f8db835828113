"""HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``.

Served from a thread so that a slow scrape never delays the prober's sends.
``/metrics`` negotiates Prometheus text or OpenMetrics from the Accept header
(exposition.Exposition).
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .exposition import Render

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]

INDEX = b"""<html><head><title>node-ping-exporter</title></head><body>
<h1>node-ping-exporter</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a>
&middot; <a href="/readyz">/readyz</a></p></body></html>
"""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # "::" serves IPv4 too (IPv4-mapped), like Go's ":9798".
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def make_server(
    host: str, port: int, render: Render, healthy: Check, ready: Check
) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, content_type = render(self.headers.get("Accept", ""))
                self._reply(200, content_type, body)
            elif path in ("/healthz", "/readyz"):
                ok, why = (healthy if path == "/healthz" else ready)()
                self._reply(200 if ok else 503, "text/plain; charset=utf-8", why.encode() + b"\n")
            elif path == "/":
                self._reply(200, "text/html; charset=utf-8", INDEX)
            else:
                self._reply(404, "text/plain; charset=utf-8", b"not found\n")

        def _reply(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("http " + format % args)

    if host:
        return (_Server6 if ":" in host else _Server)((host, port), Handler)
    try:
        return _Server6(("::", port), Handler)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        return _Server(("0.0.0.0", port), Handler)


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return thread
