"""`node-ping-exporter diagnose`: verdicts from a loss matrix (held to a plain
reference implementation, and at 500 nodes), and its error paths against a real
Prometheus and against a local HTTP server giving bad, slow, endless or hostile
answers (the lab e2e checks it on injected faults)."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from exporter import diagnose as diagnose_module
from exporter.diagnose import LOSS, RTT, Verdict, main, verdicts, visible

from .conftest import ROOT

NODES = ["n1", "n2", "n3", "n4", "n5"]


def matrix(**faults: float) -> dict[tuple[str, str], float]:
    """All pairs clean except the ones named like n1__n2=0.3."""
    loss = {(s, d): 0.0 for s in NODES for d in NODES if s != d}
    for name, value in faults.items():
        source, destination = name.split("__")
        loss[(source, destination)] = value
    return loss


def texts(
    loss: dict[tuple[str, str], float],
    rtt: dict[tuple[str, str], float] | None = None,
) -> list[str]:
    return [v.text for v in verdicts(loss, rtt or {}, 0.05, 0.95, 0.5, 10.0)]


def test_clean() -> None:
    assert texts(matrix()) == []


def test_unreachable_node() -> None:
    faults = {f"{s}__n3": 1.0 for s in NODES if s != "n3"} | {
        f"n3__{d}": 1.0 for d in NODES if d != "n3"
    }
    assert texts(matrix(**faults)) == ["n3: unreachable from 4/4 sources (inbound problem at n3)"]


def test_inbound_outbound_and_link_together() -> None:
    faults = {f"{s}__n2": 0.3 for s in NODES if s != "n2"}
    faults |= {f"n5__{d}": 0.3 for d in NODES if d != "n5"}
    faults |= {"n3__n4": 0.5}
    assert texts(matrix(**faults)) == [
        "n2: 30% loss from 4/4 sources (inbound problem at n2 or its link)",
        "n5: loses packets to 3/3 destinations (outbound problem at n5)",
        "n3 → n4: 50% loss, other paths clean (link)",
    ]


def test_slow_node() -> None:
    rtt = {(s, d): (20.0 if d == "n1" else 0.4) for s in NODES for d in NODES if s != d}
    assert texts(matrix(), rtt) == ["n1: slow, mean RTT 20.0 ms from 4/4 sources"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_prometheus_is_one_line_exit_2() -> None:
    result = run("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.startswith("node-ping-exporter diagnose: cannot reach Prometheus at")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_window() -> None:
    result = run("--prometheus", "http://127.0.0.1:1", "--window", "ten minutes")
    assert result.returncode == 2 and "not a Prometheus duration" in result.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_prometheus_without_ping_series(tmp_path: Path) -> None:
    """A real, empty Prometheus on loopback: the error says what is missing or null."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        result = run("--prometheus", f"http://127.0.0.1:{port}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "has no kube_node_ping_* series over the last 10m" in result.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)


# -- verdicts() against a plain reference ------------------------------------------


def reference_verdicts(
    loss: dict[tuple[str, str], float],
    rtt: dict[tuple[str, str], float],
    loss_threshold: float,
    unreachable_threshold: float,
    share_threshold: float,
    rtt_threshold_ms: float,
) -> list[Verdict]:
    """The rules written the obvious (cubic) way; verdicts() must say exactly this."""

    def over(values: list[float], limit: float) -> int:
        return len([v for v in values if v > limit])

    found: list[Verdict] = []
    faulty: set[str] = set()
    for node in sorted({d for _, d in loss}):
        values = [v for (_, d), v in loss.items() if d == node]
        n = len(values)
        if over(values, unreachable_threshold) / n > share_threshold:
            faulty.add(node)
            k = over(values, unreachable_threshold)
            text = f"{node}: unreachable from {k}/{n} sources (inbound problem at {node})"
            found.append(Verdict("unreachable", node, text))
        elif over(values, loss_threshold) / n > share_threshold:
            faulty.add(node)
            k, mean = over(values, loss_threshold), sum(values) / n
            text = f"{node}: {mean:.0%} loss from {k}/{n} sources (inbound problem at {node} or its"
            text += " link)"
            found.append(Verdict("inbound", node, text))
    outbound: set[str] = set()
    for node in sorted({s for s, _ in loss} - faulty):
        values = [v for (s, d), v in loss.items() if s == node and d not in faulty]
        k = over(values, loss_threshold)
        if values and k / len(values) > share_threshold:
            outbound.add(node)
            text = f"{node}: loses packets to {k}/{len(values)} destinations (outbound problem"
            text += f" at {node})"
            found.append(Verdict("outbound", node, text))
    for s, d in sorted(loss):
        if loss[(s, d)] > loss_threshold and not {s, d} & (faulty | outbound):
            text = f"{s} → {d}: {loss[(s, d)]:.0%} loss, other paths clean (link)"
            found.append(Verdict("link", f"{s} → {d}", text))
    for node in sorted({d for _, d in rtt}):
        values = [v for (_, d), v in rtt.items() if d == node]
        k, n = over(values, rtt_threshold_ms), len(values)
        if k / n > share_threshold:
            text = f"{node}: slow, mean RTT {sum(values) / n:.1f} ms from {k}/{n} sources"
            found.append(Verdict("slow", node, text))
    return found


