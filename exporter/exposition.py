"""Rendering the metrics: per-peer series on a fast path, the rest by prometheus_client.

Per-peer families are N series each (5000 peers -> 35 000 lines); building them
as prometheus_client Metric/Sample objects takes most of half a second and
tens of MB of garbage per scrape. They are written here directly as text, with
each peer's label set formatted once and cached. Everything else (self-metrics,
process metrics, histograms) goes through prometheus_client's encoders, whose
output is appended, so content negotiation (Prometheus text 0.0.4 or
OpenMetrics 1.0) works the same for both parts.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .peers import Peer, PeerKey, PeerKind, PeerTable

NODE_LABELS = ("source_node", "destination_node", "destination_node_ip_address")
EXTERNAL_LABELS = ("source_node", "destination_name", "destination_host")

PREFIXES = ((PeerKind.NODE, "kube_node_ping"), (PeerKind.EXTERNAL, "external_ping"))
# (suffix, type, help) of the per-peer families; the same for both prefixes.
PEER_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("packets_sent_total", "counter", "Echo requests resolved (answered or timed out)."),
    ("packets_received_total", "counter", "Echo replies received within the timeout."),
    ("rtt_milliseconds_total", "counter", "Sum of round-trip times of received replies, ms."),
    (
        "rtt_squared_milliseconds_total",
        "counter",
        "Sum of squared round-trip times, ms^2 (for mdev over any window).",
    ),
    ("rtt_min", "gauge", "Minimum RTT over the last --window probes, ms."),
    ("rtt_max", "gauge", "Maximum RTT over the last --window probes, ms."),
    (
        "rtt_mdev",
        "gauge",
        "RTT mean deviation (as iputils ping) over the last --window probes, ms.",
    ),
)


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(name: str, kind: str, doc: str, openmetrics: bool) -> str:
    family = name.removesuffix("_total") if openmetrics and kind == "counter" else name
    return f"# HELP {family} {doc}\n# TYPE {family} {kind}\n"


class PeerRenderer:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._labels: dict[PeerKey, str] = {}

    def _label_text(self, key: PeerKey) -> str:
        text = self._labels.get(key)
        if text is None:
            if key.kind is PeerKind.NODE:
                names, values = NODE_LABELS, (self.node_name, key.name, key.address)
            else:
                names, values = EXTERNAL_LABELS, (self.node_name, key.name, key.host)
            text = (
                "{"
                + ",".join(
                    f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)
                )
                + "}"
            )
            self._labels[key] = text
        return text

    def render(self, peers: list[Peer], openmetrics: bool) -> str:
        self._labels = {p.key: self._labels[p.key] for p in peers if p.key in self._labels}
        out: list[str] = []
        for kind, prefix in (
            (PeerKind.NODE, "kube_node_ping"),
            (PeerKind.EXTERNAL, "external_ping"),
        ):
            lines: list[list[str]] = [[] for _ in PEER_FAMILIES]
            sent, received, rtt_sum, rtt_sq, low, high, mdev = lines
            for peer in peers:
                if peer.key.kind is not kind:
                    continue
                labels = self._label_text(peer.key)
                n_sent, n_received, total, squares = peer.stats.counters()
                sent.append(f"{prefix}_packets_sent_total{labels} {n_sent}\n")
                received.append(f"{prefix}_packets_received_total{labels} {n_received}\n")
                rtt_sum.append(f"{prefix}_rtt_milliseconds_total{labels} {total!r}\n")
                rtt_sq.append(f"{prefix}_rtt_squared_milliseconds_total{labels} {squares!r}\n")
                summary = peer.stats.window_summary()
                if summary is not None:  # no reply in the window: absent, never 0
                    low.append(f"{prefix}_rtt_min{labels} {summary[0]!r}\n")
                    high.append(f"{prefix}_rtt_max{labels} {summary[1]!r}\n")
                    mdev.append(f"{prefix}_rtt_mdev{labels} {summary[2]!r}\n")
            for (suffix, metric_type, doc), samples in zip(PEER_FAMILIES, lines, strict=True):
                out.append(_header(f"{prefix}_{suffix}", metric_type, doc, openmetrics))
                out.extend(samples)
        return "".join(out)


class Exposition:
    """Renders the whole exposition for /metrics and the textfile."""

    def __init__(self, table: PeerTable, node_name: str, registry: CollectorRegistry) -> None:
        self.table = table
        self.peers = PeerRenderer(node_name)
        self.registry = registry

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its content type, negotiated from an HTTP Accept header."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        head = self.peers.render(self.table.snapshot(), openmetrics).encode()
        return head + encoder(self.registry), content_type


Render = Callable[[str], tuple[bytes, str]]
