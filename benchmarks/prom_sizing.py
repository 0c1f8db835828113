"""Benchmark: what Prometheus pays for node-ping-exporter at 50, 300 and 1000 nodes.

    python -m benchmarks.prom_sizing [--runs 50:all,300:auto,1000:20] [--faults zone-split]

**A simulation**, because this machine cannot run 1000 agents: one process serves,
for every simulated node, what that node's agent serves on /metrics. The per-pair
families are rendered by the agent's own code (exporter.exposition.PeerRenderer)
from a fault model; the rest of the body is tests/golden/metrics.prom — the
agent's output byte for byte, pinned by test_golden_exposition — with the node's
name, zone and peer count put in, plus prometheus_client's process families. A real
Prometheus (the one on PATH) scrapes every simulated node with the labels the
chart's ServiceMonitor gives (job, instance and node = the node, namespace) and runs
the project's rules. Nothing leaves loopback.

**Time-scaled by 1/6**: Prometheus scrapes and evaluates every 5 s instead of the
chart's 30 s, and every rule window, every `for` and the probe intervals are a sixth
of the shipped ones (lossWindow 30 s, establishedAfter 100 s, 6 probes per peer per
second). Each evaluation then reads as many samples per series as with the shipped
settings, so series, memory and query latency are those of a cluster on the
shipped settings, and a planted fault is judged within a minute. The ingest rate
is six times the shipped one: samples/s is printed for a 30 s scrape (series /
30 s) beside what this run ingested.

**The fault model** (lab.faults.Fault, the lab's vocabulary): after the pairs are
established, ``--faults nodes`` (default) takes one node down (its packets lost
both ways, its agent unreachable), makes another lose 30 % of what arrives at it
and cuts one link one way; ``--faults zone-split`` cuts zone-a off from the other
two zones (Prometheus still reaches both sides, as in the lab). The run reads back
which verdicts ``diagnose`` names, against the planted ones; on a sample the bad
link is chosen among the probed pairs (a link nobody probes cannot be
seen: docs/sizing.md says so). A background of 0.1 % random loss on every path
keeps the matrix from being flattering.

**What the scaling does not keep**: Prometheus evaluates the rules and ingests six
times as often: an evaluation competes for the cores with six times the work per
second it would at 30 s, so rule-evaluation times are upper bounds, and a group
that takes longer than 5 s here skips evaluations (printed) where at 30 s it
would not.

Per run it prints: series per node and in total, samples/s, Prometheus RSS, the
rule groups' evaluation time, the dashboard's loss-matrix query latency, the time
``diagnose`` takes, and the verdicts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.process_collector import ProcessCollector

from exporter import rules
from exporter.config import Settings
from exporter.diagnose import Prometheus, diagnose
from exporter.exposition import PeerRenderer
from exporter.metric_table import NODE_LARGE_FAMILIES, NODE_PEER_FAMILIES, NODE_STAMP_FAMILIES
from exporter.peers import Peer, PeerKey, PeerKind
from exporter.sampling import choose_peers, peers_per_node
from lab.controlplane import free_port
from lab.faults import Fault, directions

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "metrics.prom"
DASHBOARD = ROOT / "dashboards" / "node-connectivity.json"
MATRIX_PANEL = "Packet loss matrix (%, over the dashboard range)"

DEFAULT_MAX_PAIRS = int(Settings.model_fields["max_pairs"].default)
SCALE = 6  # shipped durations / this run's
SCRAPE_SECONDS = 30 / SCALE
PROBE_INTERVAL = 1.0 / SCALE  # the chart's 1 s
SIZE_PROBE_EVERY = 10  # probes (the agent's 10 s at 1 s)
LARGE_BYTES = 1500
BACKGROUND_LOSS = 0.001
ZONES = ("zone-a", "zone-b", "zone-c")
PER_PAIR = {f.name for f in (*NODE_PEER_FAMILIES, *NODE_STAMP_FAMILIES, *NODE_LARGE_FAMILIES)}


def scaled(duration: str) -> str:
    """A Prometheus duration divided by SCALE, in whole seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    seconds = sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))
    return f"{max(1, round(seconds / SCALE))}s"