def random_case(
    rng: random.Random,
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """A 2–9-node matrix with some pairs missing, values at and around the thresholds,
    and a few nodes made lossy in one direction."""
    nodes = [f"n{i}" for i in range(rng.randint(2, 9))]
    rng.shuffle(nodes)
    edges = [0.0, 0.01, 0.05, 0.050001, 0.3, 0.5, 0.95, 0.950001, 1.0, -0.01]
    loss: dict[tuple[str, str], float] = {}
    rtt: dict[tuple[str, str], float] = {}
    for s in nodes:
        for d in nodes:
            if s != d and rng.random() > 0.1:
                loss[(s, d)] = rng.choice(edges) if rng.random() < 0.5 else rng.random()
                if rng.random() < 0.9:
                    rtt[(s, d)] = rng.choice([0.4, 10.0, 10.5, rng.uniform(0, 30)])
    for _ in range(rng.randint(0, 2)):
        node, value, end = (
            rng.choice(nodes),
            rng.choice([0.3, 1.0, rng.random()]),
            rng.randint(0, 1),
        )
        for pair in loss:
            if pair[end] == node and rng.random() < 0.9:
                loss[pair] = value
    return loss, rtt


def test_verdicts_match_the_reference_on_random_matrices() -> None:
    rng = random.Random(20240611)
    for _ in range(300):
        loss, rtt = random_case(rng)
        thresholds = rng.choice(
            [(0.05, 0.95, 0.5, 10.0), (rng.random(), rng.random(), rng.random(), 15.0)]
        )
        expected = reference_verdicts(loss, rtt, *thresholds)
        assert verdicts(loss, rtt, *thresholds) == expected, (loss, rtt, thresholds)


# -- a local HTTP server standing in for Prometheus ---------------------------------

PREFIX = "node-ping-exporter diagnose: "
Respond = Callable[[BaseHTTPRequestHandler, str], None]  # (handler, PromQL query)
LOSS_10M = LOSS.format(selector="", window="10m")
RTT_10M = RTT.format(selector="", window="10m")


class FakePrometheus:
    """A real HTTP server on 127.0.0.1 (port 0) in a thread; respond() answers each query."""

    def __init__(self, respond: Respond) -> None:
        self.stop = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                with contextlib.suppress(OSError):  # the client gave up on a slow answer
                    respond(self, query.get("query", [""])[0])

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Respond], FakePrometheus]]:
    """Start FakePrometheus servers, with any proxy settings out of the way (loopback only)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    servers: list[FakePrometheus] = []

    def start(respond: Respond) -> FakePrometheus:
        servers.append(FakePrometheus(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def send(handler: BaseHTTPRequestHandler, body: bytes, status: int = 200) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def answer(values: dict[tuple[str, str], float | str]) -> bytes:
    """What Prometheus sends for an instant query: one sample per pair."""
    result = [
        {"metric": {"source_node": s, "destination_node": d}, "value": [1.7e9, str(v)]}
        for (s, d), v in values.items()
    ]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


def answering(loss: bytes, rtt: bytes) -> Respond:
    """Answers the counters' queries for the default 10m window; the rest is empty."""

    def respond(handler: BaseHTTPRequestHandler, query: str) -> None:
        send(handler, {LOSS_10M: loss, RTT_10M: rtt}.get(query) or answer({}))

    return respond


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- 500 nodes ----------------------------------------------------------------------


