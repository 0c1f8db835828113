"""RTT accuracy, timeouts, late and duplicate replies, against known delays.

The hosts namespace here has kernel echo replies off; benchmarks/responder (Go,
built on first use) answers every echo request after a fixed delay, measured
from the kernel's receive stamp. Duplicates come from an nftables ``dup`` rule.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lab.responder import ResponderUnavailable, ensure_responder
from lab.targets import TargetNetwork, target_v4

from .conftest import NETNS_OK, NETNS_WHY, AgentProcess, needs_netns, value, wait_for

pytestmark = needs_netns


@pytest.fixture(scope="module")
def responder_binary() -> Path:
    try:
        return ensure_responder()
    except ResponderUnavailable as exc:
        pytest.skip(str(exc))


class SlowNetwork:
    """A target network whose echo replies come from the responder, after a set delay."""

    def __init__(self, network: TargetNetwork, responder: Path) -> None:
        self.network = network
        self.responder = responder
        self.running: subprocess.Popen[bytes] | None = None

    def set_delay(self, ms: float) -> None:
        self.stop()
        self.running = self.network.hosts.popen(
            [str(self.responder), "-delay", f"{ms}ms"], stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.running is not None:
            self.running.terminate()
            self.running.wait()
            self.running = None

    @contextmanager
    def agent(self, *args: str) -> Iterator[AgentProcess]:
        """A ready agent probing one target through the responder."""
        agent = AgentProcess(
            self.network,
            # full: the window gauges (rtt_min) are what these tests read too
            [
                "--node-name",
                "agent",
                "--peer",
                f"slow={target_v4(1)}",
                "--pair-metrics",
                "full",
                *args,
            ],
            19650,
            {},
        )
        try:
            agent.wait_ready()
            yield agent
        finally:
            agent.stop()


@pytest.fixture(scope="module")
def slow_net(responder_binary: Path) -> Iterator[SlowNetwork]:
    if not NETNS_OK:
        pytest.skip(NETNS_WHY)
    with TargetNetwork("nps") as network:
        network.hosts.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        slow = SlowNetwork(network, responder_binary)
        try:
            yield slow
        finally:
            slow.stop()


def received(agent: AgentProcess) -> float:
    return value(agent.metrics(), "kube_node_ping_packets_received_total") or 0


def test_rtt_matches_a_known_delay(slow_net: SlowNetwork) -> None:
    slow_net.set_delay(20)
    with slow_net.agent("--interval", "0.1", "--timeout", "0.5") as agent:
        wait_for(lambda: received(agent) >= 30, 10, "30 replies")
        samples = agent.metrics()
        replies = value(samples, "kube_node_ping_packets_received_total") or 0
        mean = (value(samples, "kube_node_ping_rtt_milliseconds_total") or 0) / replies
        assert 20.0 <= mean <= 21.0, mean  # kernel stamps: loop delay does not count
        low = value(samples, "kube_node_ping_rtt_min") or 0
        assert 20.0 <= low <= 20.6
        squares = value(samples, "kube_node_ping_rtt_squared_milliseconds_total") or 0
        assert (squares / replies - mean * mean) ** 0.5 < 1.0  # mdev from the counters
        assert value(samples, "kube_node_ping_rtt_seconds_bucket", le="0.01") == 0
        assert value(samples, "kube_node_ping_rtt_seconds_bucket", le="0.025") == replies


def test_replies_after_the_timeout_are_late_not_rtt(slow_net: SlowNetwork) -> None:
    slow_net.set_delay(300)
    with slow_net.agent("--interval", "0.1", "--timeout", "0.1") as agent:
        late = "kube_node_ping_late_replies_total"
        wait_for(lambda: (value(agent.metrics(), late) or 0) >= 10, 10, "late replies")
        samples = agent.metrics()
        assert value(samples, "kube_node_ping_packets_received_total") == 0
        assert (value(samples, "kube_node_ping_packets_sent_total") or 0) >= 10
        assert value(samples, "kube_node_ping_rtt_min") is None
        assert value(samples, "kube_node_ping_duplicate_replies_total") == 0


def test_in_flight_probes_are_not_loss(slow_net: SlowNetwork) -> None:
    """With replies taking 300 ms of a 1 s timeout, nothing counts as sent before it resolves."""
    slow_net.set_delay(300)
    with slow_net.agent("--interval", "0.05", "--timeout", "1") as agent:
        for _ in range(10):
            samples = agent.metrics()
            sent = value(samples, "kube_node_ping_packets_sent_total") or 0
            assert value(samples, "kube_node_ping_packets_received_total") == sent


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
