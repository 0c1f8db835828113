"""The lab leaves nothing behind: after down, after a failed up, and with IPv6."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from lab.cluster import Lab
from lab.faults import Fault
from lab.netns import namespaces
from lab.state import LABS_DIR, LabConfig, LabError

from .conftest import NETNS_OK, NETNS_WHY, parse_metrics, select, wait_for

pytestmark = pytest.mark.skipif(not NETNS_OK, reason=NETNS_WHY)


def leftovers(lab: Lab) -> list[str]:
    found = namespaces(lab.network.prefix + "-")
    if lab.workdir.path.exists():
        found.append(str(lab.workdir.path))
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    found += [line for line in ps.splitlines() if str(LABS_DIR / lab.name) in line]
    return found


def test_dual_stack_lab_up_and_down(tmp_path: object) -> None:
    lab = Lab(f"life{os.getpid()}")
    try:
        lab.up(LabConfig(nodes=3, dual_stack=True, prometheus=False))
        assert len(lab.config.addresses("node-1")) == 2

        def both_families_answered() -> bool:
            samples = parse_metrics(lab.agents.metrics("node-1"))
            received = select(samples, "kube_node_ping_packets_received_total")
            return len(received) == 4 and all(v > 0 for v in received.values())

        wait_for(both_families_answered, 10, "node-1 reaching both peers over IPv4 and IPv6")
        samples = parse_metrics(lab.agents.metrics("node-1"))
        addresses = {
            dict(k)["destination_node_ip_address"]
            for k in select(samples, "kube_node_ping_packets_sent_total")
        }
        assert addresses == {"198.18.0.2", "198.18.0.3", "fd00:198:18::2", "fd00:198:18::3"}
        # Added latency holds over both families: the responder answers ICMPv6 too.
        lab.faults.apply(Fault("latency", "node-2", delay_ms=20))

        def rtt_counters() -> dict[str, tuple[float, float]]:
            """(RTT sum, replies) per address of node-2, as node-1 counts them."""
            samples = parse_metrics(lab.agents.metrics("node-1"))

            def by_address(name: str) -> dict[str, float]:
                found = select(samples, name, destination_node="node-2")
                return {dict(k)["destination_node_ip_address"]: v for k, v in found.items()}

            sums = by_address("kube_node_ping_rtt_milliseconds_total")
            replies = by_address("kube_node_ping_packets_received_total")
            return {a: (sums[a], replies.get(a, 0.0)) for a in sums}

        before = [rtt_counters()]

        def both_families_delayed() -> bool:
            """The mean RTT of the replies since the last look (the default
            --pair-metrics reduced has no window gauges)."""
            now = rtt_counters()
            means = {
                a: (total - before[0][a][0]) / (count - before[0][a][1])
                for a, (total, count) in now.items()
                if a in before[0] and count > before[0][a][1]
            }
            before[0] = now
            return len(means) == 2 and all(20 <= v < 25 for v in means.values())

        wait_for(both_families_delayed, 10, "20 ms more to node-2 over IPv4 and IPv6")
        lab.faults.clear()
        node_2 = lab.network.namespace("node-2")
        assert node_2.run("sysctl", "-n", "net.ipv6.icmp.echo_ignore_all") == "0\n"
    finally:
        lab.down()
    assert leftovers(lab) == []
    lab.down()  # idempotent


def test_a_failed_up_removes_what_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Prometheus made to look missing, so `up` fails after namespaces and agents exist."""
    real_which = shutil.which
    monkeypatch.setattr(
        "lab.prometheus.shutil.which",
        lambda name: None if name == "prometheus" else real_which(name),
    )
    lab = Lab(f"fail{os.getpid()}")
    with pytest.raises(LabError, match="'prometheus' is not installed"):
        lab.up(LabConfig(nodes=2))
    assert leftovers(lab) == []


def test_kubernetes_mode_without_a_control_plane_says_so() -> None:
    lab = Lab(f"nocp{os.getpid()}")
    with pytest.raises(LabError, match="control plane 'absent' is not running"):
        lab.up(LabConfig(nodes=2, prometheus=False, kubernetes="absent"))
    assert leftovers(lab) == []