def test_500_node_mesh_through_http(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """249,500 pairs with an unreachable node, an inbound and an outbound one, a lossy
    link and a slow node: exact verdicts. The O(N⁴) verdicts took hours on this."""
    names = [f"node-{i:04d}" for i in range(500)]
    dead, inbound, outbound, slow = names[1], names[2], names[3], names[6]
    link = (names[4], names[5])
    rng = random.Random(5)
    loss: dict[tuple[str, str], float | str] = {}
    rtt: dict[tuple[str, str], float | str] = {}
    for s in names:
        for d in names:
            if s == d:
                continue
            if dead in (s, d):
                loss[(s, d)], rtt[(s, d)] = 1.0, "NaN"  # no replies: no RTT to average
                continue
            loss[(s, d)] = (
                0.3
                if d == inbound
                else 0.2
                if s == outbound
                else 0.5
                if (s, d) == link
                else rng.choice([0.0, 0.01])
            )
            rtt[(s, d)] = 20.0 if d == slow else 0.4
    server = serve(answering(answer(loss), answer(rtt)))
    start = time.monotonic()
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert time.monotonic() - start < 60, "a guard only: `python -m benchmarks.diagnose_scale`"
    assert (code, err) == (1, "")
    lines = out.splitlines()
    assert len(lines) == 2 + 500 + 1 + 5
    assert lines[2].startswith("node-0000 ") and lines[2].split()[1:3] == ["-", "100.0"]
    assert lines[-5:] == [
        "node-0001: unreachable from 499/499 sources (inbound problem at node-0001)",
        "node-0002: 30% loss from 499/499 sources (inbound problem at node-0002 or its link)",
        "node-0003: loses packets to 497/497 destinations (outbound problem at node-0003)",
        "node-0004 → node-0005: 50% loss, other paths clean (link)",
        "node-0006: slow, mean RTT 20.0 ms from 498/498 sources",
    ]


# -- answers it cannot read: exit 2, one line ------------------------------------------


def vector(*samples: object) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": list(samples)}}
    ).encode()


def sample(drop: str = "", **fields: object) -> dict[str, object]:
    """A good sample with fields (or *_node labels) replaced, or one dropped."""
    labels: dict[str, object] = {"source_node": "a", "destination_node": "b"}
    out: dict[str, object] = {"metric": labels, "value": [1.7e9, "0.5"]}
    for key, value in fields.items():
        (labels if key.endswith("_node") else out)[key] = value
    labels.pop(drop, None)
    out.pop(drop, None)
    return out


UNREADABLE: dict[str, tuple[bytes, str]] = {
    "a list": (b"[]", "the answer is [], expected a JSON object"),
    "not JSON": (
        b"<html>proxy error</html>",
        "not JSON (Expecting value: line 1 column 1 (char 0))",
    ),
    "empty": (b"", "not JSON (Expecting value"),
    "not UTF-8": (b'{"status": "\xff"}', "not JSON ("),
    "nested too deep": (b"[" * 200_000, "not JSON ("),
    "no status": (b'{"data": {}}', 'status is missing or null, expected "success" or "error"'),
    "odd status": (b'{"status": "ok"}', "status is 'ok', expected"),
    "no data": (b'{"status": "success"}', "data is missing or null, expected an object"),
    "data a list": (b'{"status": "success", "data": []}', "data is [], expected an object"),
    "no result": (
        b'{"status": "success", "data": {"resultType": "vector"}}',
        "data.result is missing or null",
    ),
    "result an object": (
        b'{"status": "success", "data": {"result": {}}}',
        "data.result is {}, expected a list",
    ),
    "a matrix": (
        b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
        "data.resultType is 'matrix', expected \"vector\"",
    ),
    "sample a number": (vector(sample(), 3), "result[1] is 3, expected an object"),
    "no metric": (
        vector(sample(drop="metric")),
        "result[0].metric is missing or null, expected an object",
    ),
    "metric a list": (vector(sample(metric=[])), "result[0].metric is [], expected an object"),
    "no source_node": (
        vector(sample(drop="source_node")),
        "result[0].metric.source_node is missing or null",
    ),
    "no destination_node": (
        vector(sample(drop="destination_node")),
        "result[0].metric.destination_node is missing or null",
    ),
    "label a number": (
        vector(sample(source_node=5)),
        "result[0].metric.source_node is 5, expected a node name",
    ),
    "label a list": (
        vector(sample(destination_node=["b"])),
        "result[0].metric.destination_node is ['b'], expected a node name",
    ),
    "label empty": (
        vector(sample(source_node="")),
        "result[0].metric.source_node is '', expected a node name",
    ),
    "no value": (vector(sample(drop="value")), "result[0].value is missing or null"),
    "value a string": (
        vector(sample(value="0.5")),
        "result[0].value is '0.5', expected [time, \"number\"]",
    ),
    "value one long": (
        vector(sample(value=[1.7e9])),
        "result[0].value is [1700000000.0], expected",
    ),
    "value three long": (
        vector(sample(value=[1, "0", "1"])),
        "result[0].value is [1, '0', '1'], expected",
    ),
    "value a dict": (
        vector(sample(value={"1": "0.5"})),
        "result[0].value is {'1': '0.5'}, expected",
    ),
    "number abc": (
        vector(sample(value=[1.7e9, "abc"])),
        "result[0].value[1] is 'abc', expected a number",
    ),
    "number a dict": (
        vector(sample(value=[1.7e9, {}])),
        "result[0].value[1] is {}, expected a number",
    ),
    "number true": (
        vector(sample(value=[1.7e9, True])),
        "result[0].value[1] is True, expected a number",
    ),
    "number null": (
        vector(sample(value=[1.7e9, None])),
        "result[0].value[1] is missing or null, expected a number",
    ),
    "number too big": (vector(sample(value=[1.7e9, 10**400])), "result[0].value[1] is 1000"),
}


