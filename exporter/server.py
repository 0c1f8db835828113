"""HTTP endpoints: ``/metrics``, ``/healthz``, ``/readyz``.

Served from a thread so that a slow scrape never delays the prober's sends.
``/metrics`` negotiates Prometheus text or OpenMetrics from the Accept header
(exposition.Exposition).

A thread per connection is simple, but every connection then costs a thread, so
both are bounded: each connection has ``timeout`` seconds to deliver a complete
request header (also between keep-alive requests), and at most
``max_connections`` are served at once (``_Server.process_request`` says what
happens beyond). Errors are logged one line each, rate-limited: a client can
cause any number of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import selectors
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client.core import Metric

from .auth import RESULTS, KubernetesAuthorizer
from .exposition import Render
from .logs import Throttle, one_line
from .metric_table import HTTP_CLOSED_CONNECTIONS, METRICS_AUTH_REQUESTS, TLS_RELOAD_ERRORS
from .supervisor import in_thread
from .tls import TlsFiles

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

log = logging.getLogger(__name__)

Check = Callable[[], tuple[bool, str]]
# (Authorization header, path) -> (HTTP status, reason): exporter.auth.KubernetesAuthorizer
Authorize = Callable[[str | None, str], tuple[int, str]]
Address = tuple[Any, ...]

DEFAULT_TIMEOUT = 10.0  # seconds for a request header to arrive, and for each write
DEFAULT_MAX_CONNECTIONS = 64
SLOW_ANSWER_SECONDS = 2.0  # answering longer than this: evictable when the slots are full
STOP_WAIT = 1.0  # seconds for an evicted connection's thread to end (it takes µs)
LOG_EVERY = 10.0  # seconds: at most one line per kind of error in this time

TEXT = "text/plain; charset=utf-8"
INDEX = b"""<html><head><title>node-ping-exporter</title></head><body>
<h1>node-ping-exporter</h1>
<p><a href="/metrics">/metrics</a> &middot; <a href="/healthz">/healthz</a>
&middot; <a href="/readyz">/readyz</a></p></body></html>
"""
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n"
)


def _client(address: Address) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


class _Deadlined(io.RawIOBase):
    """The socket, read or written until ``deadline`` (when one is set).

    A socket timeout bounds each ``recv`` or ``send`` only: a client trickling a
    byte a second, in or out, would hold its connection, and thread, for ever. The
    deadline bounds the sum."""

    def __init__(self, sock: socket.socket, timeout: float, late: str) -> None:
        super().__init__()
        self.sock = sock
        self.timeout = timeout
        self.late = late  # what a TimeoutError says
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def _arm(self) -> None:
        left = self.timeout if self.deadline is None else self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(self.late)
        self.sock.settimeout(left)

    def readinto(self, buffer: WriteableBuffer) -> int:
        self._arm()
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(self.timeout)

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        sent = 0
        try:
            while sent < len(view):
                self._arm()
                sent += self.sock.send(view[sent : sent + 65536])
        finally:
            self.sock.settimeout(self.timeout)
        return sent


@dataclass
class _Slot:
    sock: socket.socket  # what to shut down to end it (the TLS socket once wrapped)
    since: float  # when it began its current state
    waiting: bool = True  # for a complete request header (or the TLS handshake)
    stopped: bool = False  # evicted: its thread is ending

    def evictable(self, now: float) -> bool:
        """Waiting for a request, or answering one for longer than a scrape takes
        (a client that does not read its answer, or a slow token check)."""
        if self.stopped:
            return False
        return self.waiting or now - self.since > SLOW_ANSWER_SECONDS


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # The listen backlog: a burst of connections waits there to be accepted (quickly:
    # admitting costs no wait) instead of having SYNs dropped, a 1 s retry each.
    request_queue_size = 512

    def __init__(
        self, address: Address, render: Render, healthy: Check, ready: Check, options: Options
    ) -> None:
        timeout, max_connections = options.timeout, options.max_connections
        tls, authorize = options.tls, options.authorize
        if timeout <= 0 or max_connections < 1:
            raise ValueError("timeout must be > 0 and max_connections >= 1")
        self.render = render
        self.healthy = healthy
        self.ready = ready
        self.tls = tls
        self.authorize = authorize
        self.connection_timeout = timeout  # not ``timeout``: BaseServer has its own
        self.max_connections = max_connections
        self.errors = Throttle(log, LOG_EVERY)
        self.closed = {"evicted": 0, "refused": 0}  # connections closed at the cap
        self._room = threading.Condition()  # guards _slots; notified when one is freed
        self._slots: dict[socket.socket, _Slot] = {}
        # shutdown() wakes serve_forever through this pair (see there).
        self._stop_reader, self._stop_writer = socket.socketpair()
        self._stopped = threading.Event()
        super().__init__(address, _Handler)

    def serve_forever(self, poll_interval: float | None = None) -> None:
        """Accept connections until shutdown(), asleep in select() in between.

        socketserver's own loop wakes every ``poll_interval`` (0.5 s) only to see
        whether it should stop: twice a second on every node, forever. Here shutdown()
        sends a byte that ends the wait instead (a byte sent before the loop starts
        ends it at once, so a stop can never be missed)."""
        self._stopped.clear()
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self, selectors.EVENT_READ)
                selector.register(self._stop_reader, selectors.EVENT_READ)
                while True:
                    ready = {key.fileobj for key, _ in selector.select()}
                    if self._stop_reader in ready:
                        self._stop_reader.recv(1)  # taken: a restart serves again
                        return
                    self._handle_request_noblock()  # type: ignore[attr-defined]  # socketserver's accept step
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop serve_forever and wait until it has returned (call from another thread).
        Nothing to stop when it has already ended (it failed): no byte is left behind
        to end the next one at once."""
        if self._stopped.is_set():
            return
        with contextlib.suppress(OSError):  # already closed: the loop has ended
            self._stop_writer.send(b"\0")
        self._stopped.wait()

    def process_request(self, request: Any, client_address: Address) -> None:
        """Admit the connection to a thread, within ``max_connections``.

        At the cap, the connection that has waited longest for a request header is
        closed to make room. That is what a slow or malicious client holds, while a
        scraper or a kubelet probe sends its request as soon as it connects: so these
        are answered at once however many slow clients there are. (Leaving connections
        in the listen backlog at the cap would queue a scrape behind every slow client,
        ``timeout`` seconds per ``max_connections`` of them: 800 would take 125 s.)
        Only when every slot is answering a complete request, each bounded by the
        write timeout, is a new connection refused: a best-effort 503, then closed;
        it never gets a thread or waits."""
        if self._admit(request):
            super().process_request(request, client_address)
            return
        self.closed["refused"] += 1
        self.errors.log(
            logging.WARNING,
            "busy",
            "http connection refused: every connection slot is answering a request",
            client=_client(client_address),
            max_connections=self.max_connections,
        )
        if self.tls is None:  # on a TLS port plain text would only be a protocol error
            with contextlib.suppress(OSError):  # best effort: never wait for this client
                request.setblocking(False)
                request.send(BUSY)
        self.shutdown_request(request)

    def _admit(self, request: socket.socket) -> bool:
        with self._room:
            full = len(self._slots) >= self.max_connections
            if full:
                now = time.monotonic()
                idle = [slot for slot in self._slots.values() if slot.evictable(now)]
                if not idle:
                    return False
                oldest = min(idle, key=lambda slot: slot.since)
                oldest.stopped = True
                _stop(oldest.sock)  # its thread sees the end of the stream, ends, frees the slot
                # Wait for that (microseconds): a thread per slot, not one more.
                if not self._room.wait_for(self._has_room, STOP_WAIT):
                    return False
            self._slots[request] = _Slot(request, time.monotonic())
        if full:
            self.closed["evicted"] += 1
            self.errors.log(
                logging.WARNING,
                "evicted",
                "http connection limit reached: closed the connection that waited "
                "longest for a request",
                max_connections=self.max_connections,
            )
        return True

    def _has_room(self) -> bool:
        return len(self._slots) < self.max_connections

    def mark(self, request: socket.socket, waiting: bool) -> None:
        """Whether a connection is waiting for a request (evictable) or answering one."""
        with self._room:
            slot = self._slots.get(request)
            if slot is not None:
                slot.waiting = waiting
                slot.since = time.monotonic()

    def wrapped(self, request: socket.socket, tls_socket: socket.socket) -> None:
        """The connection now speaks TLS: ending it means shutting down that socket."""
        with self._room:
            slot = self._slots.get(request)
            if slot is not None:
                slot.sock = tls_socket

    def shutdown_request(self, request: Any) -> None:
        with self._room:
            if self._slots.pop(request, None) is not None:
                self._room.notify_all()
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Address) -> None:
        """One line through the agent's logging, not socketserver's traceback on stderr.

        A client that resets or closes its connection early is routine (debug); the
        rest (a bug, say) is an error, logged with its type and message."""
        exc = sys.exception()
        # Includes a failed TLS handshake (a scanner, a client without a certificate).
        gone = isinstance(exc, ConnectionError | TimeoutError | ssl.SSLError)
        self.errors.log(
            logging.DEBUG if gone else logging.ERROR,
            type(exc).__name__,
            "http client went away" if gone else "http request failed",
            client=_client(client_address),
            error=f"{type(exc).__name__}: {exc}",
        )

    def server_close(self) -> None:
        """Also end every connection, so that no thread waits out its timeout."""
        super().server_close()
        self._stop_writer.close()
        self._stop_reader.close()
        with self._room:
            for slot in self._slots.values():
                _stop(slot.sock)


