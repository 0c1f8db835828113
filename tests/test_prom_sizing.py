"""The Prometheus sizing simulation (benchmarks/prom_sizing.py) at a size CI can hold.

A real Prometheus scrapes 30 simulated nodes — the agent's own rendering of each
node's pairs, from a fault model — and runs the shipped rules time-scaled by 1/6;
`make bench-prometheus` runs 50 to 1000 nodes (docs/sizing.md). The simulation is
a stand-in for 30 agents (this machine cannot run hundreds); its docstring says so.
Here: the planted faults (a node down, a node losing 30 % of what arrives, a link
cut one way) come out as exactly those verdicts with 10 peers per node (what
--max-pairs makes of a large cluster; the lab covers the full mesh), and the
figures the bench prints are there.
"""

from __future__ import annotations

import shutil

import pytest

from benchmarks.prom_sizing import Network, build_nodes, parse_runs, run
from lab.faults import Fault


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")
def test_the_planted_faults_are_named_and_the_costs_measured() -> None:
    (spec,) = parse_runs("30:10")
    result = run(spec, "nodes", warmup=125, judge=45)
    assert result.found == result.planted, (result.planted, result.found)
    pairs = 30 * 10
    assert result.pairs == pairs
    # 13 series per pair (--pair-metrics reduced) and what the agent exports besides
    per_pair = 13
    assert per_pair * pairs / 30 < result.series_per_node < per_pair * pairs / 30 + 100
    assert result.recorded > 0 and result.rss_mb > 0 and result.rule_seconds > 0
    assert result.matrix_seconds > 0 and result.diagnose_seconds > 0


def test_a_dead_pair_has_no_window_gauges_as_with_the_agent() -> None:
    """With `full` pair metrics the agent drops a pair's min/max/mdev once its window
    holds no reply; the simulated node does the same (else a cut pair keeps gauges)."""
    (node,) = [n for n in build_nodes(3, 2, full_pair_metrics=True) if n.name == "node-0000"]
    cut = Fault("link", node="node-0000", peer="node-0001")
    node.advance(10.0, Network())
    assert all(p.stats.window_summary() for p in node.peers)
    node.advance(20.0, Network(faults=[cut]))
    alive = {p.key.name: p.stats.window_summary() is not None for p in node.peers}
    assert alive == {"node-0001": False, "node-0002": True}
