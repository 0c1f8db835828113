"""The alert rules on the lab: each fault fires the alert that names the culprit, and
nothing else; `diagnose` says the same; a clean network fires nothing.

The lab's Prometheus loads the repository's rules with lab-sized windows
(lab.prometheus.fast_rules: 30 s rates, 20 s `for`, pairs established after 1 min),
evaluated every 5 s. Time from fault to firing is printed per fault (pytest -s)
and recorded in docs/alert-timing.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from exporter.diagnose import diagnose
from lab.cli import LabPrometheus
from lab.cluster import Lab
from lab.faults import Fault
from lab.state import LabConfig

from .conftest import NETNS_OK, NETNS_WHY, ROOT, record, running_lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not NETNS_OK, reason=NETNS_WHY)]

CLEAN_SECONDS = 300
TIMINGS = ROOT / ".cache" / "alert-timing.txt"
FIRE_LIMIT = 30 + 20 + 2 * 5 + 10  # rate window + for + 2 evaluations + a scrape's slack
Alert = tuple[str, str]  # alert name, the node or pair it names


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("alerts", LabConfig(nodes=5, output="http", fast_alerts=True)) as lab:
        yield lab


def firing(lab: Lab, state: str = "firing") -> set[Alert]:
    out = set()
    for sample in lab.prometheus.query(f'ALERTS{{alertstate="{state}"}}'):
        labels = sample["metric"]
        if "source_node" in labels and "destination_node" in labels:
            subject = f"{labels['source_node']} → {labels['destination_node']}"
        else:
            subject = labels.get("destination_node") or labels.get("source_node") or "?"
        out.add((labels["alertname"], subject))
    return out


def wait_quiet(lab: Lab, timeout: float = 150) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not firing(lab) and not firing(lab, "pending"):
            return
        time.sleep(2)
    raise AssertionError(f"alerts still active: {firing(lab) | firing(lab, 'pending')}")


def test_a_clean_network_fires_nothing(lab: Lab) -> None:
    deadline = time.monotonic() + CLEAN_SECONDS
    while time.monotonic() < deadline:
        assert firing(lab) == set()
        assert firing(lab, "pending") == set()
        time.sleep(5)
    assert diagnose(LabPrometheus(lab), "5m").verdicts == []


CASES: dict[str, tuple[Fault, float, Alert, tuple[str, str]]] = {
    # name: fault, flap period (0 = steady), the one alert, diagnose's verdict
    "isolated": (
        Fault("isolate", "node-5"),
        0,
        ("NodePingNodeUnreachable", "node-5"),
        ("unreachable", "node-5"),
    ),
    "inbound loss": (
        Fault("inbound", "node-2", percent=30),
        0,
        ("NodePingNodeInboundLoss", "node-2"),
        ("inbound", "node-2"),
    ),
    "outbound loss": (
        Fault("outbound", "node-4", percent=30),
        0,
        ("NodePingNodeOutboundLoss", "node-4"),
        ("outbound", "node-4"),
    ),
    "one link": (
        Fault("link", "node-1", peer="node-3", both_ways=False),
        0,
        ("NodePingLinkLoss", "node-1 → node-3"),
        ("link", "node-1 → node-3"),
    ),
    "latency": (
        Fault("latency", "node-3", delay_ms=20),
        0,
        ("NodePingHighRTT", "node-3"),
        ("slow", "node-3"),
    ),
    "flapping": (
        Fault("inbound", "node-1", percent=100),
        4,
        ("NodePingNodeInboundLoss", "node-1"),
        ("inbound", "node-1"),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_fault_fires_its_alert_only(lab: Lab, name: str) -> None:
    fault, period, alert, verdict = CASES[name]
    wait_quiet(lab)
    started = time.monotonic()
    if period:
        lab.faults.flap(fault, period)
    else:
        lab.faults.apply(fault)
    try:
        while alert not in firing(lab):
            assert time.monotonic() - started < FIRE_LIMIT + 30, (
                f"{alert} not firing after {time.monotonic() - started:.0f}s; "
                f"firing: {firing(lab)}, pending: {firing(lab, 'pending')}"
            )
            time.sleep(1)
        took = time.monotonic() - started
        line = f"{name}: {alert[0]} for {alert[1]} fired {took:.0f}s after the fault"
        print(f"\n{line}")
        record(TIMINGS, line)  # read back for docs/alert-timing.md
        assert took <= FIRE_LIMIT, f"{alert} took {took:.0f}s (limit {FIRE_LIMIT}s)"
        assert firing(lab) == {alert}
        time.sleep(10)  # and nothing else joins it
        assert firing(lab) == {alert}
        assert {(v.kind, v.subject) for v in diagnose(LabPrometheus(lab), "30s").verdicts} == {
            verdict
        }
    finally:
        lab.faults.clear()