class _Server6(_Server):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        # "::" serves IPv4 too (IPv4-mapped), like Go's ":9798".
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _stop(sock: socket.socket) -> None:
    """Wake and end the thread reading ``sock`` (closing it is that thread's job: the
    descriptor might otherwise be reused under it)."""
    with contextlib.suppress(OSError):  # already gone
        # socket.socket's own shutdown, also for a TLS socket: no TLS close_notify from
        # this thread, just the descriptor, which wakes the connection's thread.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        self.raw = self.request  # what the server's connection slots know it by
        if self.server.tls is not None:
            # The handshake runs here, in the connection's own thread, within the timeout
            # (an evictable slot meanwhile), never in the accepting thread.
            self.request.settimeout(self.server.connection_timeout)
            context = self.server.tls.context()
            tls_socket = context.wrap_socket(
                self.request, server_side=True, do_handshake_on_connect=False
            )
            self.server.wrapped(self.raw, tls_socket)
            self.request = tls_socket
            tls_socket.do_handshake()
        super().setup()
        timeout = self.server.connection_timeout
        self.connection.settimeout(timeout)
        self.rfile.close()  # the socket's own reader and writer: replaced by ones with deadlines
        self.reader = _Deadlined(self.connection, timeout, "no complete request header in time")
        self.rfile = io.BufferedReader(self.reader)
        self.wfile.close()
        self.writer = _Deadlined(
            self.connection, timeout, "the client did not take its answer in time"
        )
        self.wfile = io.BufferedWriter(self.writer)

    def handle_one_request(self) -> None:
        self.server.mark(self.raw, waiting=True)
        self.reader.deadline = time.monotonic() + self.server.connection_timeout
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()  # reads the header lines
        self.reader.deadline = None
        # The whole answer (a token check, rendering, writing) within one timeout: a
        # client that does not read cannot hold its thread longer.
        self.writer.deadline = time.monotonic() + self.server.connection_timeout
        self.server.mark(self.raw, waiting=False)
        return parsed

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        try:
            status, content_type, body = self._route(self.path.split("?", 1)[0])
        except Exception as exc:  # a bug: the client gets a 500, the log one line
            self.server.errors.log(
                logging.ERROR,
                type(exc).__name__,
                "http request failed",
                client=_client(self.client_address),
                path=self.path,
                error=f"{type(exc).__name__}: {exc}",
            )
            status, content_type, body = 500, TEXT, b"internal error\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _route(self, path: str) -> tuple[int, str, bytes]:
        tls, authorize = self.server.tls, self.server.authorize
        if path == "/metrics" and tls is not None and tls.client_certificates:
            connection: Any = self.connection  # an ssl.SSLSocket with TLS
            if not connection.getpeercert():  # verified in the handshake when presented
                return 403, TEXT, b"a client certificate is required\n"
        if path == "/metrics" and authorize is not None:
            status, reason = authorize(self.headers.get("Authorization"), path)
            if status != 200:
                return status, TEXT, reason.encode() + b"\n"
        if path == "/metrics":
            body, content_type = self.server.render(self.headers.get("Accept", ""))
            return 200, content_type, body
        if path in ("/healthz", "/readyz"):
            ok, why = (self.server.healthy if path == "/healthz" else self.server.ready)()
            return 200 if ok else 503, TEXT, why.encode() + b"\n"
        if path == "/":
            return 200, "text/html; charset=utf-8", INDEX
        return 404, TEXT, b"not found\n"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("http " + one_line(format % args))

    def log_error(self, format: str, *args: object) -> None:
        """Timeouts and malformed requests: any client can cause any number."""
        self.server.errors.log(
            logging.DEBUG,
            format,
            "http " + one_line(format % args),
            client=_client(self.client_address),
        )


