"""``node-ping-exporter diagnose``: which node, or which link, is losing packets.

Reads the agents' counters from Prometheus over a window, builds the source ×
destination loss matrix, and turns it into verdicts the same way the alert
rules do: a destination most sources cannot reach is a node (inbound) problem,
a source that loses packets to most destinations is a node (outbound) problem,
and a lossy pair that neither explains is a link problem.

    node-ping-exporter diagnose --prometheus http://prometheus:9090 [--window 10m]
        [--output text|json] [--timeout 30]

Exit code: 0 nothing found, 1 a problem found, 2 Prometheus unreachable, too
slow (``--timeout``, the whole answer to each query), an answer it cannot read,
no ping series in it, or bad arguments: then one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import math
import queue
import re
import reprlib
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from typing import Any, NoReturn

Pair = tuple[str, str]

LOSS = (
    "1 - sum by (source_node, destination_node) "
    "(increase(kube_node_ping_packets_received_total{{{selector}}}[{window}])) / "
    "sum by (source_node, destination_node) "
    "(increase(kube_node_ping_packets_sent_total{{{selector}}}[{window}]) > 0)"
)
RTT = (
    "sum by (source_node, destination_node) "
    "(increase(kube_node_ping_rtt_milliseconds_total{{{selector}}}[{window}])) / "
    "sum by (source_node, destination_node) "
    "(increase(kube_node_ping_packets_received_total{{{selector}}}[{window}]) > 0)"
)
# The recording rules' 5-minute series, used when they exist and --window is 5m.
RULE_LOSS = "node_ping:pair_loss:ratio5m"
RULE_RTT = "node_ping:pair_rtt:mean_ms5m"

# Seconds for the whole answer to one query (connection, headers and body).
DEFAULT_TIMEOUT_S = 30.0
# Largest answer read, per query: a 500-node full mesh is about 27 MB, so this
# covers some 1500 nodes while a runaway or hostile server cannot exhaust memory.
MAX_ANSWER_BYTES = 256 * 1024 * 1024
_CHUNK = 64 * 1024

# Short, one-line, escaped renderings of the bad parts of an answer, for error lines.
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 40
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict = 2, 3, 3


class DiagnoseError(Exception):
    """Prometheus cannot answer; the message is the one line printed."""


def visible(text: str) -> str:
    """``text`` safe to print on a terminal: non-printable characters (ANSI escapes,
    newlines, bidi overrides) and backslashes written as Python escapes.

    Node names are label values, which whoever can push or relabel series controls:
    printed raw they could repaint the operator's screen or forge verdict lines."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Run without the cyclic garbage collector: parsing a large mesh makes millions of
    containers, none of them in a cycle, and the collector would walk the growing heap
    again and again (two thirds of the time at 500 nodes)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _wrong(where: str, value: object, wanted: str) -> str:
    """What is wrong with one field of an answer, short enough for the one error line."""
    if value is None:
        return f"{where} is missing or null, expected {wanted}"
    return f"{where} is {_SHOW.repr(value)}, expected {wanted}"


@dataclass
class Verdict:
    kind: str  # unreachable, inbound, outbound, link, slow
    subject: str  # a node, or "a → b"
    text: str


@dataclass
class Diagnosis:
    window: str
    source: str  # where the figures came from: counters or recording rules
    nodes: list[str]
    loss: dict[str, dict[str, float]]  # source -> destination -> ratio
    rtt_ms: dict[str, dict[str, float]]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def problem(self) -> bool:
        return bool(self.verdicts)