def scaled_rules() -> str:
    """The shipped rules with every window and every `for` divided by SCALE."""
    config = {k: scaled(v) for k, v in rules.defaults().items() if k.endswith(("Window", "After"))}
    text = rules.render(config)
    return re.sub(r"^(\s+for: )(\S+)$", lambda m: m[1] + scaled(m[2]), text, flags=re.M)


# -- the fault model ------------------------------------------------------------------


LOSS_FAULTS = ("isolate", "node-in", "node-out", "link", "partition")  # what the model drops


def hits(fault: Fault, source: str, destination: str) -> bool:
    """Whether a packet from ``source`` to ``destination`` crosses the fault: the
    lab's own (from, to) node groups, an empty group meaning any node."""
    if fault.kind not in LOSS_FAULTS:
        raise ValueError(f"the simulation has no model of {fault.kind!r} faults")
    return any(
        (not senders or source in senders) and (not receivers or destination in receivers)
        for senders, receivers in directions(fault)
    )


@dataclass
class Network:
    """Which faults act now, and the chance a packet gets through a direction."""

    faults: list[Fault] = field(default_factory=list)
    down: set[str] = field(default_factory=set)  # nodes whose agent cannot be scraped

    def passes(self, source: str, destination: str, udp: bool) -> float:
        chance = 1 - BACKGROUND_LOSS
        for fault in self.faults:
            if fault.protocol and (fault.protocol == "udp") != udp:
                continue
            if hits(fault, source, destination):
                chance *= 1 - fault.percent / 100
        return chance


def draw(rng: random.Random, count: int, chance: float) -> int:
    """How many of ``count`` packets get through, each with ``chance``."""
    if chance >= 1:
        return count
    if count > 50:  # a normal approximation past that: one draw, not one per packet
        mean = count * chance
        spread = math.sqrt(count * chance * (1 - chance))
        return min(count, max(0, round(rng.gauss(mean, spread))))
    return sum(rng.random() < chance for _ in range(count))


class _EchoStats:
    """What PeerRenderer reads of a peer's echo statistics, advanced by the model."""

    def __init__(self, rtt_ms: float) -> None:
        self.rtt_ms = rtt_ms
        self.sent = self.received = 0
        self.rtt_sum = self.rtt_squared = 0.0
        self.replied_lately = False  # any reply since the last advance: ≈ the agent's window

    def counters(self) -> tuple[int, int, float, float]:
        return self.sent, self.received, self.rtt_sum, self.rtt_squared

    def window_summary(self) -> tuple[float, float, float] | None:
        """Like the agent's: no min/max/mdev once a window holds no reply (a dead pair)."""
        if not self.replied_lately:
            return None
        return self.rtt_ms * 0.8, self.rtt_ms * 1.3, self.rtt_ms * 0.1

    def outage_totals(self) -> tuple[int, float]:
        return 0, 0.0


class _StampStats:
    def __init__(self) -> None:
        self.sent = self.reached = self.received = 0
        self.rtt_sum = 0.0

    def counters(self) -> tuple[int, int, int, float]:
        return self.sent, self.reached, self.received, self.rtt_sum


class _LargeStats:
    def __init__(self) -> None:
        self.sent = self.received = 0

    def counters(self) -> tuple[int, int, int, int]:
        return self.sent, self.received, 0, LARGE_BYTES


@dataclass
class SimulatedPeer:
    """One probed pair as the agent's renderer sees a Peer."""

    key: PeerKey
    stats: _EchoStats
    stamp: _StampStats
    large: _LargeStats
    probes: int = 0  # probe slots elapsed, echo and STAMP alike


