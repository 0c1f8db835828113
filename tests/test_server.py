"""The HTTP server against slow, malicious and vanishing clients, in-process on loopback.

Slow clients: connections that send half a request header (or trickle it) must not
each hold a thread for ever, and must not keep a scrape or a probe from an answer.
Vanishing clients and malformed requests: one line each through the agent's logging,
rate-limited, never a traceback on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import select
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from exporter import server as http_server
from exporter.logs import JsonFormatter, PlainFormatter, Throttle

from .conftest import ROOT

HALF_REQUEST = b"GET /metrics HTTP/1.1\r\nHost:"
BIG = 5_000_000  # an answer far larger than the socket buffers: its write blocks

Start = Callable[..., ThreadingHTTPServer]


def small(accept: str) -> tuple[bytes, str]:
    return b"up 1\n", "text/plain; version=0.0.4; charset=utf-8"


def big(accept: str) -> tuple[bytes, str]:
    return b"#" * BIG, "text/plain; version=0.0.4; charset=utf-8"


def ok() -> tuple[bool, str]:
    return True, "ok"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture
def serve() -> Iterator[Start]:
    """Starts servers on loopback; stops them and waits for their threads to end."""
    before = threading.active_count()
    started: list[ThreadingHTTPServer] = []

    def start(
        render: Callable[[str], tuple[bytes, str]] = small, host: str = "127.0.0.1", **limits: Any
    ) -> ThreadingHTTPServer:
        server = http_server.make_server(host, 0, render, ok, ok, **limits)
        http_server.serve_in_thread(server)
        started.append(server)
        return server

    yield start
    for server in started:
        server.shutdown()
        server.server_close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)


def connect(server: ThreadingHTTPServer) -> socket.socket:
    host, port = server.server_address[:2]
    return socket.create_connection((str(host), port), timeout=5)


def half_open(server: ThreadingHTTPServer, count: int, threads: list[int]) -> list[socket.socket]:
    """``count`` connections, each with half a request header sent; the thread count
    after each one goes to ``threads``. Paced a little: a client in this process
    connects faster than any server accepts, and a full listen backlog would cost a
    1 s SYN retransmission that has nothing to do with the server."""
    socks = []
    for i in range(count):
        sock = connect(server)
        sock.sendall(HALF_REQUEST)
        socks.append(sock)
        threads.append(threading.active_count())
        if i % 32 == 31:
            time.sleep(0.02)
    return socks


def closed_by_server(socks: list[socket.socket], within: float) -> float:
    """Seconds until the server had closed every one of ``socks`` (EOF or reset)."""
    started = time.monotonic()
    deadline = started + within
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        open_ = len(socks)
        while open_ and time.monotonic() < deadline:
            for key, _ in selector.select(max(0.0, deadline - time.monotonic())):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if not data:
                    selector.unregister(conn)
                    open_ -= 1
    assert not open_, f"{open_} of {len(socks)} connections still open after {within} s"
    return time.monotonic() - started


def exchange(server: ThreadingHTTPServer, request: bytes) -> bytes:
    """Send ``request`` on a new connection; everything the server sends until it closes."""
    with connect(server) as sock:
        sock.sendall(request)
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One response on a kept-alive connection: status and body (Content-Length framed)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {head!r}"
        head += chunk
    head, _, body = head.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:"))[15:]
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the body"
        body += chunk
    return status(head), body


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, the server's next write fails."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_one_line_records(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        for formatter in (JsonFormatter(), PlainFormatter()):
            line = formatter.format(record)
            assert "Traceback" not in line, line
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), repr(line)


# -- slow clients ---------------------------------------------------------------------------


def test_half_open_connections_take_at_most_max_connections_threads(serve: Start) -> None:
    """With the defaults: 300 connections that never finish their request header."""
    before = threading.active_count()
    server = serve()
    threads: list[int] = []
    socks = half_open(server, 300, threads)
    time.sleep(0.2)  # let the server catch up
    threads.append(threading.active_count())
    limit = before + 1 + http_server.DEFAULT_MAX_CONNECTIONS + 3  # + the accept loop + a few
    assert max(threads) <= limit, f"{max(threads)} threads with 300 half-open connections"
    for sock in socks:
        sock.close()


def test_half_open_connections_are_dropped_at_the_timeout(serve: Start) -> None:
    before = threading.active_count()
    server = serve(timeout=0.5, max_connections=16)
    threads: list[int] = []
    socks = half_open(server, 300, threads)
    assert max(threads) <= before + 1 + 16 + 3, f"{max(threads)} threads"
    took = closed_by_server(socks, within=0.5 + 2)
    print(f"300 half-open connections all closed by the server {took:.2f} s after the last")
    deadline = time.monotonic() + 2
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before + 1, "handler threads left after the timeout"
    for sock in socks:
        sock.close()


def test_scrapes_and_probes_answered_at_once_while_slow_clients_fill_every_slot(
    serve: Start,
) -> None:
    """The slow ones' timeout is long here: answers must not wait for it."""
    before = threading.active_count()
    server = serve(timeout=30, max_connections=8)
    threads: list[int] = []
    socks = half_open(server, 300, threads)
    for request in (get("/healthz"), get("/readyz"), get("/metrics"), get("/metrics", "HEAD")):
        started = time.monotonic()
        response = exchange(server, request)
        took = time.monotonic() - started
        assert status(response) == 200, response[:200]
        assert took < 1, f"{request!r} answered after {took:.2f} s"
    # A scraper that keeps its connection alive: two scrapes on one connection.
    with connect(server) as scraper:
        for _ in range(2):
            scraper.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(scraper) == (200, b"up 1\n")
    assert max(threads) <= before + 1 + 8 + 3, f"{max(threads)} threads"
    for sock in socks:
        sock.close()