class Prometheus:
    """Instant queries against Prometheus's HTTP API, each bounded in time and size.

    Whatever comes back is checked before use: any answer that is not a vector of
    source_node/destination_node samples is a DiagnoseError (exit 2), never a
    traceback, which would exit 1, "problem found"."""

    def __init__(
        self, url: str, timeout: float = DEFAULT_TIMEOUT_S, max_bytes: int | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout  # seconds for the whole answer to one query
        self.max_bytes = MAX_ANSWER_BYTES if max_bytes is None else max_bytes

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The samples of an instant query's result vector."""
        return self.read_answer(self.fetch(expr))

    def by_pair(self, expr: str) -> dict[Pair, float]:
        """Each sample's value by (source, destination); NaN (no replies to average) left out."""
        out: dict[Pair, float] = {}
        for index, sample in enumerate(self.query(expr)):
            pair, value = self._sample(index, sample)
            if value == value:
                out[pair] = value
        return out

    def unreadable(self, what: str) -> DiagnoseError:
        return DiagnoseError(f"Prometheus at {self.url} gave an answer it cannot read: {what}")

    def too_slow(self) -> DiagnoseError:
        return DiagnoseError(
            f"Prometheus at {self.url} gave no complete answer within {self.timeout:g} s"
        )

    def fetch(self, expr: str) -> bytes:
        """The raw answer to one instant query, within the deadline and the size cap.

        urllib's timeout bounds each socket operation, not the whole answer, so a
        server trickling a byte at a time (headers or body) would hold it forever.
        The request runs in a daemon thread, which itself stops reading the body at
        the deadline, and we stop waiting for it at the deadline whatever it is
        blocked in."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        deadline = time.monotonic() + self.timeout
        outcome: queue.SimpleQueue[bytes | DiagnoseError] = queue.SimpleQueue()

        def worker() -> None:
            try:
                outcome.put(self._get(url, deadline))
            except DiagnoseError as exc:
                outcome.put(exc)

        threading.Thread(target=worker, name="prometheus-query", daemon=True).start()
        try:
            answer = outcome.get(timeout=max(deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise self.too_slow() from None
        if isinstance(answer, DiagnoseError):
            raise answer
        return answer

    def _get(self, url: str, deadline: float) -> bytes:
        """One HTTP GET, every failure turned into a DiagnoseError."""
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                return self._body(response, deadline)
        except DiagnoseError:
            raise
        except urllib.error.HTTPError as exc:
            try:
                detail = exc.read(200).decode(errors="replace")
            except Exception:  # the error page itself unreadable: the status says enough
                detail = ""
            raise DiagnoseError(
                f"Prometheus at {self.url} refused a query ({exc.code}): {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError, http.client.InvalidURL) as exc:
            reason = getattr(exc, "reason", exc)
            raise DiagnoseError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        except http.client.HTTPException as exc:  # not HTTP, bad headers, cut short
            raise self.unreadable(f"{type(exc).__name__}: {exc}") from None
        except Exception as exc:  # whatever else: still one line, exit 2
            raise DiagnoseError(
                f"query to Prometheus at {self.url} failed: {type(exc).__name__}: {exc}"
            ) from None

    def _body(self, response: http.client.HTTPResponse, deadline: float) -> bytes:
        """The body, read a chunk at a time so that the deadline and the cap hold."""
        declared = response.headers.get("Content-Length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_bytes:
            raise self.unreadable(f"{declared} bytes announced, over the {self.max_bytes} limit")
        body = bytearray()
        while chunk := response.read1(_CHUNK):
            body += chunk
            if len(body) > self.max_bytes:
                raise self.unreadable(f"longer than the {self.max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise self.too_slow()
        if response.length:  # the server closed before Content-Length bytes
            raise self.unreadable(f"cut short, {response.length} bytes missing")
        return bytes(body)

    def read_answer(self, raw: bytes) -> list[dict[str, Any]]:
        """The result vector in a Prometheus answer; by_pair() checks each sample."""
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise self.unreadable(f"not JSON ({exc})") from None
        if not isinstance(body, dict):
            raise self.unreadable(_wrong("the answer", body, "a JSON object"))
        if body.get("status") == "error":
            error = body.get("error")
            error = error[:200] if isinstance(error, str) else _SHOW.repr(error)
            raise DiagnoseError(f"Prometheus at {self.url} refused the query: {error}")
        if body.get("status") != "success":
            raise self.unreadable(_wrong("status", body.get("status"), '"success" or "error"'))
        data = body.get("data")
        if not isinstance(data, dict):
            raise self.unreadable(_wrong("data", data, "an object"))
        if data.get("resultType", "vector") != "vector":
            raise self.unreadable(_wrong("data.resultType", data["resultType"], '"vector"'))
        result = data.get("result")
        if not isinstance(result, list):
            raise self.unreadable(_wrong("data.result", result, "a list"))
        return result

    def _sample(self, index: int, sample: object) -> tuple[Pair, float]:
        """One sample's pair and value; query() may be overridden, so trust nothing."""
        if not isinstance(sample, dict):
            raise self.unreadable(_wrong(f"result[{index}]", sample, "an object"))
        metric = sample.get("metric")
        if not isinstance(metric, dict):
            raise self.unreadable(_wrong(f"result[{index}].metric", metric, "an object"))
        source, destination = metric.get("source_node"), metric.get("destination_node")
        if not isinstance(source, str) or not source:  # Prometheus drops empty labels
            where = f"result[{index}].metric.source_node"
            raise self.unreadable(_wrong(where, source, "a node name"))
        if not isinstance(destination, str) or not destination:
            where = f"result[{index}].metric.destination_node"
            raise self.unreadable(_wrong(where, destination, "a node name"))
        value = sample.get("value")
        if not isinstance(value, list) or len(value) != 2:
            raise self.unreadable(_wrong(f"result[{index}].value", value, '[time, "number"]'))
        number = value[1]
        if isinstance(number, str | int | float) and not isinstance(number, bool):
            try:
                return (source, destination), float(number)
            except (ValueError, OverflowError):  # "abc", or an integer past float range
                pass
        raise self.unreadable(_wrong(f"result[{index}].value[1]", number, "a number"))


def _matrix(values: dict[Pair, float]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (source, destination), value in sorted(values.items()):
        out.setdefault(source, {})[destination] = value
    return out


def diagnose(
    prometheus: Prometheus,
    window: str = "10m",
    selector: str = "",
    loss_threshold: float = 0.05,
    unreachable_threshold: float = 0.95,
    share_threshold: float = 0.5,
    rtt_threshold_ms: float = 10.0,
) -> Diagnosis:
    """The matrix and the verdicts over the window, from the recording rules when they
    cover it (5m) and from the agents' counters otherwise."""
    with _gc_paused():
        source = "counters"
        loss: dict[Pair, float] = {}
        rtt: dict[Pair, float] = {}
        if window == "5m" and not selector:
            loss = prometheus.by_pair(RULE_LOSS)
            rtt = prometheus.by_pair(RULE_RTT)
            source = "recording rules"
        if not loss:
            source = "counters"
            loss = prometheus.by_pair(LOSS.format(selector=selector, window=window))
            rtt = prometheus.by_pair(RTT.format(selector=selector, window=window))
        if not loss:
            raise DiagnoseError(
                f"Prometheus at {prometheus.url} has no kube_node_ping_* series over the last "
                f"{window}: are the agents scraped (or their textfiles read by node-exporter)?"
            )
        nodes = sorted({n for pair in loss for n in pair})
        result = Diagnosis(window, source, nodes, _matrix(loss), _matrix(rtt))
        result.verdicts = verdicts(
            loss, rtt, loss_threshold, unreachable_threshold, share_threshold, rtt_threshold_ms
        )
        return result


def verdicts(
    loss: dict[Pair, float],
    rtt: dict[Pair, float],
    loss_threshold: float,
    unreachable_threshold: float,
    share_threshold: float,
    rtt_threshold_ms: float,
) -> list[Verdict]:
    """The rules' logic, on one matrix: node-level causes first, then what is left.

    Linear in the number of pairs (plus sorting): each pair is filed once by
    destination and once by source, so a 500-node mesh takes well under a second."""
    into: defaultdict[str, list[float]] = defaultdict(list)  # destination -> loss ratios
    out_of: defaultdict[str, list[tuple[str, float]]] = defaultdict(list)  # source -> (dest, r)
    for (source, destination), ratio in loss.items():
        into[destination].append(ratio)
        out_of[source].append((destination, ratio))
    found: list[Verdict] = []
    faulty: set[str] = set()  # unreachable or inbound: explains every pair towards it
    for node in sorted(into):
        ratios = into[node]
        total = len(ratios)
        dead = sum(1 for r in ratios if r > unreachable_threshold)
        lossy = sum(1 for r in ratios if r > loss_threshold)
        if dead / total > share_threshold:
            faulty.add(node)
            found.append(
                Verdict(
                    "unreachable",
                    node,
                    f"{node}: unreachable from {dead}/{total} sources (inbound problem at {node})",
                )
            )
        elif lossy / total > share_threshold:
            faulty.add(node)
            mean = sum(ratios) / total
            found.append(
                Verdict(
                    "inbound",
                    node,
                    f"{node}: {mean:.0%} loss from {lossy}/{total}"
                    f" sources (inbound problem at {node} or its link)",
                )
            )
    outbound: set[str] = set()
    for node in sorted(out_of):
        # a node faulty both ways is one (inbound) verdict, as in the alert rules
        if node in faulty:
            continue
        # pairs towards a destination found faulty above are explained by it
        ratios = [r for destination, r in out_of[node] if destination not in faulty]
        lossy = sum(1 for r in ratios if r > loss_threshold)
        if ratios and lossy / len(ratios) > share_threshold:
            outbound.add(node)
            found.append(
                Verdict(
                    "outbound",
                    node,
                    f"{node}: loses packets to {lossy}/{len(ratios)}"
                    f" destinations (outbound problem at {node})",
                )
            )
    explained = faulty | outbound
    for (source, destination), ratio in sorted(loss.items()):
        if ratio > loss_threshold and source not in explained and destination not in explained:
            found.append(
                Verdict(
                    "link",
                    f"{source} → {destination}",
                    f"{source} → {destination}: {ratio:.0%} loss, other paths clean (link)",
                )
            )
    rtt_into: defaultdict[str, list[float]] = defaultdict(list)  # destination -> mean RTTs
    for (_, destination), mean_ms in rtt.items():
        rtt_into[destination].append(mean_ms)
    for node in sorted(rtt_into):
        means = rtt_into[node]
        slow = sum(1 for m in means if m > rtt_threshold_ms)
        if slow / len(means) > share_threshold:
            mean = sum(means) / len(means)
            found.append(
                Verdict(
                    "slow",
                    node,
                    f"{node}: slow, mean RTT {mean:.1f} ms from {slow}/{len(means)} sources",
                )
            )
    return found


def render_matrix(diagnosis: Diagnosis) -> str:
    """The loss matrix as text; node names escaped (label values: see visible())."""
    nodes = diagnosis.nodes
    names = [visible(n) for n in nodes]
    width = max([len(n) for n in names] + [6]) + 2
    lines = [
        f"packet loss % over the last {diagnosis.window} (rows: source, columns: "
        f"destination; from {diagnosis.source})",
        " " * width + "".join(f"{n:>{width}}" for n in names),
    ]
    for source, name in zip(nodes, names, strict=True):
        row = diagnosis.loss.get(source, {})
        cells = [
            "-" if source == d else f"{row[d] * 100:.1f}" if d in row else "n/a" for d in nodes
        ]
        lines.append(f"{name:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def render_text(diagnosis: Diagnosis) -> str:
    """Matrix and verdicts for a terminal: every line escaped, as node names are in them."""
    lines = [render_matrix(diagnosis), ""]
    if diagnosis.verdicts:
        lines += [visible(v.text) for v in diagnosis.verdicts]
    else:
        lines.append(f"no loss in the last {diagnosis.window}")
    return "\n".join(lines)


def render_json(diagnosis: Diagnosis) -> str:
    """Everything, for scripts; json.dumps escapes control characters in names itself.

    Same as json.dumps(asdict(diagnosis)), without asdict's deep copy of the matrices
    (most of the time at 500 nodes)."""
    out = {f.name: getattr(diagnosis, f.name) for f in fields(diagnosis)}
    out["verdicts"] = [asdict(v) for v in diagnosis.verdicts]
    with _gc_paused():
        return json.dumps(out | {"problem": diagnosis.problem}, indent=2)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"node-ping-exporter diagnose: {visible(message)}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str]) -> int:
    parser = _Parser(prog="node-ping-exporter diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--window", default="10m", help="Prometheus duration (default 10m)")
    parser.add_argument("--output", choices=["text", "json"], default="text")
    parser.add_argument(
        "--selector",
        default="",
        help='extra label matchers for the counters, e.g. job="node-ping-exporter"',
    )
    parser.add_argument("--loss-threshold", type=float, default=0.05)
    parser.add_argument("--rtt-threshold-ms", type=float, default=10.0)
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"for the whole answer to each query, up to 4 queries (default {DEFAULT_TIMEOUT_S:g})",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", args.window):
        parser.error(f"argument --window: '{args.window}' is not a Prometheus duration (e.g. 10m)")
    if not (args.timeout > 0 and math.isfinite(args.timeout)):
        parser.error(f"argument --timeout: {args.timeout:g} is not a positive number of seconds")
    if not 0 <= args.loss_threshold < 1:  # NaN fails too: every comparison would be false
        parser.error(f"argument --loss-threshold: {args.loss_threshold:g} is not in [0, 1)")
    if not (args.rtt_threshold_ms >= 0 and math.isfinite(args.rtt_threshold_ms)):
        parser.error(
            f"argument --rtt-threshold-ms: {args.rtt_threshold_ms:g} is not a number of ms"
        )
    url = urllib.parse.urlsplit(args.prometheus)
    if url.scheme not in ("http", "https") or not url.netloc:
        parser.error(f"argument --prometheus: '{args.prometheus}' is not an http(s) URL")
    try:
        result = diagnose(
            Prometheus(args.prometheus, timeout=args.timeout),
            args.window,
            args.selector,
            loss_threshold=args.loss_threshold,
            rtt_threshold_ms=args.rtt_threshold_ms,
        )
    except DiagnoseError as exc:
        print(f"node-ping-exporter diagnose: {visible(str(exc))}", file=sys.stderr)
        return 2
    print(render_json(result) if args.output == "json" else render_text(result))
    return 1 if result.problem else 0