class SimulatedNode:
    def __init__(
        self, name: str, zone: str, peers: list[SimulatedPeer], full_pair_metrics: bool
    ) -> None:
        self.name, self.zone, self.peers = name, zone, peers
        self.renderer = PeerRenderer(name, full_pair_metrics)
        self.rng = random.Random(name)

    def advance(self, elapsed: float, network: Network) -> None:
        """Every peer's counters up to ``elapsed`` seconds of probing."""
        due = int(elapsed / PROBE_INTERVAL)
        me, rng = self.name, self.rng
        for peer in self.peers:
            new = due - peer.probes
            if new <= 0:
                continue
            peer.probes = due
            there = peer.key.name
            out_icmp, back_icmp = network.passes(me, there, False), network.passes(there, me, False)
            echo = draw(rng, new, out_icmp * back_icmp)
            stats = peer.stats
            stats.sent += new
            stats.received += echo
            stats.replied_lately = echo > 0
            stats.rtt_sum += echo * stats.rtt_ms
            stats.rtt_squared += echo * stats.rtt_ms**2
            reached = draw(rng, new, network.passes(me, there, True))
            back = draw(rng, reached, network.passes(there, me, True))
            stamp = peer.stamp
            stamp.sent += new
            stamp.reached += reached
            stamp.received += back
            stamp.rtt_sum += back * stats.rtt_ms
            large = due // SIZE_PROBE_EVERY - peer.large.sent
            if large > 0:
                peer.large.sent += large
                peer.large.received += draw(rng, large, out_icmp * back_icmp)


def static_template() -> list[str]:
    """The golden file's non-pair lines: the agent's own output for node-0."""
    lines = []
    family = ""
    for line in GOLDEN.read_text().splitlines(keepends=True):
        if line.startswith("# HELP "):
            family = line.split()[2]
        if family in PER_PAIR or family.startswith("external_") or "external" in line:
            continue
        lines.append(line)
    return lines


def static_part(template: list[str], node: SimulatedNode, process: str) -> str:
    """The non-pair families as the agent renders them, for this node."""
    lines = []
    for line in template:
        line = line.replace('source_node="node-0"', f'source_node="{node.name}"')
        line = line.replace('zone="zone-a"', f'zone="{node.zone}"')
        if line.startswith('kube_node_ping_peers{kind="node"'):
            line = re.sub(r" \S+$", f" {float(len(node.peers))}", line)
        lines.append(line)
    return "".join(lines) + process


def build_nodes(count: int, max_peers: int, full_pair_metrics: bool) -> list[SimulatedNode]:
    names = [f"node-{i:04d}" for i in range(count)]
    address = {n: f"198.18.{i // 250}.{i % 250 + 1}" for i, n in enumerate(names)}
    zones = {n: ZONES[i % len(ZONES)] for i, n in enumerate(names)}
    rng = random.Random(count)
    nodes = []
    for name in names:
        chosen = sorted(choose_peers(name, names, max_peers, zones))
        peers = [
            SimulatedPeer(
                PeerKey(PeerKind.NODE, other, address[other]),
                _EchoStats(round(rng.uniform(0.2, 0.9), 3)),
                _StampStats(),
                _LargeStats(),
            )
            for other in chosen
        ]
        nodes.append(SimulatedNode(name, zones[name], peers, full_pair_metrics))
    return nodes


# -- serving them -----------------------------------------------------------------------