@dataclass(frozen=True)
class Options:
    """``timeout``: seconds a connection has to deliver a complete request header (or
    its next one, kept alive), and for each write of the answer. ``max_connections``:
    connections served at once, each by a thread. ``tls``: serve HTTPS with these
    certificate files. ``authorize``: who may read /metrics (the health endpoints stay
    open for the kubelet's probes)."""

    timeout: float = DEFAULT_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    tls: TlsFiles | None = None
    authorize: Authorize | None = None


def make_server(
    host: str, port: int, render: Render, healthy: Check, ready: Check, **options: Any
) -> ThreadingHTTPServer:
    """A server for ``host:port`` ("" for every address, IPv6 and IPv4), not yet serving;
    ``options`` are :class:`Options`' fields."""
    settings = Options(**options)
    if host:
        cls = _Server6 if ":" in host else _Server
        return cls((host, port), render, healthy, ready, settings)
    try:
        return _Server6(("::", port), render, healthy, ready, settings)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            raise
        return _Server(("0.0.0.0", port), render, healthy, ready, settings)


class HttpServer:
    """``/metrics``, ``/healthz``, ``/readyz`` served from a thread (a slow scrape
    never delays the prober's sends); cancelling run() shuts the server down."""

    name = "http"

    def __init__(
        self,
        server: Any,
        node_name: str,
        tls: TlsFiles | None = None,
        authorizer: KubernetesAuthorizer | None = None,
    ) -> None:
        self.server = server
        self.node_name = node_name
        self.tls = tls
        self.authorizer = authorizer

    async def run(self) -> None:
        try:
            await in_thread(self.server.serve_forever, self.server.shutdown)
        except asyncio.CancelledError:
            self.close()  # stopping: new connections are refused at once, not queued
            raise
        raise RuntimeError("the HTTP server stopped serving")

    def collect(self) -> Iterator[Metric]:
        me = self.node_name
        closed = sorted(dict(self.server.closed).items())
        yield HTTP_CLOSED_CONNECTIONS.samples(((me, reason), n) for reason, n in closed)
        if self.tls is not None:
            yield TLS_RELOAD_ERRORS.sample(self.tls.reload_errors, me)
        if self.authorizer is not None:
            decisions = dict(self.authorizer.decisions)
            yield METRICS_AUTH_REQUESTS.samples(
                ((me, RESULTS[status]), n) for status, n in sorted(decisions.items())
            )

    def close(self) -> None:
        self.server.server_close()


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return thread
