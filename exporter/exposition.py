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

from .metric_table import (
    EXTERNAL_LABELS,
    EXTERNAL_PEER_FAMILIES,
    NODE_LABELS,
    NODE_PEER_FAMILIES,
    Family,
)
from .peers import Peer, PeerKey, PeerKind, PeerTable

PEER_FAMILIES: tuple[tuple[PeerKind, tuple[Family, ...]], ...] = (
    (PeerKind.NODE, NODE_PEER_FAMILIES),
    (PeerKind.EXTERNAL, EXTERNAL_PEER_FAMILIES),
)


def escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(family: Family, openmetrics: bool) -> str:
    name = family.name
    if openmetrics and family.type == "counter":
        name = name.removesuffix("_total")
    return f"# HELP {name} {family.help}\n# TYPE {name} {family.type}\n"


class PeerRenderer:
    def __init__(self, node_name: str) -> None:
        self.node_name = node_name
        self._labels: dict[PeerKey, str] = {}

    def _label_text(self, key: PeerKey) -> str:
        if key.kind is PeerKind.NODE:
            names, values = NODE_LABELS, (self.node_name, key.name, key.address)
        else:
            names, values = EXTERNAL_LABELS, (self.node_name, key.name, key.host)
        pairs = (f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
        return "{" + ",".join(pairs) + "}"

    def render(self, peers: list[Peer], openmetrics: bool) -> str:
        # Scrapes run in several HTTP threads at once: each reads the cache it found and
        # builds its own for the peers of now, swapped in whole at the end.
        cache, fresh = self._labels, {}
        for peer in peers:
            fresh[peer.key] = cache.get(peer.key) or self._label_text(peer.key)
        out: list[str] = []
        for kind, families in PEER_FAMILIES:
            sent, received, rtt_sum, rtt_sq, low, high, mdev, outages, outage_s = (
                f.name for f in families
            )
            lines: list[list[str]] = [[] for _ in families]
            for peer in peers:
                if peer.key.kind is not kind:
                    continue
                labels = fresh[peer.key]
                n_sent, n_received, total, squares = peer.stats.counters()
                lines[0].append(f"{sent}{labels} {n_sent}\n")
                lines[1].append(f"{received}{labels} {n_received}\n")
                lines[2].append(f"{rtt_sum}{labels} {total!r}\n")
                lines[3].append(f"{rtt_sq}{labels} {squares!r}\n")
                summary = peer.stats.window_summary()
                if summary is not None:  # no reply in the window: absent, never 0
                    lines[4].append(f"{low}{labels} {summary[0]!r}\n")
                    lines[5].append(f"{high}{labels} {summary[1]!r}\n")
                    lines[6].append(f"{mdev}{labels} {summary[2]!r}\n")
                n_outages, seconds = peer.stats.outage_totals()
                lines[7].append(f"{outages}{labels} {n_outages}\n")
                lines[8].append(f"{outage_s}{labels} {seconds!r}\n")
            for family, samples in zip(families, lines, strict=True):
                out.append(_header(family, openmetrics))
                out.extend(samples)
        self._labels = fresh
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