class Simulation:
    """Every simulated node's /metrics/<node>, on one loopback port."""

    def __init__(self, nodes: list[SimulatedNode]) -> None:
        self.nodes = {n.name: n for n in nodes}
        self.network = Network()
        self.started = time.monotonic()
        registry = CollectorRegistry()
        registry.register(ProcessCollector(registry=None))
        process = generate_latest(registry).decode()
        template = static_template()
        self.static = {n.name: static_part(template, n, process) for n in nodes}
        self.render_seconds = 0.0
        self.scrapes_cut = 0  # Prometheus gave up before the body was sent
        self.lock = threading.Lock()
        simulation = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.removeprefix("/metrics/")
                node = simulation.nodes.get(name)
                if node is None or name in simulation.network.down:
                    self.send_error(404 if node is None else 503)
                    return
                body = simulation.body(node)
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):  # the scrape timed out
                    with simulation.lock:
                        simulation.scrapes_cut += 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def body(self, node: SimulatedNode) -> bytes:
        with self.lock:  # one node at a time: the GIL would serialise them anyway
            begun = time.perf_counter()
            node.advance(time.monotonic() - self.started, self.network)
            peers = cast(list[Peer], node.peers)
            text = node.renderer.render(peers, openmetrics=False) + self.static[node.name]
            self.render_seconds += time.perf_counter() - begun
        return text.encode()

    def targets(self) -> list[dict[str, Any]]:
        return [
            {
                "targets": [f"127.0.0.1:{self.port}"],
                "labels": {
                    "__metrics_path__": f"/metrics/{name}",
                    "instance": name,
                    "node": name,
                    "namespace": "kube-prometheus",
                },
            }
            for name in self.nodes
        ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- Prometheus ---------------------------------------------------------------------------


@dataclass
class RunningPrometheus:
    url: str
    pid: int

    def get(self, path: str, timeout: float = 120) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:
            return cast(bytes, answer.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        return list(json.loads(body)["data"]["result"])

    def own_metric(self, name: str) -> float:
        """The sum of one of Prometheus's own metric families, from its /metrics."""
        total = 0.0
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total

    def slowest_rules(self, count: int) -> list[tuple[float, str]]:
        """The rules that took longest at their last evaluation: (seconds, name)."""
        groups = json.loads(self.get("/api/v1/rules"))["data"]["groups"]
        timed = [(r["evaluationTime"], r["name"]) for g in groups for r in g["rules"]]
        return sorted(timed, reverse=True)[:count]

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status)[1]) / 1024  # type: ignore[index]


