"""Every metric family the agent exposes, declared once, by its full name.

The contract (docs/metrics.md, checked against this table by a test) lives
here: name, type, help and labels. The per-peer families are rendered as text
by exposition.PeerRenderer (fast path, N series each); every other family is
built from its entry here by the component that owns the numbers, through
prometheus_client, whose encoders also handle OpenMetrics. Counter names carry
``_total`` here as they appear in the text format.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

MetricType = Literal["counter", "gauge", "histogram"]

NODE_LABELS = ("source_node", "destination_node", "destination_node_ip_address")
EXTERNAL_LABELS = ("source_node", "destination_name", "destination_host")
SOURCE = ("source_node",)


@dataclass(frozen=True)
class Family:
    name: str
    type: MetricType
    help: str
    labels: tuple[str, ...]

    def empty(self) -> Metric:
        """The family with no samples yet, as prometheus_client builds it."""
        labels = list(self.labels)
        if self.type == "counter":
            return CounterMetricFamily(self.name.removesuffix("_total"), self.help, labels=labels)
        if self.type == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=labels)
        return HistogramMetricFamily(self.name, self.help, labels=labels)

    def sample(self, value: float, *label_values: str) -> Metric:
        """The family with one sample (counter or gauge)."""
        return self.samples([(label_values, value)])

    def samples(self, rows: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
        """The family with one sample per (label values, value) row (counter or gauge)."""
        family = self.empty()
        for values, value in rows:
            family.add_metric(list(values), value)  # type: ignore[attr-defined]
        return family


# -- per peer: one series per probed address (rendered by exposition.PeerRenderer) ---------
# Order matters: PeerRenderer fills them from (sent, received, rtt sum, rtt² sum, min, max, mdev,
# outages, outage seconds).

_SENT = "Echo requests resolved (answered or timed out)."
_RECEIVED = "Echo replies received within the timeout."
_RTT_SUM = "Sum of round-trip times of received replies, ms."
_RTT_SQUARED = "Sum of squared round-trip times, ms^2 (for mdev over any window)."
_RTT_MIN = "Minimum RTT over the last --window probes, ms."
_RTT_MAX = "Maximum RTT over the last --window probes, ms."
_RTT_MDEV = "RTT mean deviation (as iputils ping) over the last --window probes, ms."
_OUTAGES = "Outages that ended: 10 or more probes in a row lost over 3 s or more, then a reply."
_OUTAGE_SECONDS = "Length of the ended outages, seconds (first lost probe to first answered one)."

NODE_PEER_FAMILIES = (
    Family("kube_node_ping_packets_sent_total", "counter", _SENT, NODE_LABELS),
    Family("kube_node_ping_packets_received_total", "counter", _RECEIVED, NODE_LABELS),
    Family("kube_node_ping_rtt_milliseconds_total", "counter", _RTT_SUM, NODE_LABELS),
    Family("kube_node_ping_rtt_squared_milliseconds_total", "counter", _RTT_SQUARED, NODE_LABELS),
    Family("kube_node_ping_rtt_min", "gauge", _RTT_MIN, NODE_LABELS),
    Family("kube_node_ping_rtt_max", "gauge", _RTT_MAX, NODE_LABELS),
    Family("kube_node_ping_rtt_mdev", "gauge", _RTT_MDEV, NODE_LABELS),
    Family("kube_node_ping_outages_total", "counter", _OUTAGES, NODE_LABELS),
    Family("kube_node_ping_outage_seconds_total", "counter", _OUTAGE_SECONDS, NODE_LABELS),
)
# Per-pair families that neither the rules nor the dashboards read, N·(N-1) series
# each: exported only with ``--pair-metrics full`` (docs/sizing.md). The window's
# min/max/mdev of each pair stay on /metrics for the few external targets.
FULL_ONLY_PAIR_FAMILIES = frozenset(
    {
        "kube_node_ping_rtt_min",
        "kube_node_ping_rtt_max",
        "kube_node_ping_rtt_mdev",
        "kube_node_ping_stamp_rtt_milliseconds_total",
    }
)
EXTERNAL_PEER_FAMILIES = (
    Family("external_ping_packets_sent_total", "counter", _SENT, EXTERNAL_LABELS),
    Family("external_ping_packets_received_total", "counter", _RECEIVED, EXTERNAL_LABELS),
    Family("external_ping_rtt_milliseconds_total", "counter", _RTT_SUM, EXTERNAL_LABELS),
    Family(
        "external_ping_rtt_squared_milliseconds_total", "counter", _RTT_SQUARED, EXTERNAL_LABELS
    ),
    Family("external_ping_rtt_min", "gauge", _RTT_MIN, EXTERNAL_LABELS),
    Family("external_ping_rtt_max", "gauge", _RTT_MAX, EXTERNAL_LABELS),
    Family("external_ping_rtt_mdev", "gauge", _RTT_MDEV, EXTERNAL_LABELS),
    Family("external_ping_outages_total", "counter", _OUTAGES, EXTERNAL_LABELS),
    Family("external_ping_outage_seconds_total", "counter", _OUTAGE_SECONDS, EXTERNAL_LABELS),
)

# STAMP (RFC 8762) towards each node's reflector: forward loss is 1 - reached/sent, reverse
# loss 1 - received/reached. Rendered by exposition.PeerRenderer from (sent, reached,
# received, rtt sum), in this order.
NODE_STAMP_FAMILIES = (
    Family(
        "kube_node_ping_stamp_packets_sent_total",
        "counter",
        "STAMP test packets resolved (answered or timed out).",
        NODE_LABELS,
    ),
    Family(
        "kube_node_ping_stamp_packets_reached_total",
        "counter",
        "STAMP test packets that reached the peer's reflector (from its own sequence numbers).",
        NODE_LABELS,
    ),
    Family(
        "kube_node_ping_stamp_packets_received_total",
        "counter",
        "STAMP replies received within the timeout.",
        NODE_LABELS,
    ),
    Family(
        "kube_node_ping_stamp_rtt_milliseconds_total",
        "counter",
        "Sum of STAMP round-trip times, less the time the reflector held each packet, ms.",
        NODE_LABELS,
    ),
)

# Path-MTU probes: one large echo request per pair every --size-probe-interval, never
# fragmented. Rendered by exposition.PeerRenderer from (sent, received, refused, bytes).
NODE_LARGE_FAMILIES = (
    Family(
        "kube_node_ping_large_packets_sent_total",
        "counter",
        "Path-MTU probes resolved (answered, timed out or refused by this node's kernel).",
        NODE_LABELS,
    ),
    Family(
        "kube_node_ping_large_packets_received_total",
        "counter",
        "Path-MTU probes answered within the timeout.",
        NODE_LABELS,
    ),
    Family(
        "kube_node_ping_large_packets_refused_total",
        "counter",
        "Path-MTU probes this node's kernel refused to send (EMSGSIZE: it knows the path "
        "MTU is smaller); not loss on the wire.",
        NODE_LABELS,
    ),
    Family(
        "kube_node_ping_large_packet_bytes",
        "gauge",
        "Size of the path-MTU probe, whole IP packet, bytes.",
        NODE_LABELS,
    ),
)

# -- the peer table -------------------------------------------------------------------------

PEER_RTT = Family(
    "kube_node_ping_peer_rtt_seconds",
    "histogram",
    "RTT of received replies per peer, seconds (opt-in).",
    NODE_LABELS,
)
NODE_RTT = Family(
    "kube_node_ping_rtt_seconds",
    "histogram",
    "RTT of received replies from all peer nodes, seconds.",
    SOURCE,
)
EXTERNAL_RTT = Family(
    "external_ping_rtt_seconds",
    "histogram",
    "RTT of received replies from external targets, seconds.",
    SOURCE,
)
PEERS = Family(
    "kube_node_ping_peers", "gauge", "Peers this node probes, by kind.", (*SOURCE, "kind")
)
DISCOVERED_NODES = Family(
    "kube_node_ping_discovered_nodes",
    "gauge",
    "Nodes discovery knows of (this node excluded), before sampling (--max-peers, --max-pairs).",
    SOURCE,
)

NODE_INFO = Family(
    "kube_node_ping_node_info",
    "gauge",
    "This node as discovery lists it: its topology zone (empty when unknown).",
    (*SOURCE, "zone"),
)
# -- the prober -----------------------------------------------------------------------------

LATE_REPLIES = Family(
    "kube_node_ping_late_replies_total",
    "counter",
    "Replies that arrived after their probe had timed out.",
    SOURCE,
)
SKIPPED_PROBES = Family(
    "kube_node_ping_skipped_probes_total",
    "counter",
    "Probes not sent because the agent was stalled past their slot (no burst, no loss).",
    SOURCE,
)
DUPLICATE_REPLIES = Family(
    "kube_node_ping_duplicate_replies_total",
    "counter",
    "Extra replies to a probe that was already answered.",
    SOURCE,
)
SEND_ERRORS = Family(
    "kube_node_ping_send_errors_total",
    "counter",
    "Echo requests the kernel refused to send, by errno.",
    (*SOURCE, "reason"),
)
EVENT_LOOP_LAG = Family(
    "kube_node_ping_event_loop_lag_seconds",
    "gauge",
    "Worst lateness of the prober's wake-ups over the last 10-20 s.",
    SOURCE,
)

PROBE_INTERVAL = Family(
    "kube_node_ping_probe_interval_seconds",
    "gauge",
    "Seconds between probes to each peer now: --interval, or longer when the peer count needs it.",
    SOURCE,
)

STAMP_SEND_ERRORS = Family(
    "kube_node_ping_stamp_send_errors_total",
    "counter",
    "STAMP test packets the kernel refused to send, by errno.",
    (*SOURCE, "reason"),
)
STAMP_REFLECTOR_PACKETS = Family(
    "kube_node_ping_stamp_reflector_packets_total",
    "counter",
    "Packets at this node's STAMP reflector, by result: reflected, unknown_source (not a "
    "known node's address, or from the reflector port), malformed, not_unicast, "
    "rate_limited, send_error.",
    (*SOURCE, "result"),
)

# -- discovery ------------------------------------------------------------------------------

DISCOVERY_UP = Family(
    "kube_node_ping_discovery_up",
    "gauge",
    "1 while the discovery source syncs, 0 while it fails.",
    (*SOURCE, "source"),
)
DISCOVERY_LAST_SUCCESS = Family(
    "kube_node_ping_discovery_last_success_timestamp_seconds",
    "gauge",
    "Unix time of the discovery source's last successful sync.",
    (*SOURCE, "source"),
)
DISCOVERY_ERRORS = Family(
    "kube_node_ping_discovery_errors_total",
    "counter",
    "Failed discovery syncs (API errors, bad peers file).",
    (*SOURCE, "source"),
)

# -- external targets -----------------------------------------------------------------------

RESOLVE_ERRORS = Family(
    "external_ping_resolve_errors_total",
    "counter",
    "Failed DNS lookups of an external target.",
    (*SOURCE, "destination_name"),
)
TARGET_INFO = Family(
    "external_ping_target_info",
    "gauge",
    "The address an external target is probed at now (its last good resolution).",
    (*EXTERNAL_LABELS, "destination_ip_address"),
)

# -- the agent itself -----------------------------------------------------------------------

EXCEPTIONS = Family(
    "kube_node_ping_exceptions_total", "counter", "Unexpected exceptions in the agent.", SOURCE
)
COMPONENT_RESTARTS = Family(
    "kube_node_ping_component_restarts_total",
    "counter",
    "Restarts of a part of the agent after it failed.",
    (*SOURCE, "component"),
)
HTTP_CLOSED_CONNECTIONS = Family(
    "kube_node_ping_http_closed_connections_total",
    "counter",
    "Connections closed because every slot was taken: evicted (the one idle longest) or refused.",
    (*SOURCE, "reason"),
)
METRICS_AUTH_REQUESTS = Family(
    "kube_node_ping_metrics_auth_requests_total",
    "counter",
    "Requests for /metrics checked with the API server (--metrics-auth kubernetes), by result.",
    (*SOURCE, "result"),
)
TLS_RELOAD_ERRORS = Family(
    "kube_node_ping_tls_reload_errors_total",
    "counter",
    "Changed certificate files that could not be loaded (the last good ones stay in use).",
    SOURCE,
)
TEXTFILE_WRITE_ERRORS = Family(
    "kube_node_ping_textfile_write_errors_total", "counter", "Failed textfile writes.", SOURCE
)
BUILD_INFO = Family(
    "kube_node_ping_build_info",
    "gauge",
    "Agent version and ICMP socket mode.",
    (*SOURCE, "version", "icmp_mode", "python_version"),
)

FAMILIES: tuple[Family, ...] = (
    *NODE_PEER_FAMILIES,
    *EXTERNAL_PEER_FAMILIES,
    *NODE_STAMP_FAMILIES,
    *NODE_LARGE_FAMILIES,
    PEER_RTT,
    NODE_RTT,
    EXTERNAL_RTT,
    PEERS,
    DISCOVERED_NODES,
    NODE_INFO,
    LATE_REPLIES,
    SKIPPED_PROBES,
    DUPLICATE_REPLIES,
    SEND_ERRORS,
    EVENT_LOOP_LAG,
    PROBE_INTERVAL,
    STAMP_SEND_ERRORS,
    STAMP_REFLECTOR_PACKETS,
    DISCOVERY_UP,
    DISCOVERY_LAST_SUCCESS,
    DISCOVERY_ERRORS,
    RESOLVE_ERRORS,
    TARGET_INFO,
    EXCEPTIONS,
    COMPONENT_RESTARTS,
    HTTP_CLOSED_CONNECTIONS,
    METRICS_AUTH_REQUESTS,
    TLS_RELOAD_ERRORS,
    TEXTFILE_WRITE_ERRORS,
    BUILD_INFO,
)
