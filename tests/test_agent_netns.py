"""The real agent, real ICMP through the kernel, in network namespaces this test creates.

Targets are answered by the kernel in the ``hosts`` namespace; nftables rules
there inject loss. Everything is skipped, with the reason, when namespaces
cannot be created (not root, or iproute2/nftables missing).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.targets import TargetNetwork, target_v4, target_v6

from .conftest import AgentProcess, needs_netns, parse_metrics, select, value, wait_for, write_peers

pytestmark = needs_netns

SENT = "kube_node_ping_packets_sent_total"
RECEIVED = "kube_node_ping_packets_received_total"
UNROUTABLE = "198.19.0.1"  # no route in the agent namespace: sendto fails, nothing leaves


@pytest.fixture
def loss_rules(net: TargetNetwork) -> Iterator[Callable[[str], None]]:
    """Install nftables rules in the hosts namespace; removed after the test."""
    table = "npe_test"

    def install(rules: str) -> None:
        net.hosts.run("nft", "delete", "table", "inet", table, check=False)
        body = "\n".join(r.strip() for r in rules.split(";") if r.strip())
        net.hosts.nft(
            f"table inet {table} {{\nchain input {{\n"
            f"type filter hook input priority 0;\n{body}\n}}\n}}\n"
        )

    yield install
    net.hosts.run("nft", "delete", "table", "inet", table, check=False)


def loss(samples: dict, name: str) -> float:  # type: ignore[type-arg]
    sent = value(samples, SENT, destination_node=name)
    received = value(samples, RECEIVED, destination_node=name)
    assert sent, f"nothing resolved for {name}"
    return 1 - (received or 0) / sent


def test_loss_per_peer_and_gauges_absent_on_total_loss(
    agent_factory: Callable[..., AgentProcess], loss_rules: Callable[[str], None], tmp_path: Path
) -> None:
    ok, lossy, dead = target_v4(1), target_v4(2), target_v4(3)
    loss_rules(
        f"ip daddr {lossy} icmp type echo-request numgen random mod 100 < 50 drop; "
        f"ip daddr {dead} icmp type echo-request drop"
    )
    peers = tmp_path / "nodes.json"
    write_peers(
        peers,
        {"ok": ok, "lossy": lossy, "dead": dead, "ipv6": target_v6(1), "unroutable": UNROUTABLE},
    )
    agent = agent_factory(
        "--discovery",
        "file",
        "--peers-file",
        str(peers),
        "--interval",
        "0.05",
        "--timeout",
        "0.3",
        "--window",
        "20",
        "--pair-metrics",
        "full",
    )
    agent.wait_ready()
    wait_for(
        lambda: (value(agent.metrics(), SENT, destination_node="lossy") or 0) >= 150,
        20,
        "150 probes to the lossy peer",
    )
    samples = agent.metrics()

    assert loss(samples, "ok") == 0
    assert loss(samples, "ipv6") == 0
    assert 0.35 <= loss(samples, "lossy") <= 0.65  # 50 % injected; ±3σ at 150 probes
    assert loss(samples, "dead") == 1
    assert loss(samples, "unroutable") == 1
    for gauge in ("kube_node_ping_rtt_min", "kube_node_ping_rtt_max", "kube_node_ping_rtt_mdev"):
        assert value(samples, gauge, destination_node="ok") is not None
        assert value(samples, gauge, destination_node="ipv6") is not None
        assert value(samples, gauge, destination_node="dead") is None  # absent, never 0
    low = value(samples, "kube_node_ping_rtt_min", destination_node="ok")
    high = value(samples, "kube_node_ping_rtt_max", destination_node="ok")
    assert low is not None and high is not None and 0 < low <= high < 50
    assert value(samples, "kube_node_ping_send_errors_total", reason="ENETUNREACH")
    assert value(samples, "kube_node_ping_build_info", icmp_mode="unprivileged") == 1
    assert value(samples, "kube_node_ping_peers", kind="node") == 5
    labels = next(iter(select(samples, SENT, destination_node="ipv6")))
    assert dict(labels) == {
        "source_node": "agent",
        "destination_node": "ipv6",
        "destination_node_ip_address": target_v6(1),
    }
    # The aggregate histogram counts every reply from every node peer.
    replies = sum(select(samples, RECEIVED).values())
    assert value(samples, "kube_node_ping_rtt_seconds_count") == replies


def test_endpoints_and_content_negotiation(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    agent = agent_factory("--peer", f"a={target_v4(1)}", "--interval", "0.1")
    agent.wait_ready()
    assert agent.get("/healthz") == (200, "ok\n")
    status, body = agent.get("/readyz")
    assert status == 200 and body.startswith("ok: 1 peers")
    status, body = agent.get("/metrics", accept="application/openmetrics-text;version=1.0.0")
    assert status == 200 and body.rstrip().endswith("# EOF")
    assert "# TYPE kube_node_ping_packets_sent counter" in body
    assert "process_resident_memory_bytes" in body
    assert agent.get("/nope")[0] == 404


def test_peer_removal_and_hot_reload(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    peers = tmp_path / "nodes.json"
    write_peers(peers, {"a": target_v4(1), "b": target_v4(2)})
    agent = agent_factory(
        "--discovery",
        "file",
        "--peers-file",
        str(peers),
        "--peers-file-poll-interval",
        "0.2",
        "--interval",
        "0.2",
    )
    agent.wait_ready()
    wait_for(lambda: value(agent.metrics(), SENT, destination_node="b"), 5, "b probed")

    write_peers(peers, {"a": target_v4(1)})  # b leaves: its series go within poll + interval
    wait_for(lambda: not select(agent.metrics(), SENT, destination_node="b"), 1.0, "b gone")
    samples = agent.metrics()
    assert not any(("destination_node", "b") in labels for _, labels in samples)
    assert value(samples, "kube_node_ping_peers", kind="node") == 1

    peers.write_text('[{"name": "a", "ipAddress": "not-an-ip"}]')  # malformed reload
    wait_for(
        lambda: value(agent.metrics(), "kube_node_ping_discovery_up") == 0,
        3,
        "discovery marked failing",
    )
    before = value(agent.metrics(), SENT, destination_node="a") or 0
    time.sleep(0.6)
    samples = agent.metrics()
    assert (value(samples, SENT, destination_node="a") or 0) > before  # last good list kept
    assert value(samples, "kube_node_ping_discovery_errors_total", source="file") == 1
    assert agent.get("/readyz")[0] == 200  # still probing the last good peers

    write_peers(peers, {"a": target_v4(1), "c": target_v4(3)})
    wait_for(lambda: value(agent.metrics(), SENT, destination_node="c"), 3, "c probed")
    assert value(agent.metrics(), "kube_node_ping_discovery_up") == 1


def test_textfile_is_atomic_and_only_our_file_is_touched(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    ours = textfiles / "node-ping_agent.prom"
    ours.write_text("stale from an earlier run\n")
    (textfiles / ".node-ping_agent.prom.999.tmp").write_text("left by a killed agent")
    theirs = textfiles / "other-exporter.prom"
    theirs.write_text("other_metric 1\n")
    peers = tmp_path / "nodes.json"
    write_peers(peers, {f"n{i}": target_v4(i) for i in range(1, 301)})
    agent = agent_factory(
        "--discovery",
        "file",
        "--peers-file",
        str(peers),
        "--output",
        "textfile",
        "--textfile-dir",
        str(textfiles),
        "--textfile-interval",
        "0.01",
        "--interval",
        "0.5",
        "--max-pairs",
        "0",  # all 300 (a cluster of 301 nodes would sample 10000 // 301 of them)
    )
    wait_for(
        lambda: ours.exists() and "kube_node_ping_build_info" in ours.read_text(),
        10,
        f"first textfile write; agent output: {agent.output()}",
    )
    reads = 0
    sizes = set()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        text = ours.read_text()
        samples = parse_metrics(text)  # raises on a torn file
        assert value(samples, "kube_node_ping_build_info") == 1, "file cut short"
        assert len(select(samples, SENT)) == 300
        assert not select(samples, "process_resident_memory_bytes")  # node-exporter has its own
        sizes.add(len(text))
        reads += 1
    assert reads > 10 and len(sizes) > 3  # the file really changed under the reader
    assert theirs.read_text() == "other_metric 1\n"
    assert agent.stop() == 0  # a graceful stop takes our file (and temporaries) with it
    assert sorted(p.name for p in textfiles.iterdir()) == ["other-exporter.prom"]
    assert theirs.read_text() == "other_metric 1\n"


def test_sigterm_stops_within_2s_and_takes_its_textfile(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    """A complete file while it runs; none once stopped (node-exporter must not serve
    an uninstalled agent's series frozen)."""
    agent = agent_factory(
        "--peer",
        f"a={target_v4(1)}",
        "--output",
        "both",
        "--textfile-dir",
        str(tmp_path),
        "--interval",
        "0.1",
    )
    agent.wait_ready()
    textfile = tmp_path / "node-ping_agent.prom"
    wait_for(textfile.exists, 5, "the textfile")
    assert value(parse_metrics(textfile.read_text()), "kube_node_ping_build_info") == 1
    started = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.proc.wait(timeout=5)
    took = time.monotonic() - started
    assert code == 0 and took < 2.0, f"exit {code} after {took:.2f}s: {agent.output()}"
    assert list(tmp_path.iterdir()) == []


# Polls /readyz as fast as it can from the agent's namespace: one word per answer.
READYZ_POLLER = """
import sys, time, urllib.error, urllib.request
url, refused, deadline = f"http://127.0.0.1:{sys.argv[1]}/readyz", 0, time.monotonic() + 10
while refused < 5 and time.monotonic() < deadline:
    try:
        code = urllib.request.urlopen(url, timeout=1).status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except OSError:
        code, refused = "refused", refused + 1
    print(code, flush=True)
"""


def test_readyz_fails_between_sigterm_and_exit(agent_factory: Callable[..., AgentProcess]) -> None:
    """From SIGTERM until the listener closes (~0.1 s) /readyz answers 503, so that a
    Service stops routing scrapes to a pod that is going away."""
    agent = agent_factory("--peer", f"a={target_v4(1)}", "--interval", "0.1")
    agent.wait_ready()
    poller = agent.net.agent.popen(
        [sys.executable, "-c", READYZ_POLLER, str(agent.port)], stdout=subprocess.PIPE
    )
    assert poller.stdout is not None
    assert poller.stdout.readline().strip() == b"200"
    agent.proc.send_signal(signal.SIGTERM)
    answers = [line.decode().strip() for line in poller.stdout]
    poller.wait(timeout=5)
    assert agent.proc.wait(timeout=5) == 0
    assert "503" in answers, f"no 503 before the listener closed: {answers[:20]}"
    after = answers[answers.index("503") :]
    assert set(after) <= {"503", "refused"} and after[-1] == "refused", after[:20]


def test_external_targets_and_failed_lookups(agent_factory: Callable[..., AgentProcess]) -> None:
    """A DNS name resolved through /etc/hosts; a name that cannot resolve is counted, not fatal.

    The agent namespace has no route off the machine, so the failed lookup
    cannot reach any real DNS server.
    """
    agent = agent_factory(
        "--peer",
        f"a={target_v4(1)}",
        "--external-target",
        "lo=localhost",
        "--external-target",
        "gone=no-such-host.invalid",
        "--external-target",
        f"ip={target_v4(9)}",
        "--interval",
        "0.1",
    )
    agent.wait_ready()

    def both_answered() -> bool:
        samples = agent.metrics()
        return all(
            value(samples, "external_ping_packets_received_total", destination_name=name)
            for name in ("ip", "lo")
        )

    wait_for(both_answered, 5, "external targets answered")
    samples = agent.metrics()
    assert value(
        samples,
        "external_ping_packets_received_total",
        destination_name="lo",
        destination_host="localhost",
    )
    assert value(samples, "external_ping_resolve_errors_total", destination_name="gone") >= 1  # type: ignore[operator]
    assert not select(samples, "external_ping_packets_sent_total", destination_name="gone")
    assert value(samples, "kube_node_ping_peers", kind="external") == 2
    assert value(samples, "kube_node_ping_peers", kind="node") == 1


def test_crosstalk_raw_sockets_with_equal_ids(net: TargetNetwork) -> None:
    """Two probers with raw sockets, the same ICMP id and the same sequence numbers.

    Every raw socket sees every reply. Prober B's requests (bigger payload) are
    dropped by nftables, prober A's are answered: B must still see 100 % loss.
    This is icmplib #87's failure (dead peers reported alive), forced.
    """
    script = Path(__file__).with_name("crosstalk_probe.py")
    table = "npe_crosstalk"
    net.hosts.nft(
        f"table inet {table} {{\nchain input {{\ntype filter hook input priority 0;\n"
        f"ip daddr {target_v4(5)} icmp type echo-request ip length > 100 drop\n}}\n}}\n"
    )
    try:
        out = net.agent.run(sys.executable, str(script), target_v4(5))
    finally:
        net.hosts.run("nft", "delete", "table", "inet", table, check=False)
    result = json.loads(out)
    assert result["same_ident"] and result["a_sent"] >= 20 and result["b_sent"] >= 20
    assert result["a_received"] == result["a_sent"]
    assert result["b_received"] == 0


def test_configmap_symlink_swap_is_picked_up(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    """A ConfigMap volume updates by pointing ..data at a new directory, atomically."""
    volume = tmp_path / "config"
    volume.mkdir()
    first = volume / "..2026_11_21_first"
    first.mkdir()
    write_peers(first / "nodes.json", {"a": target_v4(1)})
    (volume / "..data").symlink_to(first.name)
    (volume / "nodes.json").symlink_to("..data/nodes.json")
    agent = agent_factory(
        "--discovery",
        "file",
        "--peers-file",
        str(volume / "nodes.json"),
        "--peers-file-poll-interval",
        "0.2",
        "--interval",
        "0.2",
    )
    agent.wait_ready()
    second = volume / "..2026_11_21_second"
    second.mkdir()
    write_peers(second / "nodes.json", {"b": target_v4(2)})
    (volume / "..data_tmp").symlink_to(second.name)
    (volume / "..data_tmp").replace(volume / "..data")
    wait_for(lambda: select(agent.metrics(), SENT, destination_node="b"), 3, "b from the swap")
    assert not select(agent.metrics(), SENT, destination_node="a")


def test_dns_target_follows_its_name_and_keeps_the_last_good_address(
    agent_factory: Callable[..., AgentProcess], net: TargetNetwork
) -> None:
    """Name resolution through the real resolver: `ip netns exec` bind-mounts
    /etc/netns/<namespace>/hosts over /etc/hosts for the agent, and rewriting
    that file in place changes what the name resolves to."""
    hosts_dir = Path("/etc/netns") / net.agent.name
    hosts_dir.mkdir(parents=True, exist_ok=True)
    hosts = hosts_dir / "hosts"
    try:
        hosts.write_text(f"127.0.0.1 localhost\n{target_v4(20)} gateway.test\n")
        agent = agent_factory(
            "--peer",
            f"a={target_v4(1)}",
            "--external-target",
            "gw=gateway.test",
            "--resolve-interval",
            "0.3",
            "--interval",
            "0.1",
        )
        agent.wait_ready()

        def probed_address() -> str | None:
            info = select(agent.metrics(), "external_ping_target_info", destination_name="gw")
            return dict(next(iter(info))).get("destination_ip_address") if info else None

        wait_for(
            lambda: value(
                agent.metrics(), "external_ping_packets_received_total", destination_name="gw"
            ),
            5,
            "gateway.test probed",
        )
        with open(hosts, "r+") as f:  # in place: the bind mount follows the inode
            f.write(f"127.0.0.1 localhost\n{target_v4(21)} gateway.test\n")
            f.truncate()
        wait_for(
            lambda: probed_address() == target_v4(21),
            5,
            f"re-resolved to the new address; output: {agent.output()}",
        )
        with open(hosts, "r+") as f:
            f.write("127.0.0.1 localhost\n")
            f.truncate()
        wait_for(
            lambda: (
                (
                    value(
                        agent.metrics(), "external_ping_resolve_errors_total", destination_name="gw"
                    )
                    or 0
                )
                >= 2
            ),
            5,
            "failed lookups counted",
        )
        before = (
            value(agent.metrics(), "external_ping_packets_sent_total", destination_name="gw") or 0
        )
        time.sleep(0.5)
        after = (
            value(agent.metrics(), "external_ping_packets_sent_total", destination_name="gw") or 0
        )
        assert after > before  # still probing the last good address
        assert probed_address() == target_v4(21)
    finally:
        hosts.unlink(missing_ok=True)
        hosts_dir.rmdir()


def test_json_logs_and_per_peer_histogram(agent_factory: Callable[..., AgentProcess]) -> None:
    agent = agent_factory(
        "--peer",
        f"a={target_v4(1)}",
        "--peer",
        f"b={target_v4(2)}",
        "--per-peer-histogram",
        "--log-format",
        "json",
        "--interval",
        "0.1",
    )
    agent.wait_ready()
    wait_for(
        lambda: (
            all(select(agent.metrics(), RECEIVED).values())
            and len(select(agent.metrics(), RECEIVED)) == 2
        ),
        5,
        "replies from both peers",
    )
    samples = agent.metrics()
    for name in ("a", "b"):
        count = value(samples, "kube_node_ping_peer_rtt_seconds_count", destination_node=name)
        received = value(samples, RECEIVED, destination_node=name)
        assert count is not None and count >= 1 and count <= (received or 0) + 1
    lines = [line for line in agent.output().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    started = next(r for r in records if r["msg"] == "started")
    assert started["level"] == "info" and started["discovery"] == "static"


def test_a_resolver_that_never_answers_delays_nothing(
    agent_factory: Callable[..., AgentProcess],
    net: TargetNetwork,
    loss_rules: Callable[[str], None],
) -> None:
    """Defect 3: the agent's resolver (bind-mounted /etc/netns/<namespace>/resolv.conf)
    is a name server whose queries are dropped, with glibc told to wait 60 s. Probing,
    /healthz and shutdown must not wait for it."""
    dns = target_v4(30)
    loss_rules(f"ip daddr {dns} udp dport 53 drop; ip daddr {dns} tcp dport 53 drop")
    conf_dir = Path("/etc/netns") / net.agent.name
    conf_dir.mkdir(parents=True, exist_ok=True)
    resolv = conf_dir / "resolv.conf"
    try:
        resolv.write_text(f"nameserver {dns}\noptions timeout:30 attempts:2\n")
        began = time.monotonic()
        agent = agent_factory(
            "--peer",
            f"a={target_v4(1)}",
            "--external-target",
            "dead=never-answers.test",
            "--interval",
            "0.1",
        )
        wait_for(lambda: agent.alive() and agent.get("/healthz")[0] == 200, 5, "/healthz")
        wait_for(
            lambda: value(agent.metrics(), RECEIVED, destination_node="a"),
            5,
            f"node a probed; output: {agent.output()}",
        )
        assert time.monotonic() - began < 8  # the old agent: 61 s to the first /healthz
        assert not select(agent.metrics(), "external_ping_target_info", destination_name="dead")
        stopping = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - stopping < 2.5  # the hanging lookup does not hold the exit
    finally:
        resolv.unlink(missing_ok=True)
        if not any(conf_dir.iterdir()):
            conf_dir.rmdir()


def test_a_stamp_port_in_use_stops_the_agent_with_one_line(
    agent_factory: Callable[..., AgentProcess],
) -> None:
    """A second agent on the same node (namespace) cannot take the STAMP port: exit 2,
    one line naming the setting, no traceback."""
    first = agent_factory("--peer", f"t1={target_v4(1)}", "--stamp-port", "18762")
    first.wait_ready()
    second = agent_factory("--peer", f"t1={target_v4(1)}", "--stamp-port", "18762")
    assert second.proc.wait(timeout=15) == 2
    lines = [line for line in second.output().splitlines() if "stamp" in line]
    assert lines == [
        "node-ping-exporter: invalid setting 'stamp_port' (--stamp-port): cannot listen on "
        "UDP port 18762: Address already in use"
    ], second.output()
    assert "Traceback" not in second.output()


def test_peers_that_never_answer_arp_fill_the_send_buffer(
    agent_factory: Callable[..., AgentProcess], tmp_path: Path
) -> None:
    """What a node cut off from its link sees (the lab's "node down" on the isolated
    node itself): every peer's neighbour entry waits for ARP, and the kernel holds
    the echo requests in those queues, charged to the agent's socket, for the ~3 s
    of a resolution. At 400 requests/s the send buffer (212 KB by default) fills,
    and sendto fails with EAGAIN: a symptom of the path, counted with its reason and
    as lost probes, which NodePingSendErrors leaves to the loss verdicts (as it does
    EHOSTUNREACH). The addresses are on the agent's own /24, owned by nobody."""
    silent = {f"silent-{i}": f"198.18.0.{10 + i}" for i in range(8)}
    peers = tmp_path / "nodes.json"
    write_peers(peers, silent)
    agent = agent_factory(
        "--discovery", "file", "--peers-file", str(peers), "--interval", "0.02",
        "--timeout", "0.5",
    )  # fmt: skip
    agent.wait_ready()
    wait_for(
        lambda: value(agent.metrics(), "kube_node_ping_send_errors_total", reason="EAGAIN"),
        15,
        "EAGAIN counted",
    )
    samples = agent.metrics()
    assert sum(select(samples, SENT).values()) > 0
    assert sum(select(samples, RECEIVED).values()) == 0  # each refusal is a lost probe
