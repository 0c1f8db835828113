"""``node-ping-exporter diagnose``: which node, or which link, is losing packets.

Reads the agents' counters from Prometheus over a window, builds the source ×
destination loss matrix, and turns it into verdicts the same way the alert
rules do: a destination most sources cannot reach is a node (inbound) problem,
a source that loses packets to most destinations is a node (outbound) problem,
and a lossy pair that neither explains is a link problem.

    node-ping-exporter diagnose --prometheus http://prometheus:9090 [--window 10m]

Exit code: 0 nothing found, 1 a problem found, 2 Prometheus unreachable, no
ping series in it, or bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
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


class DiagnoseError(Exception):
    """Prometheus cannot answer; the message is the one line printed."""


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
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def query(self, expr: str) -> list[dict[str, Any]]:
        request = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:200]
            raise DiagnoseError(
                f"Prometheus at {self.url} refused a query ({exc.code}): {detail}"
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DiagnoseError(f"cannot reach Prometheus at {self.url}: {reason}") from None
        if body.get("status") != "success":
            raise DiagnoseError(f"Prometheus at {self.url}: {body.get('error', body)}")
        return list(body["data"]["result"])

    def by_pair(self, expr: str) -> dict[Pair, float]:
        out: dict[Pair, float] = {}
        for sample in self.query(expr):
            metric = sample["metric"]
            value = float(sample["value"][1])
            if value == value:  # NaN: no replies to average
                out[(metric["source_node"], metric["destination_node"])] = value
        return out


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
    """The rules' logic, on one matrix: node-level causes first, then what is left."""

    def share(pairs: list[Pair], limit: float) -> tuple[int, int]:
        return sum(1 for p in pairs if loss[p] > limit), len(pairs)

    into = {d: [p for p in loss if p[1] == d] for _, d in loss}
    out_of = {s: [p for p in loss if p[0] == s] for s, _ in loss}
    found: list[Verdict] = []
    unreachable: set[str] = set()
    inbound: set[str] = set()
    outbound: set[str] = set()
    for node, pairs in sorted(into.items()):
        dead, total = share(pairs, unreachable_threshold)
        lossy, _ = share(pairs, loss_threshold)
        if total and dead / total > share_threshold:
            unreachable.add(node)
            found.append(
                Verdict(
                    "unreachable",
                    node,
                    f"{node}: unreachable from {dead}/{total} sources (inbound problem at {node})",
                )
            )
        elif total and lossy / total > share_threshold:
            inbound.add(node)
            mean = sum(loss[p] for p in pairs) / total
            found.append(
                Verdict(
                    "inbound",
                    node,
                    f"{node}: {mean:.0%} loss from {lossy}/{total}"
                    f" sources (inbound problem at {node} or its link)",
                )
            )
    for node, pairs in sorted(out_of.items()):
        # pairs towards a destination found faulty above are explained by it
        pairs = [p for p in pairs if p[1] not in unreachable | inbound]
        lossy, total = share(pairs, loss_threshold)
        # a node faulty both ways is one (inbound) verdict, as in the alert rules
        if node not in unreachable | inbound and total and lossy / total > share_threshold:
            outbound.add(node)
            found.append(
                Verdict(
                    "outbound",
                    node,
                    f"{node}: loses packets to {lossy}/{total}"
                    f" destinations (outbound problem at {node})",
                )
            )
    explained = unreachable | inbound | outbound
    for (source, destination), ratio in sorted(loss.items()):
        if ratio > loss_threshold and source not in explained and destination not in explained:
            found.append(
                Verdict(
                    "link",
                    f"{source} → {destination}",
                    f"{source} → {destination}: {ratio:.0%} loss, other paths clean (link)",
                )
            )
    slow_into = {d: [p for p in rtt if p[1] == d] for _, d in rtt}
    for node, pairs in sorted(slow_into.items()):
        slow = [p for p in pairs if rtt[p] > rtt_threshold_ms]
        if pairs and len(slow) / len(pairs) > share_threshold:
            mean = sum(rtt[p] for p in pairs) / len(pairs)
            found.append(
                Verdict(
                    "slow",
                    node,
                    f"{node}: slow, mean RTT {mean:.1f} ms from {len(slow)}/{len(pairs)} sources",
                )
            )
    return found


def render_matrix(diagnosis: Diagnosis) -> str:
    nodes = diagnosis.nodes
    width = max([len(n) for n in nodes] + [6]) + 2
    lines = [
        f"packet loss % over the last {diagnosis.window} (rows: source, columns: "
        f"destination; from {diagnosis.source})",
        " " * width + "".join(f"{n:>{width}}" for n in nodes),
    ]
    for source in nodes:
        row = diagnosis.loss.get(source, {})
        cells = [
            "-" if source == d else f"{row[d] * 100:.1f}" if d in row else "n/a" for d in nodes
        ]
        lines.append(f"{source:<{width}}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


def render_text(diagnosis: Diagnosis) -> str:
    lines = [render_matrix(diagnosis), ""]
    if diagnosis.verdicts:
        lines += [v.text for v in diagnosis.verdicts]
    else:
        lines.append(f"no loss in the last {diagnosis.window}")
    return "\n".join(lines)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"node-ping-exporter diagnose: {message}", file=sys.stderr)
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
    args = parser.parse_args(argv)
    if not re.fullmatch(r"([0-9]+(ms|s|m|h|d|w|y))+", args.window):
        parser.error(f"argument --window: '{args.window}' is not a Prometheus duration (e.g. 10m)")
    try:
        result = diagnose(
            Prometheus(args.prometheus),
            args.window,
            args.selector,
            loss_threshold=args.loss_threshold,
            rtt_threshold_ms=args.rtt_threshold_ms,
        )
    except DiagnoseError as exc:
        print(f"node-ping-exporter diagnose: {exc}", file=sys.stderr)
        return 2
    if args.output == "json":
        print(json.dumps(asdict(result) | {"problem": result.problem}, indent=2))
    else:
        print(render_text(result))
    return 1 if result.problem else 0