def test_trickling_client_is_cut_at_the_header_deadline(serve: Start) -> None:
    """One header byte every 0.2 s: each recv is quick, the header never ends."""
    server = serve(timeout=0.5)
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        closed = False
        for _ in range(40):  # 8 s at most
            readable, _, _ = select.select([sock], [], [], 0.2)
            if readable and not read_all(sock):
                closed = True
                break
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        took = time.monotonic() - started
    assert closed, "a trickling client kept its connection for 8 s"
    assert 0.4 <= took <= 0.5 + 1.0, f"cut after {took:.2f} s"


def test_kept_alive_connection_served_then_closed_when_idle(serve: Start) -> None:
    server = serve(timeout=0.5)
    with connect(server) as sock:
        for _ in range(3):  # each response restarts the clock for the next request
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock) == (200, b"ok\n")
            time.sleep(0.3)
        took = closed_by_server([sock], within=0.5 + 1)
    assert took <= 0.5, f"idle connection closed {took + 0.3:.2f} s after its last answer"


def test_large_answer_not_cut_by_the_header_deadline(serve: Start) -> None:
    """A request sent just before the deadline: its answer has the whole write timeout."""
    server = serve(big, timeout=0.5)
    with connect(server) as sock:
        time.sleep(0.4)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock) == (200, b"#" * BIG)


def test_connection_refused_with_503_when_every_slot_is_answering(serve: Start) -> None:
    entered = threading.Semaphore(0)
    release = threading.Event()

    def stuck(accept: str) -> tuple[bytes, str]:
        entered.release()
        release.wait(10)
        return small(accept)

    server = serve(stuck, max_connections=2)
    busy = [connect(server) for _ in range(2)]
    for sock in busy:
        sock.sendall(get("/metrics"))
    for _ in busy:
        assert entered.acquire(timeout=5)
    started = time.monotonic()
    with connect(server) as refused:
        response = read_all(refused)  # sends nothing: the server answers on accept
    assert status(response) == 503 and response.endswith(b"busy\n"), response
    assert time.monotonic() - started < 1
    release.set()
    for sock in busy:
        assert status(read_all(sock)) == 200
        sock.close()


# -- errors: one line each, through logging, never a traceback ------------------------------


def test_client_reset_during_an_answer_logs_one_line_not_a_traceback(
    serve: Start, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=http_server.__name__)
    before = threading.active_count()
    server = serve(big)
    resets = 5
    for _ in range(resets):
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(get("/metrics"))
        time.sleep(0.1)  # the server is blocked writing the answer
        reset(sock)
    deadline = time.monotonic() + 5
    while threading.active_count() > before + 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert capfd.readouterr().err == ""
    gone = [r for r in caplog.records if r.getMessage() == "http client went away"]
    assert gone, [r.getMessage() for r in caplog.records]
    assert vars(gone[0])["error"].startswith(("ConnectionResetError", "BrokenPipeError"))
    assert gone[0].levelno == logging.DEBUG
    assert len(gone) < resets, "not rate-limited"
    assert_one_line_records(caplog)


