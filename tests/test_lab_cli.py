"""node-ping-lab's command line and the lab's pure parts: faults parse and are checked
with one-line errors, each fault's nftables rules, zones, down is idempotent."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.agents import Agents
from lab.cli import build_parser, parse_fault, parse_timer
from lab.cluster import Lab
from lab.cpu import STARVE_PERCENT, CpuCgroups
from lab.faults import Fault, Timer, check_fault, fault_rules, network_ruleset
from lab.kubenodes import LAB_LABEL, ZONE_LABEL, KubernetesDiscovery
from lab.network import Network
from lab.state import LabConfig, LabError, LabState, Workdir

from .conftest import ROOT


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_commands_on_a_lab_that_is_not_up_fail_in_one_line() -> None:
    result = lab_cli("--name", "never-up", "status")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "node-ping-lab: no lab named 'never-up' is up (node-ping-lab up)"
    )


def test_down_is_idempotent() -> None:
    for _ in range(2):
        assert lab_cli("--name", "never-up", "down").returncode == 0
    Lab("never-up").down()


def fault(*argv: str) -> Fault:
    return parse_fault(build_parser().parse_args(["fault", *argv]))


def test_every_fault_kind_parses() -> None:
    assert fault("node-in", "node-3", "30") == Fault("node-in", "node-3", percent=30)
    assert fault("node-out", "node-3", "100") == Fault("node-out", "node-3")
    assert fault("link", "node-1", "node-2") == Fault("link", "node-1", peer="node-2")
    assert fault("link", "node-1", "node-2", "40", "--one-way") == Fault(
        "link", "node-1", peer="node-2", percent=40, both_ways=False
    )
    assert fault("isolate", "node-5") == Fault("isolate", "node-5")
    assert fault("blip", "node-5", "3") == Fault("isolate", "node-5")
    assert fault("partition", "zone-a,node-6", "node-3") == Fault(
        "partition", group_a=("zone-a", "node-6"), group_b=("node-3",)
    )
    assert fault("size", "node-4", "1400") == Fault("size", "node-4", max_bytes=1400)
    assert fault("size", "node-4", "1400", "--peer", "node-2", "--one-way") == Fault(
        "size", "node-4", peer="node-2", both_ways=False, max_bytes=1400
    )
    assert fault("latency", "node-4", "20") == Fault("latency", "node-4", delay_ms=20)
    assert fault("starve", "node-2") == Fault("starve", "node-2", percent=STARVE_PERCENT)
    assert fault("starve", "node-2", "5") == Fault("starve", "node-2", percent=5)


def test_timers_parse() -> None:
    parser = build_parser()
    for argv, timer in (
        (["fault", "blip", "node-5", "3"], Timer(Fault("isolate", "node-5"), 3, once=True)),
        (["fault", "node-in", "node-1", "50", "--flap", "2"],
         Timer(Fault("node-in", "node-1", percent=50), 2)),
        (["fault", "isolate", "node-1"], None),
    ):  # fmt: skip
        args = parser.parse_args(argv)
        assert parse_timer(args, parse_fault(args)) == timer


def test_bad_fault_arguments_are_one_line_errors() -> None:
    parser = build_parser()
    for argv, message in (
        (["node-in", "node-1", "x"], "node-in loss must be a number (got 'x')"),
        (["node-out", "node-1", "120"], "node-out loss must be in (0, 100] percent (got 120)"),
        (["node-in", "node-1", "0"], "must be in (0, 100] percent"),
        (["node-in", "node-1", "nan"], "must be a number"),
        (["link", "node-1", "node-1"], "a link needs two different nodes"),
        (["link", "node-1", "node-2", "-5"], "link loss must be in (0, 100]"),
        (["partition", "node-1,node-2", "node-2,node-3"], "overlap: node-2 on both sides"),
        (["partition", "node-1,,node-2", "node-3"], "comma-separated list of names"),
        (["size", "node-1", "big"], "size BYTES must be a number (got 'big')"),
        (["size", "node-1", "1400.5"], "whole number from 68 to 65535"),
        (["size", "node-1", "20"], "whole number from 68 to 65535"),
        (["size", "node-1", "1400", "--peer", "node-1"], "must be another node"),
        (["latency", "node-1", "x"], "latency MS must be a number"),
        (["latency", "node-1", "-3"], "latency must be in (0, 10000] ms"),
        (["starve", "node-1", "0"], "starve CPU must be in (0, 100] percent"),
        (["blip", "node-1", "soon"], "blip SECONDS must be a number"),
        (["blip", "node-1", "0"], "blip SECONDS must be from 0.1 to 86400"),
        (["isolate", "node-1", "--flap", "0.01"], "--flap SECONDS must be from 0.1"),
    ):
        with pytest.raises(LabError) as caught:
            args = parser.parse_args(["fault", *argv])
            parse_timer(args, parse_fault(args))
        assert message in str(caught.value), (argv, str(caught.value))
        assert "\n" not in str(caught.value)
    for argv in (["fault", "melt", "node-1"], ["fault", "inbound", "node-1", "30"]):
        result = lab_cli(*argv)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, argv
    result = lab_cli("--name", "never-up", "fault", "size", "node-1", "big")
    assert (result.returncode, result.stderr) == (
        1,
        "node-ping-lab: size BYTES must be a number (got 'big')\n",
    )


def test_faults_are_checked_against_the_lab() -> None:
    """Unknown nodes and zones, and groups that overlap once zones are expanded."""
    config = LabConfig(nodes=6, zones=3)
    for bad, message in (
        (Fault("node-in", "node-9"), "no node 'node-9' in this lab (nodes: node-1, node-2"),
        (Fault("link", "node-1", peer="node-7"), "no node 'node-7'"),
        (Fault("partition", group_a=("zone-a",), group_b=("zone-d",)),
         "no zone 'zone-d' in this lab (zones: zone-a, zone-b, zone-c)"),
        (Fault("partition", group_a=("zone-a",), group_b=("node-2", "node-3")),
         "partition groups overlap: node-2 on both sides"),
    ):  # fmt: skip
        with pytest.raises(LabError, match=re.escape(message)):
            check_fault(bad, config)
    with pytest.raises(LabError, match=re.escape("no zone 'zone-a' in this lab (zones: none")):
        check_fault(Fault("partition", group_a=("zone-a",), group_b=("node-3",)), LabConfig())
    resolved = check_fault(
        Fault("partition", group_a=("node-6", "zone-a"), group_b=("zone-b",)), config
    )
    assert (resolved.group_a, resolved.group_b) == (
        ("node-1", "node-2", "node-6"),
        ("node-3", "node-4"),
    )
    assert resolved.nodes() == {"node-1", "node-2", "node-3", "node-4", "node-6"}
    assert Fault.from_json(json.loads(json.dumps(resolved.to_json()))) == resolved


def test_every_fault_describes_itself_in_plain_words() -> None:
    for f, text in (
        (Fault("node-in", "node-3", percent=30), "30% of packets arriving at node-3 dropped"),
        (Fault("node-out", "node-3"), "every packet leaving node-3 dropped"),
        (Fault("link", "node-1", peer="node-2", both_ways=False),
         "every packet from node-1 to node-2 dropped"),
        (Fault("link", "node-1", peer="node-2", percent=5),
         "5% of packets between node-1 and node-2 dropped"),
        (Fault("isolate", "node-5"), "node-5 isolated: every packet in and out dropped"),
        (Fault("partition", group_a=("node-1", "node-2"), group_b=("node-3",)),
         "partition: no packet between node-1,node-2 and node-3"),
        (Fault("size", "node-4", max_bytes=1400),
         "IP packets over 1400 bytes dropped in and out of node-4 (MTU black hole)"),
        (Fault("size", "node-4", peer="node-1", max_bytes=1400),
         "IP packets over 1400 bytes dropped between node-4 and node-1 (MTU black hole)"),
        (Fault("latency", "node-4", delay_ms=20), "node-4 answers pings 20 ms late"),
        (Fault("starve", "node-2", percent=1), "node-2's agent starved: 1% of one CPU"),
    ):  # fmt: skip
        assert f.describe() == text


def test_the_network_ruleset_matches_bridge_ports_for_every_packet() -> None:
    """One example rule set per kind: ports, not addresses or ICMP types."""
    expected = {
        Fault("node-in", "node-1", percent=30): [
            'oifname "v1" numgen random mod 10000 < 3000 drop'
        ],
        Fault("node-out", "node-2"): ['iifname "v2" drop'],
        Fault("link", "node-2", peer="node-3", both_ways=False): ['iifname "v2" oifname "v3" drop'],
        Fault("link", "node-2", peer="node-3", percent=50): [
            'iifname "v2" oifname "v3" numgen random mod 10000 < 5000 drop',
            'iifname "v3" oifname "v2" numgen random mod 10000 < 5000 drop',
        ],
        Fault("isolate", "node-5"): ['iifname "v5" drop', 'oifname "v5" drop'],
        Fault("partition", group_a=("node-1", "node-2"), group_b=("node-3",)): [
            'iifname { "v1", "v2" } oifname "v3" drop',
            'iifname "v3" oifname { "v1", "v2" } drop',
        ],
        Fault("size", "node-4", max_bytes=1400): [
            'iifname "v4" ip length > 1400 drop',
            'iifname "v4" ip6 length > 1360 drop',
            'oifname "v4" ip length > 1400 drop',
            'oifname "v4" ip6 length > 1360 drop',
        ],
        Fault("size", "node-4", peer="node-6", both_ways=False, max_bytes=1400): [
            'iifname "v4" oifname "v6" ip length > 1400 drop',
            'iifname "v4" oifname "v6" ip6 length > 1360 drop',
        ],
        Fault("latency", "node-4", delay_ms=20): [],
        Fault("starve", "node-4"): [],
    }
    for f, rules in expected.items():
        assert fault_rules(f) == rules, f
    ruleset = network_ruleset(list(expected))
    assert ruleset.startswith("table bridge npelab {\nchain forward {\n")
    assert ruleset.count(" drop\n") == sum(len(r) for r in expected.values())
    assert "icmp" not in ruleset and "saddr" not in ruleset


def test_zones_split_the_nodes_into_contiguous_blocks() -> None:
    six = LabConfig(nodes=6, zones=3)
    assert [six.zone(n) for n in six.node_names()] == [
        "zone-a", "zone-a", "zone-b", "zone-b", "zone-c", "zone-c",
    ]  # fmt: skip
    assert six.zone_nodes("zone-b") == ["node-3", "node-4"]
    seven = LabConfig(nodes=7, zones=3)
    assert [len(seven.zone_nodes(z)) for z in seven.zone_names()] == [3, 2, 2]
    assert LabConfig(nodes=4).zone("node-1") == ""
    assert build_parser().parse_args(["up", "--zones", "3"]).zones == 3


def test_the_peers_file_and_node_objects_carry_the_zone(tmp_path: Path) -> None:
    workdir = Workdir("zones")
    workdir.peers_file = tmp_path / "nodes.json"
    agents = Agents(workdir, Network("zones"), CpuCgroups("zones"))
    agents.write_peers(LabState(LabConfig(nodes=4, zones=2), removed=["node-2"]))
    assert json.loads(workdir.peers_file.read_text()) == [
        {"name": "node-1", "ipAddress": "198.18.0.1", "zone": "zone-a"},
        {"name": "node-3", "ipAddress": "198.18.0.3", "zone": "zone-b"},
        {"name": "node-4", "ipAddress": "198.18.0.4", "zone": "zone-b"},
    ]
    agents.write_peers(LabState(LabConfig(nodes=2)))
    assert json.loads(workdir.peers_file.read_text()) == [
        {"name": "node-1", "ipAddress": "198.18.0.1"},
        {"name": "node-2", "ipAddress": "198.18.0.2"},
    ]

    class Api:
        """The two CoreV1Api calls register makes."""

        def __init__(self) -> None:
            self.created: list[dict[str, Any]] = []

        def create_node(self, body: dict[str, Any]) -> None:
            self.created.append(body)

        def patch_node_status(self, name: str, patch: list[dict[str, Any]]) -> None:
            pass

    api = Api()
    kubernetes = KubernetesDiscovery(workdir, Network("zones"))
    kubernetes.register(api, "node-3", LabConfig(nodes=4, zones=2))
    kubernetes.register(api, "node-1", LabConfig(nodes=4))
    labels = [body["metadata"]["labels"] for body in api.created]
    assert labels[0][ZONE_LABEL] == "zone-b" and labels[0][LAB_LABEL] == "zones"
    assert ZONE_LABEL not in labels[1]
