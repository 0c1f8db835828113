"""The metric contract (docs/metrics.md), rendered from live state at each scrape.

A custom collector in the prometheus_client style: nothing is stored in
prometheus_client objects; every scrape or textfile write walks the peer table
and the engine's counters. A peer removed from the table is simply not walked,
so its series disappear at once — no stale label sets to delete.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from . import __version__
from .discovery import DiscoveryState
from .engine import EngineStats
from .peers import Peer, PeerKind, PeerTable
from .stats import Histogram
from .textfile import TextfileWriter

NODE_LABELS = ["source_node", "destination_node", "destination_node_ip_address"]
EXTERNAL_LABELS = ["source_node", "destination_name", "destination_host"]


@dataclass
class AgentState:
    """Everything the collector reads; filled in by the app as parts start."""

    node_name: str
    icmp_mode: str
    table: PeerTable
    engine: EngineStats
    discovery: list[DiscoveryState] = field(default_factory=list)
    resolve_errors: dict[str, int] = field(default_factory=dict)
    exceptions: int = 0
    textfile: TextfileWriter | None = None


class PeerFamilies:
    """The per-peer families of one prefix (kube_node_ping or external_ping)."""

    def __init__(self, prefix: str, labels: list[str]) -> None:
        self.sent = CounterMetricFamily(
            f"{prefix}_packets_sent_total",
            "Echo requests resolved (answered or timed out).",
            labels=labels,
        )
        self.received = CounterMetricFamily(
            f"{prefix}_packets_received_total",
            "Echo replies received within the timeout.",
            labels=labels,
        )
        self.rtt_sum = CounterMetricFamily(
            f"{prefix}_rtt_milliseconds_total",
            "Sum of round-trip times of received replies, ms.",
            labels=labels,
        )
        self.rtt_squared_sum = CounterMetricFamily(
            f"{prefix}_rtt_squared_milliseconds_total",
            "Sum of squared round-trip times, ms² (for mdev over any window).",
            labels=labels,
        )
        self.rtt_min = GaugeMetricFamily(
            f"{prefix}_rtt_min", "Minimum RTT over the last --window probes, ms.", labels=labels
        )
        self.rtt_max = GaugeMetricFamily(
            f"{prefix}_rtt_max", "Maximum RTT over the last --window probes, ms.", labels=labels
        )
        self.rtt_mdev = GaugeMetricFamily(
            f"{prefix}_rtt_mdev",
            "RTT mean deviation (as iputils ping) over the last --window probes, ms.",
            labels=labels,
        )

    def add(self, values: list[str], peer: Peer) -> None:
        sent, received, rtt_sum, rtt_sq = peer.stats.counters()
        self.sent.add_metric(values, sent)
        self.received.add_metric(values, received)
        self.rtt_sum.add_metric(values, rtt_sum)
        self.rtt_squared_sum.add_metric(values, rtt_sq)
        summary = peer.stats.window_summary()
        if summary is not None:  # no reply in the window: the gauges are absent, never 0
            low, high, mdev = summary
            self.rtt_min.add_metric(values, low)
            self.rtt_max.add_metric(values, high)
            self.rtt_mdev.add_metric(values, mdev)

    def all(self) -> list[Metric]:
        return [
            self.sent,
            self.received,
            self.rtt_sum,
            self.rtt_squared_sum,
            self.rtt_min,
            self.rtt_max,
            self.rtt_mdev,
        ]


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _add_histogram(family: HistogramMetricFamily, values: list[str], hist: Histogram) -> None:
    buckets, total = hist.cumulative()
    family.add_metric(values, buckets, total)


class AgentCollector(Collector):
    def __init__(self, state: AgentState, per_peer_histogram: bool) -> None:
        self.state = state
        self.per_peer_histogram = per_peer_histogram

    def collect(self) -> Iterator[Metric]:
        state = self.state
        me = state.node_name
        peers = state.table.snapshot()
        node = PeerFamilies("kube_node_ping", NODE_LABELS)
        external = PeerFamilies("external_ping", EXTERNAL_LABELS)
        per_peer = _histogram(
            "kube_node_ping_peer_rtt_seconds",
            "RTT of received replies per peer, seconds (opt-in).",
            NODE_LABELS,
        )
        for peer in peers:
            key = peer.key
            if key.kind is PeerKind.NODE:
                values = [me, key.name, key.address]
                node.add(values, peer)
                if peer.stats.histogram is not None:
                    _add_histogram(per_peer, values, peer.stats.histogram)
            else:
                external.add([me, key.name, key.host], peer)
        yield from node.all()
        yield from external.all()
        if self.per_peer_histogram:
            yield per_peer
        yield from self._engine_metrics(me)
        yield from self._self_metrics(me)

    def _engine_metrics(self, me: str) -> Iterator[Metric]:
        engine = self.state.engine
        for name, doc, hist in (
            (
                "kube_node_ping_rtt_seconds",
                "RTT of received replies from all peer nodes, seconds.",
                engine.histogram,
            ),
            (
                "external_ping_rtt_seconds",
                "RTT of received replies from external targets, seconds.",
                engine.external_histogram,
            ),
        ):
            family = _histogram(name, doc, ["source_node"])
            _add_histogram(family, [me], hist)
            yield family
        yield _counter(
            "kube_node_ping_late_replies",
            "Replies that arrived after their probe had timed out.",
            me,
            engine.late_replies,
        )
        yield _counter(
            "kube_node_ping_duplicate_replies",
            "Extra replies to a probe that was already answered.",
            me,
            engine.duplicate_replies,
        )
        errors = CounterMetricFamily(
            "kube_node_ping_send_errors_total",
            "Echo requests the kernel refused to send, by errno.",
            labels=["source_node", "reason"],
        )
        for reason, count in sorted(dict(engine.send_errors).items()):
            errors.add_metric([me, reason], count)
        yield errors
        yield _gauge(
            "kube_node_ping_event_loop_lag_seconds",
            "Worst lateness of the prober's wake-ups over the last 10-20 s.",
            me,
            engine.loop_lag_seconds,
        )

    def _self_metrics(self, me: str) -> Iterator[Metric]:
        state = self.state
        yield _counter(
            "kube_node_ping_exceptions", "Unexpected exceptions in the agent.", me, state.exceptions
        )
        if state.textfile is not None:
            yield _counter(
                "kube_node_ping_textfile_write_errors",
                "Failed textfile writes.",
                me,
                state.textfile.write_errors,
            )
        peers = GaugeMetricFamily(
            "kube_node_ping_peers",
            "Peers this node probes, by kind.",
            labels=["source_node", "kind"],
        )
        for kind in PeerKind:
            peers.add_metric([me, kind.value], state.table.count(kind))
        yield peers
        yield _gauge(
            "kube_node_ping_discovered_nodes",
            "Nodes discovery knows of (this node excluded), before --max-peers.",
            me,
            state.table.discovered_nodes,
        )
        up = GaugeMetricFamily(
            "kube_node_ping_discovery_up",
            "1 while the discovery source syncs, 0 while it fails.",
            labels=["source_node", "source"],
        )
        last = GaugeMetricFamily(
            "kube_node_ping_discovery_last_success_timestamp_seconds",
            "Unix time of the discovery source's last successful sync.",
            labels=["source_node", "source"],
        )
        errors = CounterMetricFamily(
            "kube_node_ping_discovery_errors_total",
            "Failed discovery syncs (API errors, bad peers file).",
            labels=["source_node", "source"],
        )
        for d in state.discovery:
            up.add_metric([me, d.source], 1 if d.up else 0)
            last.add_metric([me, d.source], d.last_success)
            errors.add_metric([me, d.source], d.errors)
        yield from (up, last, errors)
        resolve = CounterMetricFamily(
            "external_ping_resolve_errors_total",
            "Failed DNS lookups of an external target.",
            labels=["source_node", "destination_name"],
        )
        for name, count in sorted(dict(state.resolve_errors).items()):
            resolve.add_metric([me, name], count)
        yield resolve
        info = GaugeMetricFamily(
            "kube_node_ping_build_info",
            "Agent version and ICMP socket mode.",
            labels=["source_node", "version", "icmp_mode", "python_version"],
        )
        info.add_metric([me, __version__, state.icmp_mode, platform.python_version()], 1)
        yield info


def _counter(name: str, doc: str, me: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["source_node"])
    family.add_metric([me], value)
    return family


def _gauge(name: str, doc: str, me: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["source_node"])
    family.add_metric([me], value)
    return family
