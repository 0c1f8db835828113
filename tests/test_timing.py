"""RTT accuracy, timeouts, late and duplicate replies, against known delays.

The hosts namespace here has kernel echo replies off; benchmarks/responder (Go,
built on first use) answers every echo request after a fixed delay, measured
from the kernel's receive stamp. Duplicates come from an nftables ``dup`` rule.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.targets import TargetNetwork, target_v4

from .conftest import NETNS_OK, NETNS_WHY, ROOT, AgentProcess, needs_netns, value, wait_for

pytestmark = needs_netns
RESPONDER = ROOT / ".cache" / "responder"


@pytest.fixture(scope="module")
def responder_binary() -> Path:
    if shutil.which("go") is None:
        pytest.skip("Go is not installed: cannot build benchmarks/responder")
    RESPONDER.parent.mkdir(exist_ok=True)
    subprocess.run(
        ["go", "build", "-o", str(RESPONDER), "."],
        cwd=ROOT / "benchmarks" / "responder",
        check=True,
        capture_output=True,
    )
    return RESPONDER


@pytest.fixture(scope="module")
def slow_net(responder_binary: Path) -> Iterator[Callable[[float], None]]:
    """A target network whose replies come from the responder; call it with the delay in ms."""
    if not NETNS_OK:
        pytest.skip(NETNS_WHY)
    with TargetNetwork("nps") as network:
        network.hosts.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        running: list[subprocess.Popen[bytes]] = []

        def set_delay(ms: float) -> None:
            for proc in running:
                proc.terminate()
                proc.wait()
            running.clear()
            running.append(
                network.hosts.popen(
                    [str(responder_binary), "-delay", f"{ms}ms"], stderr=subprocess.DEVNULL
                )
            )

        set_delay(0)
        set_delay.network = network  # type: ignore[attr-defined]
        yield set_delay
        for proc in running:
            proc.terminate()
            proc.wait()


def start_agent(network: TargetNetwork, *args: str) -> AgentProcess:
    return AgentProcess(
        network, ["--node-name", "agent", "--peer", f"slow={target_v4(1)}", *args], 19650, {}
    )


def test_rtt_matches_a_known_delay(slow_net: Callable[[float], None]) -> None:
    slow_net(20)
    agent = start_agent(slow_net.network, "--interval", "0.1", "--timeout", "0.5")  # type: ignore[attr-defined]
    try:
        agent.wait_ready()
        wait_for(
            lambda: (value(agent.metrics(), "kube_node_ping_packets_received_total") or 0) >= 30,
            10,
            "30 replies",
        )
        samples = agent.metrics()
        received = value(samples, "kube_node_ping_packets_received_total") or 0
        mean = (value(samples, "kube_node_ping_rtt_milliseconds_total") or 0) / received
        assert 20.0 <= mean <= 21.0, mean  # kernel stamps: loop delay does not count
        low = value(samples, "kube_node_ping_rtt_min") or 0
        assert 20.0 <= low <= 20.6
        squares = value(samples, "kube_node_ping_rtt_squared_milliseconds_total") or 0
        assert (squares / received - mean * mean) ** 0.5 < 1.0  # mdev from the counters
        assert value(samples, "kube_node_ping_rtt_seconds_bucket", le="0.01") == 0
        assert value(samples, "kube_node_ping_rtt_seconds_bucket", le="0.025") == received
    finally:
        agent.stop()


def test_replies_after_the_timeout_are_late_not_rtt(slow_net: Callable[[float], None]) -> None:
    slow_net(300)
    agent = start_agent(slow_net.network, "--interval", "0.1", "--timeout", "0.1")  # type: ignore[attr-defined]
    try:
        agent.wait_ready()
        wait_for(
            lambda: (value(agent.metrics(), "kube_node_ping_late_replies_total") or 0) >= 10,
            10,
            "late replies",
        )
        samples = agent.metrics()
        assert value(samples, "kube_node_ping_packets_received_total") == 0
        assert (value(samples, "kube_node_ping_packets_sent_total") or 0) >= 10
        assert value(samples, "kube_node_ping_rtt_min") is None
        assert value(samples, "kube_node_ping_duplicate_replies_total") == 0
    finally:
        agent.stop()


def test_in_flight_probes_are_not_loss(slow_net: Callable[[float], None]) -> None:
    """With replies taking 300 ms of a 1 s timeout, nothing counts as sent before it resolves."""
    slow_net(300)
    agent = start_agent(slow_net.network, "--interval", "0.05", "--timeout", "1")  # type: ignore[attr-defined]
    try:
        agent.wait_ready()
        for _ in range(10):
            samples = agent.metrics()
            sent = value(samples, "kube_node_ping_packets_sent_total") or 0
            assert value(samples, "kube_node_ping_packets_received_total") == sent
    finally:
        agent.stop()


def test_duplicate_replies_are_counted(
    agent_factory: Callable[..., AgentProcess], net: TargetNetwork
) -> None:
    net.hosts.nft(
        "table ip npe_dup {\nchain output {\ntype filter hook output priority 0;\n"
        f"ip saddr {target_v4(3)} icmp type echo-reply dup to 198.18.0.1 device h0\n}}\n}}\n"
    )
    try:
        agent = agent_factory("--peer", f"d={target_v4(3)}", "--interval", "0.1")
        agent.wait_ready()
        wait_for(
            lambda: (value(agent.metrics(), "kube_node_ping_duplicate_replies_total") or 0) >= 5,
            5,
            "duplicates",
        )
        samples = agent.metrics()
        sent = value(samples, "kube_node_ping_packets_sent_total")
        assert value(samples, "kube_node_ping_packets_received_total") == sent  # not twice
    finally:
        net.hosts.run("nft", "delete", "table", "ip", "npe_dup", check=False)
