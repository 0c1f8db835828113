"""The prometheus_client collector: every family but the per-peer series.

Nothing is stored in prometheus_client objects: each scrape or textfile write
asks the peer table and every supervised component for its families, read from
live state. A peer removed from the table is simply not walked, so its series
disappear at once; there are no stale label sets to delete. The per-peer
counters and gauges are rendered by exposition.PeerRenderer.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from . import __version__
from .metric_table import BUILD_INFO
from .peers import PeerTable
from .supervisor import Supervisor


class AgentCollector(Collector):
    def __init__(
        self,
        node_name: str,
        icmp_mode: str,
        table: PeerTable,
        supervisor: Supervisor,
        python_version: str | None = None,
    ) -> None:
        self.node_name = node_name
        self.icmp_mode = icmp_mode
        self.table = table
        self.supervisor = supervisor
        self.python_version = python_version or platform.python_version()

    def collect(self) -> Iterator[Metric]:
        me = self.node_name
        yield from self.table.collect(me)
        yield from self.supervisor.collect()
        yield BUILD_INFO.sample(1, me, __version__, self.icmp_mode, self.python_version)