@pytest.mark.parametrize("case", list(UNREADABLE))
def test_unreadable_answer_is_one_line_exit_2(
    case: str, serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    body, what = UNREADABLE[case]
    server = serve(lambda handler, query: send(handler, body))
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert (code, out) == (2, "")
    prefix = (
        f"node-ping-exporter diagnose: Prometheus at {server.url} gave an answer it cannot read: "
    )
    assert err.startswith(prefix + what), err
    assert err.count("\n") == 1 and err.endswith("\n")


@pytest.mark.parametrize("case", ["a list", "no metric", "number a dict", "nested too deep"])
def test_unreadable_answer_as_a_process(
    case: str, serve: Callable[[Respond], FakePrometheus]
) -> None:
    """The same from `python -m exporter diagnose`: exit 2 (not 1, "problem found")."""
    body, what = UNREADABLE[case]
    server = serve(lambda handler, query: send(handler, body))
    result = run("--prometheus", server.url)
    assert result.returncode == 2 and result.stdout == ""
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    assert f"gave an answer it cannot read: {what}" in result.stderr


def test_error_answers_are_one_line(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """Prometheus's own errors, and a proxy's HTML error page: still one line, exit 2."""
    error = b'{"status": "error", "errorType": "bad_data", "error": "parse error\\nat line 2"}'
    server = serve(
        lambda handler, query: send(handler, error, status=400 if "1 - " in query else 200)
    )
    code, _, err = run_main(capsys, "--prometheus", server.url)
    assert code == 2 and err.count("\n") == 1
    assert "refused a query (400): " in err and "parse error\\\\nat line 2" in err
    server = serve(lambda handler, query: send(handler, error))
    code, _, err = run_main(capsys, "--prometheus", server.url)
    assert code == 2 and err == (
        f"node-ping-exporter diagnose: Prometheus at {server.url} refused the query: "
        "parse error\\nat line 2\n"
    )
    page = b"<html>\n<body>\n502 Bad Gateway\n</body>\n</html>\n"
    server = serve(lambda handler, query: send(handler, page, status=502))
    code, _, err = run_main(capsys, "--prometheus", server.url)
    assert code == 2 and err.count("\n") == 1 and "(502): <html>\\n<body>\\n502" in err


def test_not_http_and_cut_short(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    def garbage(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.wfile.write(b"SSH-2.0-OpenSSH_9.6\r\n")

    def cut_short(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b'{"status": "success", "da')

    for respond, what in [(garbage, "BadStatusLine"), (cut_short, "cut short, 975 bytes missing")]:
        server = serve(respond)
        code, _, err = run_main(capsys, "--prometheus", server.url)
        assert code == 2 and err.count("\n") == 1
        assert f"at {server.url} gave an answer it cannot read: {what}" in err


# -- answers that never end ------------------------------------------------------------


def trickle(server_stop: threading.Event, handler: BaseHTTPRequestHandler, head: bool) -> None:
    """A byte every 0.2 s, forever (until the test ends): in the headers or the body."""
    if head:
        handler.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
    else:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.end_headers()
        handler.wfile.write(b'{"status": "success", "data": {"result": [')
    while not server_stop.wait(0.2):
        handler.wfile.write(b" ")


@pytest.mark.parametrize("head", [False, True], ids=["body", "headers"])
def test_trickling_answer_stops_at_the_deadline(
    head: bool, serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each read gets a byte well within any socket timeout: only a deadline for the
    whole answer stops it."""
    stop = threading.Event()
    server = serve(lambda handler, query: trickle(stop, handler, head))
    try:
        start = time.monotonic()
        code, _, err = run_main(capsys, "--prometheus", server.url, "--timeout", "1")
        assert time.monotonic() - start < 5
    finally:
        stop.set()
    assert code == 2
    assert err == f"{PREFIX}Prometheus at {server.url} gave no complete answer within 1 s\n"


def test_trickling_answer_as_a_process(serve: Callable[[Respond], FakePrometheus]) -> None:
    stop = threading.Event()
    server = serve(lambda handler, query: trickle(stop, handler, head=False))
    try:
        start = time.monotonic()
        result = run("--prometheus", server.url, "--timeout", "1.5")
        assert time.monotonic() - start < 10
    finally:
        stop.set()
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{PREFIX}Prometheus at {server.url} gave no complete answer within 1.5 s"
    ]


def test_endless_and_huge_answers_are_capped(
    serve: Callable[[Respond], FakePrometheus],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(diagnose_module, "MAX_ANSWER_BYTES", 1 << 20)
    stop = threading.Event()

    def flood(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.send_response(200)
        handler.end_headers()
        while not stop.is_set():
            handler.wfile.write(b" " * 65536)

    def declared(handler: BaseHTTPRequestHandler, query: str) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(10**12))
        handler.end_headers()
        stop.wait(30)

    try:
        server = serve(flood)
        code, _, err = run_main(capsys, "--prometheus", server.url)
        assert code == 2 and err.endswith("cannot read: longer than the 1048576-byte limit\n")
        server = serve(declared)
        start = time.monotonic()
        code, _, err = run_main(capsys, "--prometheus", server.url)
        assert time.monotonic() - start < 5
        assert code == 2 and err.endswith(
            ": 1000000000000 bytes announced, over the 1048576 limit\n"
        )
    finally:
        stop.set()


# -- hostile node names ------------------------------------------------------------------

EVIL = "evil\x1b[31m\nnode"


def test_control_characters_in_node_names_are_escaped(
    serve: Callable[[Respond], FakePrometheus], capsys: pytest.CaptureFixture[str]
) -> None:
    names = ["a", "b", EVIL]
    loss: dict[tuple[str, str], float | str] = {
        (s, d): (0.3 if d == EVIL else 0.0) for s in names for d in names if s != d
    }
    server = serve(answering(answer(loss), answer({})))
    code, out, err = run_main(capsys, "--prometheus", server.url)
    assert (code, err) == (1, "")
    assert "\x1b" not in out and all(line.isprintable() for line in out.splitlines())
    lines = out.splitlines()
    assert len(lines) == 2 + 3 + 1 + 1
    assert lines[1].split() == ["a", "b", "evil\\x1b[31m\\nnode"]
    assert lines[4].split() == ["evil\\x1b[31m\\nnode", "0.0", "0.0", "-"]
    assert lines[-1] == (
        "evil\\x1b[31m\\nnode: 30% loss from 2/2 sources"
        " (inbound problem at evil\\x1b[31m\\nnode or its link)"
    )
    code, out, _ = run_main(capsys, "--prometheus", server.url, "--output", "json")
    assert code == 1 and "\x1b" not in out
    assert json.loads(out)["verdicts"][0]["subject"] == EVIL


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        ("node-1", "node-1"),
        ("tab\there", "tab\\there"),
        ("back\\slash", "back\\\\slash"),
        ("bidi\u202eevil", "bidi\\u202eevil"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("ünïcødé → ok", "ünïcødé → ok"),
    ],
)
def test_visible(name: str, shown: str) -> None:
    assert visible(name) == shown


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["--timeout", "0"], "argument --timeout: 0 is not a positive number of seconds"),
        (["--timeout", "nan"], "argument --timeout: nan is not a positive number of seconds"),
        (["--timeout", "soon"], "argument --timeout: invalid float value: 'soon'"),
        (["--loss-threshold", "nan"], "argument --loss-threshold: nan is not in [0, 1)"),
        (["--loss-threshold", "1.5"], "argument --loss-threshold: 1.5 is not in [0, 1)"),
        (["--rtt-threshold-ms", "inf"], "argument --rtt-threshold-ms: inf is not a number of ms"),
    ],
)
def test_bad_timeout(args: list[str], what: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--prometheus", "http://127.0.0.1:1", *args])
    assert exit.value.code == 2
    assert capsys.readouterr().err == f"{PREFIX}{what}\n"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "127.0.0.1:9090", "http://"])
def test_bad_prometheus_url(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--prometheus", url])
    assert exit.value.code == 2
    assert "is not an http(s) URL" in capsys.readouterr().err
