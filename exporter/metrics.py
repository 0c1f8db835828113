"""Self-metrics and histograms (docs/metrics.md), read from live state at each scrape.

A custom collector in the prometheus_client style: nothing is stored in
prometheus_client objects; every scrape or textfile write reads the engine's
counters and the peer table. The per-peer counters and gauges are rendered by
exposition.PeerRenderer. A peer removed from the table is simply not walked,
so its series disappear at once; there are no stale label sets to delete.
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
from .exposition import EXTERNAL_LABELS, NODE_LABELS
from .peers import PeerKind, PeerTable
from .stats import Histogram
from .textfile import TextfileWriter


@dataclass
class AgentState:
    """Everything the collector reads; filled in by the app as parts start."""

    node_name: str
    icmp_mode: str
    table: PeerTable
    engine: EngineStats
    discovery: list[DiscoveryState] = field(default_factory=list)
    resolve_errors: dict[str, int] = field(default_factory=dict)
    external_hosts: dict[str, str] = field(default_factory=dict)  # target name -> host
    external_addresses: dict[str, str] = field(default_factory=dict)  # name -> last address
    exceptions: int = 0
    textfile: TextfileWriter | None = None


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
        if self.per_peer_histogram:
            per_peer = _histogram(
                "kube_node_ping_peer_rtt_seconds",
                "RTT of received replies per peer, seconds (opt-in).",
                list(NODE_LABELS),
            )
            for peer in state.table.snapshot():
                key = peer.key
                if key.kind is PeerKind.NODE and peer.stats.histogram is not None:
                    _add_histogram(per_peer, [me, key.name, key.address], peer.stats.histogram)
            yield per_peer
        yield from self._engine_metrics(me)
        yield from self._self_metrics(me)

    def _engine_metrics(self, me: str) -> Iterator[Metric]:
        engine = self.state.engine
        for name, doc, hist in (
            (
                "kube_node_ping_rtt_seconds",
                "RTT of received replies from all peer nodes, seconds.",
                self.state.table.histograms[PeerKind.NODE],
            ),
            (
                "external_ping_rtt_seconds",
                "RTT of received replies from external targets, seconds.",
                self.state.table.histograms[PeerKind.EXTERNAL],
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
            "kube_node_ping_skipped_probes",
            "Probes not sent because the agent was stalled past their slot (no burst, no loss).",
            me,
            engine.skipped_probes,
        )
        yield _counter(
            "kube_node_ping_duplicate_replies",
            "Extra replies to a probe that was already answered.",
            me,
            engine.duplicate_replies,
        )
        yield _counter_by(
            "kube_node_ping_send_errors_total",
            "Echo requests the kernel refused to send, by errno.",
            me,
            "reason",
            engine.send_errors,
        )
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
        yield _counter_by(
            "external_ping_resolve_errors_total",
            "Failed DNS lookups of an external target.",
            me,
            "destination_name",
            state.resolve_errors,
        )
        target = GaugeMetricFamily(
            "external_ping_target_info",
            "The address an external target is probed at now (its last good resolution).",
            labels=[*EXTERNAL_LABELS, "destination_ip_address"],
        )
        for name, address in sorted(dict(state.external_addresses).items()):
            target.add_metric([me, name, state.external_hosts.get(name, ""), address], 1)
        yield target
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


def _counter_by(
    name: str, doc: str, me: str, label: str, counts: dict[str, int]
) -> CounterMetricFamily:
    """A counter with one series per key of ``counts`` (copied: another thread writes it)."""
    family = CounterMetricFamily(name, doc, labels=["source_node", label])
    for key, count in sorted(dict(counts).items()):
        family.add_metric([me, key], count)
    return family


def _gauge(name: str, doc: str, me: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["source_node"])
    family.add_metric([me], value)
    return family