@contextmanager
def prometheus(simulation: Simulation, workdir: Path) -> Iterator[RunningPrometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus: not installed (apt-get install prometheus)")
    targets = workdir / "targets.json"
    targets.write_text(json.dumps(simulation.targets()))
    rules_file = workdir / "rules.yml"
    rules_file.write_text(scaled_rules())
    interval = f"{SCRAPE_SECONDS:g}s"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "rule_files": [str(rules_file)],
        "scrape_configs": [{"job_name": "node-ping-exporter",
                            "file_sd_configs": [{"files": [str(targets)]}]}],
    }  # fmt: skip
    (workdir / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={workdir / 'prometheus.yml'}",
         f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
         "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    running = RunningPrometheus(f"http://127.0.0.1:{port}", process.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                running.get("/-/ready", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    log = workdir / "prometheus.log"
                    raise SystemExit(f"prometheus did not start: see {log}") from None
                time.sleep(0.5)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def matrix_query(range_: str) -> str:
    """The dashboard's loss-matrix query, as Grafana sends it for all nodes."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    flat = [p for panel in panels for p in [panel, *panel.get("panels", [])]]
    (panel,) = [p for p in flat if p.get("title") == MATRIX_PANEL]
    expr = str(panel["targets"][0]["expr"])
    for variable, value in (("$job", "node-ping-exporter"), ("$source_node", ".*"),
                            ("$destination_node", ".*"), ("$__range", range_)):  # fmt: skip
        expr = expr.replace(variable, value)
    return expr


# -- one run ------------------------------------------------------------------------------


@dataclass
class Result:
    nodes: int
    setting: str
    pairs: int
    series_per_node: float  # what Prometheus scraped from one node's agent
    scraped: float  # series scraped in all
    recorded: float  # the series the rules record now (node_ping:*)
    samples_30s: float  # samples/s at the chart's 30 s scrape
    ingested: float  # samples/s this time-scaled run appended
    rss_mb: float
    rule_seconds: float  # all rule groups, one evaluation (mean over the faulty minute)
    matrix_seconds: float
    diagnose_seconds: float
    render_share: float  # the simulator's own CPU, seconds per second
    slowest: list[tuple[float, str]]  # rules, at the last evaluation
    missed: float  # rule-group evaluations Prometheus skipped (a group outran the interval)
    scrapes_cut: int
    planted: Verdicts
    found: Verdicts


Verdicts = set[tuple[str, str]]


def plant(
    nodes: list[SimulatedNode], faults: str, rng: random.Random
) -> tuple[list[Fault], Verdicts]:
    """The faults and the verdicts diagnose should name.

    ``nodes``: a node down, a node losing 30 % of what arrives, a link cut one way
    among the probed pairs. ``zone-split``: zone-a cut off from the other zones."""
    if faults == "zone-split":
        side_a = tuple(sorted(n.name for n in nodes if n.zone == ZONES[0]))
        side_b = tuple(sorted(n.name for n in nodes if n.zone != ZONES[0]))
        subject = " | ".join(", ".join(side) for side in sorted((side_a, side_b), key=len))
        return [Fault("partition", group_a=side_a, group_b=side_b)], {("partition", subject)}
    names = [n.name for n in nodes]
    down, lossy = rng.sample(names, 2)
    spare = [n for n in nodes if n.name not in (down, lossy)]
    source = rng.choice(spare)
    target = rng.choice([p.key.name for p in source.peers if p.key.name not in (down, lossy)])
    planted = [
        Fault("isolate", down),
        Fault("node-in", lossy, percent=30),
        Fault("link", source.name, percent=100, peer=target, both_ways=False),
    ]
    expected = {("node_unreachable", down), ("node_loss", lossy),
                ("link_loss", f"{source.name} → {target}")}  # fmt: skip
    probes_back = any(p.key.name == source.name for n in nodes if n.name == target for p in n.peers)
    if probes_back:  # the replies of the target's probes die on the same link
        expected.add(("link_loss", f"{target} → {source.name}"))
    return planted, expected


def run(spec: RunSpec, faults_kind: str, warmup: float, judge: float) -> Result:
    count, max_peers, full = spec
    setting = (f"max-peers {max_peers}" if max_peers else "full mesh") + (
        ", full pair metrics" if full else ""
    )
    nodes = build_nodes(count, max_peers, full)
    faults, expected = plant(nodes, faults_kind, random.Random(count * 7 + max_peers))
    simulation = Simulation(nodes)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="npe-prom-sizing-") as tmp,
            prometheus(simulation, Path(tmp)) as prom,
        ):
            time.sleep(warmup)
            simulation.network.faults = faults
            simulation.network.down = {f.node for f in faults if f.kind == "isolate"}
            render_before = simulation.render_seconds
            appended = prom.own_metric("prometheus_tsdb_head_samples_appended_total")
            begun = time.monotonic()
            rule_seconds = []
            while time.monotonic() - begun < judge:
                time.sleep(SCRAPE_SECONDS)
                rule_seconds.append(prom.own_metric("prometheus_rule_group_last_duration_seconds"))
            span = time.monotonic() - begun
            appended = prom.own_metric("prometheus_tsdb_head_samples_appended_total") - appended
            render_share = (simulation.render_seconds - render_before) / span
            scraped = float(prom.query("sum(scrape_samples_scraped)")[0]["value"][1])
            per_node = scraped / (count - len(simulation.network.down))
            recorded = float(prom.query('count({__name__=~"node_ping:.+"})')[0]["value"][1])
            matrix = []
            for _ in range(3):
                started = time.perf_counter()
                prom.query(matrix_query("1h"))
                matrix.append(time.perf_counter() - started)
            started = time.perf_counter()
            diagnosis = diagnose(Prometheus(prom.url, timeout=120))
            diagnose_seconds = time.perf_counter() - started
            found = {(v.kind, v.subject) for v in diagnosis.verdicts if v.kind != "node_outage"}
            rss = prom.rss_mb()
            slowest = prom.slowest_rules(5)
            missed = prom.own_metric("prometheus_rule_group_iterations_missed_total")
    finally:
        simulation.close()
    pairs = sum(len(n.peers) for n in nodes)
    every_node = per_node * count
    return Result(count, setting, pairs, per_node, every_node, recorded,
                  every_node / 30, appended / span, rss, statistics.mean(rule_seconds),
                  statistics.median(matrix), diagnose_seconds, render_share, slowest,
                  missed, simulation.scrapes_cut, expected, found)  # fmt: skip


def print_table(results: list[Result], version: str) -> None:
    print(f"\n{version}; time-scaled 1/{SCALE} (see the module's docstring)\n")
    print("| nodes | setting | pairs | series/node | series scraped | recorded by rules "
          "| samples/s at 30 s | ingested/s here | Prometheus RSS MB | rule groups s "
          "| matrix query s | diagnose s | verdicts |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        missed, extra = r.planted - r.found, r.found - r.planted
        verdict = "all named" if not missed and not extra else (
            f"missed {sorted(missed)}; extra {sorted(extra)}")  # fmt: skip
        print(f"| {r.nodes} | {r.setting} | {r.pairs} | {r.series_per_node:.0f} "
              f"| {r.scraped:.0f} | {r.recorded:.0f} | {r.samples_30s:.0f} | {r.ingested:.0f} "
              f"| {r.rss_mb:.0f} | {r.rule_seconds:.3f} | {r.matrix_seconds:.3f} "
              f"| {r.diagnose_seconds:.2f} | {verdict} |")  # fmt: skip
    for r in results:
        rules = ", ".join(f"{name} {seconds:.3f}" for seconds, name in r.slowest)
        print(f"\n{r.nodes} {r.setting}: slowest rules (s): {rules}; rule-group "
              f"evaluations skipped: {r.missed:.0f}; scrapes cut: {r.scrapes_cut}")  # fmt: skip
    print("\n(simulator CPU rendering the bodies, s/s: " + ", ".join(
        f"{r.nodes} {r.setting}: {r.render_share:.2f}" for r in results) + ")")  # fmt: skip


RunSpec = tuple[int, int, bool]  # nodes, max peers (0: all), full pair metrics


def parse_runs(text: str) -> list[RunSpec]:
    runs = []
    for part in text.split(","):
        size, _, rest = part.partition(":")
        peers, _, families = rest.partition(":")
        if (
            not size.isdigit()
            or not (peers in ("all", "auto") or peers.isdigit())
            or families not in ("", "full")
        ):
            raise SystemExit(f"--runs: {part!r} is not NODES:all|auto|MAX_PEERS[:full]")
        if peers == "auto":  # what the agents choose with the default --max-pairs
            k = peers_per_node(int(size), 0, DEFAULT_MAX_PAIRS)
        else:
            k = 0 if peers == "all" else int(peers)
        runs.append((int(size), k, families == "full"))
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        default="50:all:full,50:all,50:10,300:auto,1000:auto,1000:20",
        help="NODES:all (full mesh), NODES:auto (the default --max-pairs) or "
        "NODES:MAX_PEERS; :full for --pair-metrics full",
    )
    parser.add_argument("--warmup", type=float, default=130,
                        help="seconds before the faults (establishedAfter is 100 s)")  # fmt: skip
    parser.add_argument("--judge", type=float, default=60, help="seconds of faults")
    parser.add_argument("--faults", choices=("nodes", "zone-split"), default="nodes")
    args = parser.parse_args(argv)
    version = subprocess.run(["prometheus", "--version"], capture_output=True, text=True)
    results = []
    for spec in parse_runs(args.runs):
        result = run(spec, args.faults, args.warmup, args.judge)
        results.append(result)
        print_table([result], version.stdout.split("\n")[0])  # as it goes: runs are long
        sys.stdout.flush()
    print_table(results, version.stdout.split("\n")[0])
    return 0 if all(r.planted == r.found for r in results) else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