# request -> what the answer starts with (stdlib's answer to HTTP/2 has no status line)
MALFORMED = {
    "request line over 64 KiB": (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 414"),
    "invalid header bytes": (b"GET / HTTP/1.1\r\nX\xff\x00: \x01\x80\r\n\r\n", b"HTTP/1.1 200"),
    "header line over 64 KiB": (
        b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
        b"HTTP/1.1 431",
    ),
    "too many headers": (b"GET / HTTP/1.1\r\n" + b"X: a\r\n" * 200 + b"\r\n", b"HTTP/1.1 431"),
    "POST": (b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", b"HTTP/1.1 501"),
    "HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"<!DOCTYPE HTML>"),
    "escape sequence": (b"GET /\x1b[2J HTTP/1.1\r\nConnection: close\r\n\r\n", b"HTTP/1.1 404"),
    "TLS hello, no line end": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", b""),
}


@pytest.mark.parametrize("request_bytes,expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_request_answered_without_a_traceback(
    serve: Start,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    request_bytes: bytes,
    expected: bytes,
) -> None:
    caplog.set_level(logging.DEBUG, logger=http_server.__name__)
    server = serve(timeout=0.5)
    response = exchange(server, request_bytes)
    assert response.startswith(expected), response[:200]
    if not expected:
        assert response == b""  # closed at the header deadline
    assert_one_line_records(caplog)
    assert capfd.readouterr().err == ""


def test_head_answers_the_headers_of_get(serve: Start) -> None:
    server = serve()
    head = exchange(server, get("/metrics", "HEAD"))
    assert status(head) == 200
    assert head.endswith(b"\r\n\r\n") and b"Content-Length: 5\r\n" in head


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_render_error_answers_500_and_logs_one_line(
    serve: Start,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    host: str,
) -> None:
    if host == "::1" and not ipv6_loopback():
        pytest.skip("no IPv6 loopback")

    def broken(accept: str) -> tuple[bytes, str]:
        raise RuntimeError("no table\nsecond line")

    caplog.set_level(logging.DEBUG, logger=http_server.__name__)
    server = serve(broken, host=host)
    assert status(exchange(server, get("/metrics"))) == 500
    assert status(exchange(server, get("/healthz"))) == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert vars(errors[0])["error"] == "RuntimeError: no table\\nsecond line"
    assert vars(errors[0])["client"].startswith("[::1]:" if host == "::1" else "127.0.0.1:")
    assert_one_line_records(caplog)
    assert capfd.readouterr().err == ""


def test_throttle_logs_one_line_per_kind_then_the_count_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="throttle-test")
    throttle = Throttle(logging.getLogger("throttle-test"), every=0.2)
    for _ in range(5):
        throttle.log(logging.WARNING, "a", "event a", client="x")
    throttle.log(logging.WARNING, "b", "event b")
    time.sleep(0.25)
    throttle.log(logging.WARNING, "a", "event a", client="y")
    lines = [(r.getMessage(), getattr(r, "suppressed", 0)) for r in caplog.records]
    assert lines == [("event a", 0), ("event b", 0), ("event a", 4)]


AGENT_LOGGING = """
import sys, time
from exporter.logs import setup_logging
from exporter.server import make_server, serve_in_thread
setup_logging("json", "debug")
def render(accept):
    if accept == "boom":
        raise ValueError("boom")
    return b"#" * 5_000_000, "text/plain"
server = make_server("127.0.0.1", 0, render, lambda: (True, "ok"), lambda: (True, "ok"),
                     timeout=0.5)
serve_in_thread(server)
print(server.server_address[1], flush=True)
sys.stdin.read()
"""


def test_agent_json_logs_stay_json_lines() -> None:
    """The agent's logging set up as with ``--log-format json``, in its own process:
    every stderr line is one JSON object, whatever the clients did."""
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT_LOGGING],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(get("/metrics"))
            time.sleep(0.1)
            reset(sock)
        for request in (
            b"GET /metrics HTTP/1.1\r\nAccept: boom\r\nConnection: close\r\n\r\n",
            MALFORMED["request line over 64 KiB"][0],
            MALFORMED["escape sequence"][0],
            get("/metrics", "HEAD"),
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(request)
                read_all(sock)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(HALF_REQUEST)
            read_all(sock)  # until the server's timeout
        _, err = proc.communicate("", timeout=10)
    finally:
        proc.kill()
        proc.wait()
    lines = err.splitlines()
    entries = [json.loads(line) for line in lines]  # fails on any non-JSON line
    messages = [e["msg"] for e in entries]
    assert "http client went away" in messages
    assert "http request failed" in messages
    assert not any("Traceback" in line for line in lines)


def get_status(server: ThreadingHTTPServer, path: str) -> int:
    with connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return int(sock.recv(64).split()[1])


def test_clients_that_do_not_read_their_answer_cannot_hold_every_slot(serve: Start) -> None:
    """Found in review: clients that send a request and never read the (large) answer
    held their slots for good, and /healthz got 503. Now an answer has one timeout in
    all, and at the cap a connection answering for over 2 s gives way."""
    server = serve(big, timeout=5.0, max_connections=4)
    stuck = []
    for _ in range(4):
        sock = connect(server)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        stuck.append(sock)
    time.sleep(http_server.SLOW_ANSWER_SECONDS + 0.2)
    began = time.monotonic()
    assert get_status(server, "/healthz") == 200
    assert time.monotonic() - began < 1.5
    for sock in stuck:
        sock.close()


def test_tls_connections_are_evicted_too(serve: Start, tmp_path: Path) -> None:
    """Found in review: after the TLS handshake the slot held a detached socket, so
    idle TLS clients could not be evicted and new clients waited, then were refused."""
    from exporter.tls import TlsFiles

    from .certs import make_ca, make_cert

    ca = make_ca(tmp_path)
    cert, key = make_cert(tmp_path, "server", ca)
    server = serve(small, timeout=30.0, max_connections=2, tls=TlsFiles(cert, key, None))
    context = ssl.create_default_context(cafile=str(ca[0]))
    idle = [context.wrap_socket(connect(server), server_hostname="127.0.0.1") for _ in range(2)]
    began = time.monotonic()
    with context.wrap_socket(connect(server), server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
    assert time.monotonic() - began < 1.0
    for sock in idle:
        sock.close()


def test_closing_ends_a_kept_alive_scrape_connection_at_once(serve: Start) -> None:
    """The agent closes /metrics first when it stops (on the event loop): a scrape
    connection kept alive must not hold that close for the connection's timeout."""
    server = serve()
    client = connect(server)
    client.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert client.recv(65536).startswith(b"HTTP/1.1 200")  # answered, kept alive
    server.shutdown()
    began = time.monotonic()
    server.server_close()
    assert time.monotonic() - began < 1.0
    assert client.recv(1) == b""  # the server ended the connection
    client.close()


def voluntary_switches(native_id: int) -> int:
    status = Path(f"/proc/self/task/{native_id}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


def test_an_idle_server_sleeps_until_a_connection_or_shutdown() -> None:
    """The accepting thread does not wake while nobody connects (socketserver's loop
    wakes twice a second to look for a stop request); shutdown() still ends it."""
    server = http_server.make_server("127.0.0.1", 0, small, ok, ok)
    thread = http_server.serve_in_thread(server)
    try:
        with connect(server) as sock:  # the loop is running once this is answered
            sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert b" 200 " in sock.recv(100)
        time.sleep(0.2)
        assert thread.native_id is not None
        before = voluntary_switches(thread.native_id)
        time.sleep(1.6)
        assert voluntary_switches(thread.native_id) == before
    finally:
        server.shutdown()
        server.server_close()
    thread.join(5)
    assert not thread.is_alive()


def test_a_server_serves_again_after_a_stop_and_a_late_shutdown() -> None:
    """The supervisor restarts a server whose loop ended (it failed, then its stop was
    called anyway): the restarted loop serves until its own shutdown, not a left-over one."""
    server = http_server.make_server("127.0.0.1", 0, small, ok, ok)
    try:
        for _ in range(2):
            thread = http_server.serve_in_thread(server)
            with connect(server) as sock:
                sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
                assert b" 200 " in sock.recv(100)
            server.shutdown()
            thread.join(5)
            assert not thread.is_alive()
            server.shutdown()  # the loop has ended: returns at once, leaves nothing behind
    finally:
        server.server_close()
