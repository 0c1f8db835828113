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

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from .metric_table import (
    EXTERNAL_LABELS,
    EXTERNAL_PEER_FAMILIES,
    FULL_ONLY_PAIR_FAMILIES,
    NODE_LABELS,
    NODE_LARGE_FAMILIES,
    NODE_PEER_FAMILIES,
    NODE_STAMP_FAMILIES,
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
    def __init__(self, node_name: str, full_pair_metrics: bool) -> None:
        self.node_name = node_name
        self._labels: dict[PeerKey, str] = {}
        # Families left out: with N peers each one is N series on every node.
        self._left_out = frozenset() if full_pair_metrics else FULL_ONLY_PAIR_FAMILIES

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
            rows = [(fresh[p.key], _echo_values(p)) for p in peers if p.key.kind is kind]
            out.extend(_block(families, rows, openmetrics, self._left_out))
        stamp_rows = [(fresh[p.key], p.stamp.counters()) for p in peers if p.stamp is not None]
        out.extend(_block(NODE_STAMP_FAMILIES, stamp_rows, openmetrics, self._left_out))
        large_rows = [(fresh[p.key], _large_values(p)) for p in peers if p.large is not None]
        out.extend(_block(NODE_LARGE_FAMILIES, large_rows, openmetrics, self._left_out))
        self._labels = fresh
        return "".join(out)


Row = tuple[str, tuple[float | None, ...]]  # label text, one value per family (None: absent)


def _echo_values(peer: Peer) -> tuple[float | None, ...]:
    """The values of the echo families, in their order; min/max/mdev absent (never 0)
    when the window holds no reply."""
    sent, received, total, squares = peer.stats.counters()
    summary = peer.stats.window_summary() or (None, None, None)
    outages, seconds = peer.stats.outage_totals()
    return (sent, received, total, squares, *summary, outages, seconds)


def _large_values(peer: Peer) -> tuple[float | None, ...]:
    """The size probes' counters, and their size once scheduled (absent before)."""
    assert peer.large is not None
    sent, received, refused, size = peer.large.counters()
    return (sent, received, refused, size or None)


def _block(
    families: tuple[Family, ...], rows: Sequence[Row], openmetrics: bool, left_out: frozenset[str]
) -> list[str]:
    """Each family's header, then its sample from every row (but the families left out)."""
    out: list[str] = []
    for index, family in enumerate(families):
        if family.name in left_out:
            continue
        out.append(_header(family, openmetrics))
        name = family.name
        out.extend(
            f"{name}{labels} {values[index]!r}\n"
            for labels, values in rows
            if values[index] is not None
        )
    return out


class Exposition:
    """Renders the whole exposition for /metrics and the textfile."""

    def __init__(
        self,
        table: PeerTable,
        node_name: str,
        registry: CollectorRegistry,
        full_pair_metrics: bool,
    ) -> None:
        self.table = table
        self.peers = PeerRenderer(node_name, full_pair_metrics)
        self.registry = registry

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its content type, negotiated from an HTTP Accept header."""
        encoder, content_type = choose_encoder(accept)
        openmetrics = content_type.startswith("application/openmetrics-text")
        head = self.peers.render(self.table.snapshot(), openmetrics).encode()
        return head + encoder(self.registry), content_type


Render = Callable[[str], tuple[bytes, str]]
