"""Alert and recording rules (exporter/rules/node-ping.rules.yml) under `promtool test rules`.

Each scenario describes a small cluster in Python (nodes, which pairs lose what
from when, RTTs, outages, starved agents, zones, nodes that join late) and is
turned into a promtool unit test with the agents' counters sampled every 30 s,
evaluated every 30 s: kube-prometheus-stack's defaults, with the shipped windows
and `for`. Faults are realistic: a node that loses packets loses them both ways
(its column and its row), because an echo request and its reply cross both
directions. The expected result is the exact set of firing alerts (from the
ALERTS series) at given times, plus, where it matters, recorded values and
annotations.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.rules import render
from exporter.sampling import choose_peers

JOB = "node-ping-exporter"
STEP_S = 30  # scrape and evaluation interval
pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install prometheus)",
)

Pair = tuple[str, str]


@dataclass
class Cluster:
    nodes: list[str]
    minutes: int = 30
    fault_start: int = 15  # faults below apply from this minute on
    loss: dict[Pair, float] = field(default_factory=dict)
    rtt_ms: dict[Pair, float] = field(default_factory=dict)
    # pair -> minutes (after fault_start) at which an outage of that pair ends
    outages: dict[Pair, list[int]] = field(default_factory=dict)
    # RTT added in all, ms, to the replies as an outage ends: the probes sent then wait
    # for neighbour resolution (the lab measured 250-470 ms each)
    recovery_ms: float = 0.0
    # node -> (minute after fault_start, seconds): the node vanishes that long, once
    blips: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    skipped: dict[str, float] = field(default_factory=dict)  # node -> share of probes skipped
    zones: dict[str, str] = field(default_factory=dict)
    # source -> the nodes it probes (a sample, as --max-peers makes); absent: all
    probes: dict[str, set[str]] = field(default_factory=dict)
    joins_at: dict[str, int] = field(default_factory=dict)  # node -> first minute with series
    leaves_at: dict[str, int] = field(default_factory=dict)  # node -> minute its pairs end
    job: str = JOB
    extra: list[dict[str, str]] = field(default_factory=list)
    # STAMP: agents send and reflect it. Loss on one way (from, to) of everything, of
    # UDP only, of ICMP only; the echo loss of a pair not in `loss` follows from them.
    stamp: bool = False
    way_loss: dict[Pair, float] = field(default_factory=dict)
    udp_way_loss: dict[Pair, float] = field(default_factory=dict)
    icmp_way_loss: dict[Pair, float] = field(default_factory=dict)
    # Path-MTU probes (one per pair every 10 s, `large_bytes` each): lost one way on
    # top of everything's loss, or refused by the source's kernel (share).
    size: bool = False
    large_way_loss: dict[Pair, float] = field(default_factory=dict)
    large_refused: dict[Pair, float] = field(default_factory=dict)
    large_bytes: int = 1500
    # node -> minute (after fault_start) its agent restarts: its reflector's counter
    # starts again from 0, and it answers no STAMP for 10 s
    restarts: dict[str, int] = field(default_factory=dict)
    # seconds of STAMP a restarted agent's peers count lost in the scrape after its
    # first (slow discovery sync, timeouts counted after that scrape)
    restart_tail: int = 0
    # node -> (minute down, minute back) after fault_start: its agent is gone that long
    # (its reflector's series with it, while the node's kernel still answers echo),
    # then starts afresh and answers no STAMP for 10 s more. Its own rows are kept.
    agent_down: dict[str, tuple[float, float]] = field(default_factory=dict)

    def peers_of(self, source: str) -> list[str]:
        sampled = source in self.probes
        return [d for d in self.nodes if d != source and (not sampled or d in self.probes[source])]

    @property
    def steps(self) -> int:
        return self.minutes * 60 // STEP_S

    def series(self) -> list[dict[str, str]]:
        out = list(self.extra)
        for source in self.nodes:
            out.append(
                {
                    "series": f'up{{job="{self.job}",instance="{source}"}}',
                    "values": f"1x{self.steps}",
                }
            )
            zone = f',zone="{self.zones[source]}"' if source in self.zones else ""
            info = f'kube_node_ping_node_info{{job="{self.job}",source_node="{source}"{zone}}}'
            out.append({"series": info, "values": f"1x{self.steps}"})
            if self.stamp:
                labels = f'job="{self.job}",source_node="{source}",result="reflected"'
                per_step = STEP_S * len(self.peers_of(source))
                restart = self._restart_step(source)
                gone = self._down_steps(source)
                counts = [
                    ("stale" if step == gone.start else "_") if step in gone
                    else (step - gone.stop) * per_step if gone and step >= gone.stop
                    else step * per_step if step < restart
                    else (step - restart) * per_step
                    for step in range(self.steps + 1)
                ]  # fmt: skip
                out.append(
                    {
                        "series": f"kube_node_ping_stamp_reflector_packets_total{{{labels}}}",
                        "values": " ".join(str(c) for c in counts),
                    }
                )
            out += self._agent(source)
            for destination in self.peers_of(source):
                out += self._pair(source, destination)
        return out

    def _faulty(self, step: int) -> bool:
        return step * STEP_S > self.fault_start * 60

    def _agent(self, node: str) -> list[dict[str, str]]:
        share = self.skipped.get(node, 0.0)
        skipped, total = [], 0.0
        for step in range(self.steps + 1):
            if step and self._faulty(step):
                # per step: STEP_S probes per peer would go, `share` of them skipped
                total += STEP_S * len(self.peers_of(node)) * share / (1 - share)
            skipped.append(f"{total:g}")
        labels = f'job="{self.job}",source_node="{node}"'
        lag = [("2" if share and self._faulty(s) else "0.001") for s in range(self.steps + 1)]
        return [
            {
                "series": f"kube_node_ping_skipped_probes_total{{{labels}}}",
                "values": " ".join(skipped),
            },
            {
                "series": f"kube_node_ping_event_loop_lag_seconds{{{labels}}}",
                "values": " ".join(lag),
            },
        ]

    def _down_steps(self, node: str) -> range:
        """The steps ``node``'s agent is gone (empty: never)."""
        if node not in self.agent_down:
            return range(0)
        down, back = self.agent_down[node]
        return range(
            int((self.fault_start + down) * 60 // STEP_S),
            int((self.fault_start + back) * 60 // STEP_S),
        )

    def _restart_step(self, node: str) -> int:
        minute = self.restarts.get(node)
        return self.steps + 1 if minute is None else (self.fault_start + minute) * 60 // STEP_S

    def _way(self, ways: dict[Pair, float], pair: Pair) -> float:
        """The share lost on one way: everything's loss combined with ``ways``'s."""
        return 1 - (1 - self.way_loss.get(pair, 0.0)) * (1 - ways.get(pair, 0.0))

    def _echo_loss(self, source: str, destination: str) -> float:
        if (source, destination) in self.loss:
            return self.loss[(source, destination)]
        request = self._way(self.icmp_way_loss, (source, destination))
        reply = self._way(self.icmp_way_loss, (destination, source))
        return 1 - (1 - request) * (1 - reply)

    def _pair(self, source: str, destination: str) -> list[dict[str, str]]:
        labels = (
            f'job="{self.job}",source_node="{source}",destination_node="{destination}",'
            f'destination_node_ip_address="10.0.0.{self.nodes.index(destination) + 1}"'
        )
        first = max(self.joins_at.get(source, 0), self.joins_at.get(destination, 0)) * 60 // STEP_S
        ends = [
            (self.fault_start + m) * 60 // STEP_S
            for m in self.outages.get((source, destination), [])
        ]
        blips = {
            round((self.fault_start + minute) * 60 / STEP_S): seconds
            for node in (source, destination)
            for minute, seconds in self.blips.get(node, [])
        }
        columns: list[list[str]] = [[] for _ in range(8)]
        totals = [0.0] * 8
        gone = min(
            [self.leaves_at[n] * 60 // STEP_S for n in (source, destination) if n in self.leaves_at]
            or [self.steps + 1]
        )
        for step in range(self.steps + 1):
            if step < first or step > gone:
                for values in columns:
                    values.append("_")  # no series: the node has not joined, or has left
                continue
            if step == gone:  # the scrape that no longer has the series marks it stale
                for values in columns:
                    values.append("stale")
                continue
            if step > first:
                faulty = self._faulty(step)
                ratio = self._echo_loss(source, destination) if faulty else 0.0
                delay = self.rtt_ms.get((source, destination), 0.5) if faulty else 0.5
                replies = STEP_S * (1 - ratio) - blips.get(step, 0)
                totals[0] += STEP_S
                totals[1] += replies
                totals[2] += replies * delay
                if ends.count(step) or step in blips:
                    totals[2] += self.recovery_ms
                totals[3] += ends.count(step) + (1 if step in blips else 0)
                totals[4] += blips.get(step, 0)
                forward = self._way(self.udp_way_loss, (source, destination)) if faulty else 0
                reverse = self._way(self.udp_way_loss, (destination, source)) if faulty else 0
                # a restarting destination answers no STAMP for 10 s of that step; a
                # blip loses STAMP as it loses echo
                restart = self._restart_step(destination)
                down = 10 if step == restart else self.restart_tail if step == restart + 1 else 0
                crashed = self._down_steps(destination)
                down += STEP_S if step in crashed else 10 if crashed and step == crashed.stop else 0
                down += blips.get(step, 0)
                # a starved agent's reflector answers half its STAMP packets too late
                late = 0.5 if faulty and destination in self.skipped else 0.0
                totals[5] += STEP_S
                totals[6] += (STEP_S - down) * (1 - forward)
                totals[7] += (STEP_S - down) * (1 - forward) * (1 - reverse) * (1 - late)
            for values, total in zip(columns, totals, strict=True):
                values.append(f"{total:g}")
        names = (
            "packets_sent",
            "packets_received",
            "rtt_milliseconds",
            "outages",
            "outage_seconds",
            "stamp_packets_sent",
            "stamp_packets_reached",
            "stamp_packets_received",
        )
        chosen = [*range(5), *([5, 6, 7] if self.stamp else [])]
        out = [
            {
                "series": f"kube_node_ping_{names[i]}_total{{{labels}}}",
                "values": " ".join(columns[i]),
            }
            for i in chosen
        ]
        if self.size:
            out += self._large(source, destination, labels, first, gone)
        return out

    def _large(
        self, source: str, destination: str, labels: str, first: int, gone: int
    ) -> list[dict[str, str]]:
        """The size probes' series: 3 per step (every 10 s), through both ways."""
        columns: list[list[str]] = [[], [], []]
        totals = [0.0, 0.0, 0.0]
        for step in range(self.steps + 1):
            if step < first or step > gone:
                for values in columns:
                    values.append("_")
                continue
            if step > first:
                faulty = self._faulty(step)
                refused = self.large_refused.get((source, destination), 0.0) if faulty else 0
                lost = 0.0
                if faulty:
                    request = self._way(self.large_way_loss, (source, destination))
                    reply = self._way(self.large_way_loss, (destination, source))
                    lost = 1 - (1 - request) * (1 - reply)
                probes = STEP_S / 10
                totals[0] += probes
                totals[1] += probes * (1 - refused) * (1 - lost)
                totals[2] += probes * refused
            for values, total in zip(columns, totals, strict=True):
                values.append(f"{total:g}")
        names = ("large_packets_sent_total", "large_packets_received_total",
                 "large_packets_refused_total")  # fmt: skip
        out = [
            {"series": f"kube_node_ping_{name}{{{labels}}}", "values": " ".join(values)}
            for name, values in zip(names, columns, strict=True)
        ]
        size = " ".join("_" if s < first or s > gone else str(self.large_bytes)
                        for s in range(self.steps + 1))  # fmt: skip
        out.append({"series": f"kube_node_ping_large_packet_bytes{{{labels}}}", "values": size})
        return out


Alert = tuple[str, dict[str, str]]
SEVERITY = {"NodePingNodeUnreachable": "critical", "NodePingPartition": "critical"}


def firing(expected: list[Alert], at: str) -> dict[str, Any]:
    samples = []
    for name, labels in expected:
        all_labels = {
            "alertname": name,
            "alertstate": "firing",
            "severity": SEVERITY.get(name, "warning"),
            **labels,
        }
        text = ",".join(f'{k}="{v}"' for k, v in sorted(all_labels.items()))
        samples.append({"labels": f"ALERTS{{{text}}}", "value": 1})
    return {"expr": 'ALERTS{alertstate="firing"}', "eval_time": at, "exp_samples": samples}


def expect(expr: str, at: str, *samples: tuple[str, float]) -> dict[str, Any]:
    """A promql_expr_test: the exact samples `expr` returns at `at`."""
    exp = [{"labels": labels, "value": value} for labels, value in samples]
    return {"expr": expr, "eval_time": at, "exp_samples": exp}


def alert_test(at: str, name: str, labels: dict[str, str], **annotations: str) -> dict[str, Any]:
    """An alert_rule_test pinning one alert's labels and annotations."""
    exp = {"exp_labels": labels, "exp_annotations": annotations}
    return {"eval_time": at, "alertname": name, "exp_alerts": [exp]}


def write_rules(tmp_path: Path, config: dict[str, str] | None = None, text: str = "") -> Path:
    path = tmp_path / "node-ping.rules.yml"
    path.write_text(text or render(config))
    return path


def run_promtool(tmp_path: Path, tests: list[dict[str, Any]], rules: Path | None = None) -> None:
    path = tmp_path / "test.yml"
    rules = rules or write_rules(tmp_path)
    spec = {"rule_files": [str(rules)], "evaluation_interval": f"{STEP_S}s", "tests": tests}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def case(
    cluster: Cluster, checks: list[dict[str, Any]], alerts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    test: dict[str, Any] = {
        "interval": f"{STEP_S}s",
        "input_series": cluster.series(),
        "promql_expr_test": checks,
    }
    if alerts:
        test["alert_rule_test"] = alerts
    return test


def at(minutes: float) -> str:
    return f"{round(minutes * 60)}s"


FOUR = ["a", "b", "c", "d"]
SIX = ["a", "b", "c", "d", "e", "f"]
FAULT = 15  # Cluster.fault_start
PARTITION = "node_ping:verdict:partition"
OUTAGE = "node_ping:verdict:node_outage"


def node_fault(node: str, nodes: list[str], ratio: float) -> dict[Pair, float]:
    """Everything into (or out of) ``node`` lost at ``ratio``: with echo, both its column
    (requests to it) and its row (replies to its own probes) lose."""
    return {
        **{(s, node): ratio for s in nodes if s != node},
        **{(node, d): ratio for d in nodes if d != node},
    }


def cut(group_a: list[str], group_b: list[str]) -> dict[Pair, float]:
    return {
        **{(a, b): 1.0 for a in group_a for b in group_b},
        **{(b, a): 1.0 for a in group_a for b in group_b},
    }


def test_syntax(tmp_path: Path) -> None:
    for config in ({}, {"seriesSelector": 'job="node-exporter"'}):
        result = subprocess.run(
            ["promtool", "check", "rules", str(write_rules(tmp_path, config))],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_clean_cluster_fires_nothing(tmp_path: Path) -> None:
    run_promtool(tmp_path, [case(Cluster(SIX), [firing([], at(20)), firing([], at(30))])])


def test_unreachable_node_within_two_minutes(tmp_path: Path) -> None:
    """d down (everything in and out lost): NodePingNodeUnreachable{d} alone, within 2
    minutes of the fault at kube-prometheus-stack's 30 s scrape and evaluation."""
    cluster = Cluster(SIX, loss=node_fault("d", SIX, 1.0))
    expected = [("NodePingNodeUnreachable", {"node": "d"})]
    alert = alert_test(
        at(25),
        "NodePingNodeUnreachable",
        {"severity": "critical", "node": "d"},
        summary="d is unreachable from 100% of the nodes",
        description=(
            "100% of the nodes that ping d get (almost) no answer from it: the node is down, "
            "or its network interface, its link or a firewall on it drops everything. Its own "
            "probes are 100% lost."
        ),
        runbook_url="docs/runbooks.md#nodepingnodeunreachable",
    )
    checks = [
        firing([], at(FAULT + 0.5)),
        firing(expected, at(FAULT + 2)),
        firing(expected, at(25)),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_node_loss_names_no_direction_within_five_minutes(tmp_path: Path) -> None:
    """30 % of everything arriving at c lost: c's column and row lose; one NodePingNodeLoss."""
    cluster = Cluster(SIX, loss=node_fault("c", SIX, 0.3))
    expected = [("NodePingNodeLoss", {"node": "c"})]
    alert = alert_test(
        at(FAULT + 5),
        "NodePingNodeLoss",
        {"severity": "warning", "node": "c"},
        summary="c or its link loses packets",
        description=(
            "100% of the nodes that ping c lose more than the pair threshold (mean loss 30%), "
            "and c's own probes lose 30%. Direction unknown (too few of its pairs have STAMP "
            "data): the node, its interface, cable, switch port or a firewall on it."
        ),
        runbook_url="docs/runbooks.md#nodepingnodeloss",
    )
    checks = [
        firing(expected, at(FAULT + 5)),
        expect("round(node_ping:verdict:node_loss, 0.01)", at(25), ('{node="c"}', 1.0)),
        expect('round(node_ping:node_own_loss:ratio{node="c"}, 0.01)', at(25), ('{node="c"}', 0.3)),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_ten_percent_loss_at_a_node_alerts_within_five_minutes(tmp_path: Path) -> None:
    cluster = Cluster(SIX, loss=node_fault("e", SIX, 0.1))
    run_promtool(
        tmp_path, [case(cluster, [firing([("NodePingNodeLoss", {"node": "e"})], at(FAULT + 5))])]
    )


def test_one_lossy_link_among_many(tmp_path: Path) -> None:
    """Everything a → e lost at 40 %: echo loses both pairs (requests one way, replies the
    other); two NodePingLinkLoss, nothing node-level."""
    cluster = Cluster(SIX, loss={("a", "e"): 0.4, ("e", "a"): 0.4})
    expected = [
        ("NodePingLinkLoss", {"source_node": "a", "destination_node": "e"}),
        ("NodePingLinkLoss", {"source_node": "e", "destination_node": "a"}),
    ]
    run_promtool(tmp_path, [case(cluster, [firing(expected, at(FAULT + 5))])])


def into(node: str, nodes: list[str], ratio: float) -> dict[Pair, float]:
    """Everything arriving at ``node`` lost at ``ratio`` (one way per source)."""
    return {(s, node): ratio for s in nodes if s != node}


def out_of(node: str, nodes: list[str], ratio: float) -> dict[Pair, float]:
    return {(node, d): ratio for d in nodes if d != node}


DIRECTION = "round(node_ping:verdict:node_loss_direction, 0.01)"


def test_stamp_names_the_direction_of_a_node_fault(tmp_path: Path) -> None:
    """30 % of what arrives at c lost (one cluster), 20 % of what leaves e (another): echo
    loses both ways at each; STAMP puts c's loss on the way in and e's on the way out,
    in the alert."""
    c_in = Cluster(SIX, stamp=True, way_loss=into("c", SIX, 0.3))
    e_out = Cluster(SIX, stamp=True, way_loss=out_of("e", SIX, 0.2))
    alert_c = alert_test(
        at(FAULT + 6),
        "NodePingNodeLoss",
        {"severity": "warning", "node": "c"},
        summary="c loses 30% of what arrives;",
        description=(
            "100% of the nodes that ping c lose more than the pair threshold (mean loss 30%), "
            "and c's own probes lose 30%. STAMP places the loss on one way: what arrives at "
            "the node: its interface, cable, switch port or a firewall on it."
        ),
        runbook_url="docs/runbooks.md#nodepingnodeloss",
    )
    c_checks = [
        firing([("NodePingNodeLoss", {"node": "c"})], at(FAULT + 5)),
        expect(DIRECTION, at(25), ('{node="c",direction="in"}', 0.3)),
        expect("node_ping:verdict:protocol_loss", at(25)),
    ]
    e_checks = [
        firing([("NodePingNodeLoss", {"node": "e"})], at(FAULT + 5)),
        expect(DIRECTION, at(25), ('{node="e",direction="out"}', 0.2)),
    ]
    run_promtool(tmp_path, [case(c_in, c_checks, [alert_c]), case(e_out, e_checks)])


def test_without_stamp_replies_the_direction_stays_unknown(tmp_path: Path) -> None:
    """30 % into c, and c's STAMP port blocked both ways (no reply: nothing to place the
    loss with): the node loss alert, direction unknown; and the UDP alert, since UDP
    loses far more than echo (both are true)."""
    udp_blocked = {**into("c", SIX, 1.0), **out_of("c", SIX, 1.0)}
    cluster = Cluster(SIX, stamp=True, way_loss=into("c", SIX, 0.3), udp_way_loss=udp_blocked)
    alert = alert_test(
        at(25),
        "NodePingNodeLoss",
        {"severity": "warning", "node": "c"},
        summary="c or its link loses packets",
        description=(
            "100% of the nodes that ping c lose more than the pair threshold (mean loss 30%), "
            "and c's own probes lose 30%. Direction unknown (too few of its pairs have STAMP "
            "data): the node, its interface, cable, switch port or a firewall on it."
        ),
        runbook_url="docs/runbooks.md#nodepingnodeloss",
    )
    checks = [
        firing(
            [
                ("NodePingNodeLoss", {"node": "c"}),
                ("NodePingUDPLoss", {"node": "c", "protocol": "udp"}),
            ],
            at(FAULT + 5),
        ),
        expect(DIRECTION, at(25)),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_stamp_names_both_ways_when_both_lose(tmp_path: Path) -> None:
    cluster = Cluster(SIX, stamp=True, way_loss={**into("b", SIX, 0.2), **out_of("b", SIX, 0.2)})
    checks = [
        firing([("NodePingNodeLoss", {"node": "b"})], at(FAULT + 5)),
        expect(
            DIRECTION,
            at(25),
            ('{node="b",direction="in"}', 0.2),
            ('{node="b",direction="out"}', 0.2),
        ),
    ]
    alert = alert_test(
        at(25),
        "NodePingNodeLoss",
        {"severity": "warning", "node": "b"},
        summary="b loses 20% of what arrives; 20% of what leaves;",
        description=(
            "100% of the nodes that ping b lose more than the pair threshold (mean loss 36%), "
            "and b's own probes lose 36%. STAMP places the loss on both ways: its interface, "
            "cable, switch port or a firewall on it."
        ),
        runbook_url="docs/runbooks.md#nodepingnodeloss",
    )
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_stamp_names_the_way_of_a_one_way_link_fault(tmp_path: Path) -> None:
    """Everything a → e lost at 40 %, e → a clean: both echo pairs lose (request one way,
    reply the other), both link alerts say it is the way from a to e."""
    cluster = Cluster(SIX, stamp=True, way_loss={("a", "e"): 0.4})
    expected = [
        ("NodePingLinkLoss", {"source_node": "a", "destination_node": "e"}),
        ("NodePingLinkLoss", {"source_node": "e", "destination_node": "a"}),
    ]
    description = (
        "Echo requests from {} to {} are 40% lost while both nodes reach the rest of the "
        "cluster: a link, route or network policy between them. STAMP places it on a → e (40%); "
    )
    alert = {
        "eval_time": at(25),
        "alertname": "NodePingLinkLoss",
        "exp_alerts": [
            {
                "exp_labels": {"severity": "warning", "source_node": s, "destination_node": d},
                "exp_annotations": {
                    "summary": f"{s} → {d}: 40% packet loss",
                    "description": description.format(s, d),
                    "runbook_url": "docs/runbooks.md#nodepinglinkloss",
                },
            }
            for s, d in (("a", "e"), ("e", "a"))
        ],
    }
    checks = [
        firing(expected, at(FAULT + 5)),
        expect(
            "round(node_ping:verdict:link_loss_direction, 0.01)",
            at(25),
            ('{from_node="a",to_node="e"}', 0.4),
        ),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_udp_lost_while_icmp_passes_is_a_udp_policy(tmp_path: Path) -> None:
    """A firewall on d drops UDP both ways; echo is clean: NodePingUDPLoss{d} alone."""
    udp = {**into("d", SIX, 1.0), **out_of("d", SIX, 1.0)}
    cluster = Cluster(SIX, stamp=True, udp_way_loss=udp)
    expected = [("NodePingUDPLoss", {"node": "d", "protocol": "udp"})]
    alert = alert_test(
        at(25),
        "NodePingUDPLoss",
        {"severity": "warning", "node": "d", "protocol": "udp"},
        summary="d: 100% of UDP lost while ICMP passes",
        description=(
            "Most nodes lose their STAMP test packets (UDP) to or from d (100% on average) "
            "while their echo requests pass: a firewall, network policy or security group that "
            "drops UDP on the node (overlay networks such as VXLAN or WireGuard and DNS are UDP "
            "too), or its reflector refuses them (0/s refused as from unknown sources)."
        ),
        runbook_url="docs/runbooks.md#nodepingudploss",
    )
    checks = [firing([], at(FAULT)), firing(expected, at(FAULT + 5)), firing(expected, at(25))]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_icmp_lost_while_udp_passes_is_an_icmp_policy(tmp_path: Path) -> None:
    """30 % of the ICMP arriving at f dropped (a rate limit), UDP clean: the node loss
    alert says only ICMP is lost."""
    cluster = Cluster(SIX, stamp=True, icmp_way_loss=into("f", SIX, 0.3))
    checks = [
        firing([("NodePingNodeLoss", {"node": "f"})], at(FAULT + 5)),
        expect(
            "round(node_ping:verdict:protocol_loss, 0.01)",
            at(25),
            ('{node="f",protocol="icmp"}', 0.3),
        ),
        expect(DIRECTION, at(25)),
    ]
    alert = alert_test(
        at(25),
        "NodePingNodeLoss",
        {"severity": "warning", "node": "f"},
        summary="f or its link loses packets",
        description=(
            "100% of the nodes that ping f lose more than the pair threshold (mean loss 30%), "
            "and f's own probes lose 30%. Only ICMP is lost: UDP (STAMP) to and from it passes, "
            "so this is a policy or rate limit on ICMP, not its link."
        ),
        runbook_url="docs/runbooks.md#nodepingnodeloss",
    )
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_clean_cluster_with_stamp_fires_nothing(tmp_path: Path) -> None:
    cluster = Cluster(SIX, stamp=True)
    checks = [
        firing([], at(20)),
        firing([], at(30)),
        expect("node_ping:verdict:protocol_loss", at(30)),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_large_packets_lost_at_a_node_is_a_path_mtu_alert(tmp_path: Path) -> None:
    """Packets over 1000 bytes dropped in and out of b (an MTU black hole), small ones
    pass: NodePingPathMTU{b} alone, naming the size probed."""
    black_hole = {**into("b", SIX, 1.0), **out_of("b", SIX, 1.0)}
    cluster = Cluster(SIX, size=True, large_way_loss=black_hole)
    expected = [("NodePingPathMTU", {"node": "b"})]
    alert = alert_test(
        at(25),
        "NodePingPathMTU",
        {"severity": "warning", "node": "b"},
        summary=(
            "Large packets lost on b's paths while small ones pass (path MTU below 1500 bytes?)"
        ),
        description=(
            "100% of the path-MTU probes to b (echo requests as large as the route allows, "
            "never fragmented) are lost, while small echo requests pass: an MTU black hole on "
            "its link. Its interface, a VPN or overlay on the way has a smaller MTU than the "
            'route, and the "packet too big" answer is dropped (a firewall), or fragments are. '
            "Pods on it lose traffic of full-size packets (TLS handshakes, large responses) to "
            "the other nodes."
        ),
        runbook_url="docs/runbooks.md#nodepingpathmtu",
    )
    checks = [
        firing([], at(FAULT)),
        firing(expected, at(FAULT + 5)),
        expect("node_ping:verdict:link_size_loss", at(25)),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_large_packets_lost_on_one_path_is_a_link_path_mtu_alert(tmp_path: Path) -> None:
    cluster = Cluster(SIX, size=True, large_way_loss={("a", "e"): 1.0, ("e", "a"): 1.0})
    expected = [
        ("NodePingLinkPathMTU", {"source_node": "a", "destination_node": "e"}),
        ("NodePingLinkPathMTU", {"source_node": "e", "destination_node": "a"}),
    ]
    checks = [firing(expected, at(FAULT + 5)), expect("node_ping:verdict:node_size_loss", at(25))]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_size_probes_losing_more_by_chance_into_a_lossy_node_are_no_path_mtu(
    tmp_path: Path,
) -> None:
    """b loses 30 % of everything both ways, large packets alike; on the path a → b the
    18 size probes of a window lose 62 % (11 of 18: 2.9 standard deviations above
    30 %, what one source in about 165 sees at every evaluation — with 1000
    sources, always one). Over the large-packet threshold, but chance explains it:
    the node's loss only, no path-MTU verdict. (The sizing simulation at 50 nodes
    made such verdicts before the rule weighed the number of probes.)"""
    into_b = {(s, "b"): 0.3 for s in SIX if s != "b"}
    cluster = Cluster(
        SIX, loss=node_fault("b", SIX, 0.3), size=True, large_way_loss={**into_b, ("a", "b"): 0.62}
    )
    checks = [
        firing([("NodePingNodeLoss", {"node": "b"})], at(FAULT + 5)),
        expect("node_ping:verdict:link_size_loss", at(FAULT + 5)),
        expect("node_ping:verdict:node_size_loss", at(FAULT + 5)),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_size_probes_refused_by_the_kernel_are_no_loss(tmp_path: Path) -> None:
    """c's kernel refuses every size probe (it knows a smaller path MTU): recorded for
    diagnose, no alert, no loss verdict."""
    refused = {("c", d): 1.0 for d in SIX if d != "c"}
    cluster = Cluster(SIX, size=True, large_refused=refused)
    checks = [
        firing([], at(25)),
        expect(
            "node_ping:verdict:size_refused",
            at(25),
            ('node_ping:verdict:size_refused{node="c"}', 1.0),
        ),
        expect("node_ping:verdict:node_size_loss", at(25)),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_clean_cluster_with_size_probes_fires_nothing(tmp_path: Path) -> None:
    """Also with a little loss of large packets on one path (10 %: 2 of 18 probes in
    a window), which is no black hole."""
    cluster = Cluster(SIX, size=True, stamp=True, large_way_loss={("a", "e"): 0.1})
    checks = [firing([], at(20)), firing([], at(30))]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_a_rolling_restart_of_the_agents_is_no_udp_loss(tmp_path: Path) -> None:
    """Each agent restarts in turn, a minute apart: its reflector answers nothing for
    10 s (5.6 % of a 3-minute window) while the node's kernel still answers echo.
    Not a UDP policy: no alert, no verdict."""
    restarts = {node: minute for minute, node in enumerate(SIX)}
    cluster = Cluster(SIX, stamp=True, restarts=restarts)
    steps = [FAULT + step * STEP_S / 60 for step in range(1, 20)]  # every evaluation
    checks = [
        *(firing([], at(m)) for m in steps),
        *(expect("node_ping:verdict:protocol_loss", at(m)) for m in steps),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_loss_counted_in_the_scrape_after_a_restart_is_no_udp_loss(tmp_path: Path) -> None:
    """The restarted agent's peers count 10 s more of STAMP lost in the scrape after
    its first one (its discovery synced late; timeouts counted after that scrape):
    that loss stays in their windows after the old reflector's last sample has left
    the loss window, and is still no UDP policy."""
    restarts = {node: minute for minute, node in enumerate(SIX)}
    cluster = Cluster(SIX, stamp=True, restarts=restarts, restart_tail=10)
    steps = [FAULT + step * STEP_S / 60 for step in range(1, 24)]  # every evaluation
    checks = [expect("node_ping:verdict:protocol_loss", at(m)) for m in steps]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_a_rollout_with_slow_pod_starts_is_no_udp_loss(tmp_path: Path) -> None:
    """A DaemonSet rollout, a minute apart, where each new pod takes 30-40 s to answer
    (an image pull): one scrape of the node fails, and its peers count STAMP lost in
    the scrape after it is back too. The senders' windows still hold that loss after
    the last sample of the old reflector has left the loss window: no alert, no
    verdict then either."""
    gone = {node: (minute + 1.0, minute + 1.5) for minute, node in enumerate(SIX)}
    cluster = Cluster(SIX, stamp=True, agent_down=gone)
    steps = [FAULT + step * STEP_S / 60 for step in range(1, 24)]  # every evaluation
    checks = [
        *(firing([], at(m)) for m in steps),
        *(expect("node_ping:verdict:protocol_loss", at(m)) for m in steps),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_an_agent_back_after_minutes_down_is_no_udp_loss(tmp_path: Path) -> None:
    """d's agent is gone for 4 minutes (a crash loop), longer than the loss window, then
    comes back: its reflector's series is new, the STAMP it missed is no UDP policy.
    A UDP firewall at d from the start still is."""
    cluster = Cluster(SIX, stamp=True, agent_down={"d": (1, 5)})
    checks = [
        *(firing([], at(FAULT + m)) for m in range(1, 12)),
        *(expect("node_ping:verdict:protocol_loss", at(FAULT + m)) for m in range(1, 12)),
    ]
    udp = {(s, "d"): 0.5 for s in SIX if s != "d"}
    firewalled = Cluster(SIX, stamp=True, agent_down={"d": (1, 5)}, udp_way_loss=udp)
    expected = [("NodePingUDPLoss", {"node": "d", "protocol": "udp"})]
    run_promtool(
        tmp_path,
        [case(cluster, checks), case(firewalled, [firing(expected, at(FAULT + 12))])],
    )


def test_ten_percent_link_loss_within_five_minutes(tmp_path: Path) -> None:
    cluster = Cluster(SIX, loss={("b", "f"): 0.1, ("f", "b"): 0.1})
    expected = [
        ("NodePingLinkLoss", {"source_node": "b", "destination_node": "f"}),
        ("NodePingLinkLoss", {"source_node": "f", "destination_node": "b"}),
    ]
    run_promtool(tmp_path, [case(cluster, [firing(expected, at(FAULT + 5))])])


def test_a_node_fault_and_a_link_fault_at_once(tmp_path: Path) -> None:
    loss = {**node_fault("c", SIX, 0.4), ("a", "b"): 0.5, ("b", "a"): 0.5}
    expected = [
        ("NodePingNodeLoss", {"node": "c"}),
        ("NodePingLinkLoss", {"source_node": "a", "destination_node": "b"}),
        ("NodePingLinkLoss", {"source_node": "b", "destination_node": "a"}),
    ]
    run_promtool(tmp_path, [case(Cluster(SIX, loss=loss), [firing(expected, at(25))])])


@pytest.mark.parametrize("nodes", [FOUR, SIX], ids=["four", "six"])
def test_two_faulty_nodes_are_named_and_the_others_are_not(
    tmp_path: Path, nodes: list[str]
) -> None:
    """In four nodes, a and b faulty make c's and d's columns 2/3 lossy: the stronger
    suspects (a, b: every source lossy) explain them."""
    loss = {**node_fault("a", nodes, 0.3), **node_fault("b", nodes, 0.3)}
    expected = [("NodePingNodeLoss", {"node": "a"}), ("NodePingNodeLoss", {"node": "b"})]
    run_promtool(tmp_path, [case(Cluster(nodes, loss=loss), [firing(expected, at(25))])])


@pytest.mark.parametrize(
    ("nodes", "faulty"),
    [(["a", "b", "c"], ["a", "b"]), (["a", "b"], ["a"]), (SIX, SIX)],
    ids=["two of three", "two nodes", "everything lossy"],
)
def test_ambiguous_when_every_node_is_a_suspect(
    tmp_path: Path, nodes: list[str], faulty: list[str]
) -> None:
    """No clean pair to anchor the matrix: one NodePingLossAmbiguous, no node guessed."""
    loss: dict[Pair, float] = {}
    for node in faulty:
        loss |= node_fault(node, nodes, 0.3)
    expected: list[Alert] = [("NodePingLossAmbiguous", {})]
    checks = [
        firing(expected, at(25)),
        expect("node_ping:verdict:ambiguous", at(25), ("node_ping:verdict:ambiguous", len(nodes))),
    ]
    run_promtool(tmp_path, [case(Cluster(nodes, loss=loss), checks)])


def test_partition_is_one_alert_naming_the_sides(tmp_path: Path) -> None:
    """Zone a (a, b) cut from zones b and c (c-f): one NodePingPartition within 2 minutes,
    not an unreachable alert per node of the small side."""
    zones = {
        "a": "zone-a",
        "b": "zone-a",
        "c": "zone-b",
        "d": "zone-b",
        "e": "zone-c",
        "f": "zone-c",
    }
    cluster = Cluster(SIX, loss=cut(["a", "b"], ["c", "d", "e", "f"]), zones=zones)
    expected: list[Alert] = [("NodePingPartition", {})]
    sides = [(f'{PARTITION}{{node="{n}",zone="{zones[n]}"}}', 2 if n in "ab" else 4) for n in SIX]
    description = (
        "Groups of nodes reach each other but nothing of the other group (a zone, rack or "
        "switch split, or a routing or firewall change between them). Each node (zone) with "
        "the size of its side: a (zone-a) 2; b (zone-a) 2; c (zone-b) 4; d (zone-b) 4; "
        "e (zone-c) 4; f (zone-c) 4; `diagnose` lists the groups."
    )
    alert = alert_test(
        at(FAULT + 2),
        "NodePingPartition",
        {"severity": "critical"},
        summary="The cluster is split: 6 nodes cannot reach the other side",
        description=description,
        runbook_url="docs/runbooks.md#nodepingpartition",
    )
    checks = [
        firing([], at(FAULT + 0.5)),
        firing(expected, at(FAULT + 2)),
        firing(expected, at(25)),
        expect("node_ping:verdict:partition", at(25), *sides),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_an_even_partition_without_zones(tmp_path: Path) -> None:
    cluster = Cluster(SIX, loss=cut(["a", "c", "e"], ["b", "d", "f"]))
    sides = [(f'{PARTITION}{{node="{n}"}}', 3) for n in SIX]
    checks = [
        firing([("NodePingPartition", {})], at(25)),
        expect("node_ping:verdict:partition", at(25), *sides),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def sampled(nodes: list[str], zones: dict[str, str], k: int) -> dict[str, set[str]]:
    """What each node probes with --max-peers k, chosen as the agents choose."""
    return {n: choose_peers(n, nodes, k, zones) for n in nodes}


TWELVE = [f"n{i:02d}" for i in range(12)]
TWELVE_ZONES = {n: f"zone-{'abc'[i % 3]}" for i, n in enumerate(TWELVE)}


def test_a_zone_cut_off_is_a_partition_on_a_sample(tmp_path: Path) -> None:
    """12 nodes in 3 zones, each probing 4 (--max-peers 4): zone-a cut off from the
    others. Sides counted node by node do not add up on a sample; the zones' dead
    pairs name every node with its side (4 | 8), none unreachable."""
    probes = sampled(TWELVE, TWELVE_ZONES, 4)
    side_a = [n for n in TWELVE if TWELVE_ZONES[n] == "zone-a"]
    others = [n for n in TWELVE if n not in side_a]
    cluster = Cluster(TWELVE, loss=cut(side_a, others), zones=TWELVE_ZONES, probes=probes)
    sides = [
        (f'{PARTITION}{{node="{n}",zone="{TWELVE_ZONES[n]}"}}', 4 if n in side_a else 8)
        for n in TWELVE
    ]
    checks = [
        firing([("NodePingPartition", {})], at(FAULT + 2)),
        firing([("NodePingPartition", {})], at(25)),
        expect(PARTITION, at(25), *sides),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_dead_nodes_in_two_zones_are_no_zone_cut_on_a_sample(tmp_path: Path) -> None:
    """Two nodes of each zone down (4 of 12, every third one dead and its agent still
    scraped): most pairs between two zones can be dead, but so are most within a
    zone — each down node is unreachable, no partition."""
    probes = sampled(TWELVE, TWELVE_ZONES, 4)
    down = ["n00", "n03", "n01", "n04"]  # zone-a: n00, n03; zone-b: n01, n04
    loss = {pair: 1.0 for node in down for pair in node_fault(node, TWELVE, 1.0)}
    cluster = Cluster(TWELVE, loss=loss, zones=TWELVE_ZONES, probes=probes)
    checks = [
        firing([("NodePingNodeUnreachable", {"node": n}) for n in sorted(down)], at(25)),
        expect("node_ping:zone_pair:cut", at(25)),
        expect(PARTITION, at(25)),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_every_node_of_a_zone_down_is_no_zone_cut_on_a_sample(tmp_path: Path) -> None:
    """zone-b's four nodes each down (agents still scraped): every pair between
    zone-b and the others is dead both ways, as in a cut, but zone-b does not reach
    itself either — four unreachable nodes, no partition."""
    probes = sampled(TWELVE, TWELVE_ZONES, 4)
    down = sorted(n for n in TWELVE if TWELVE_ZONES[n] == "zone-b")
    loss = {pair: 1.0 for node in down for pair in node_fault(node, TWELVE, 1.0)}
    cluster = Cluster(TWELVE, loss=loss, zones=TWELVE_ZONES, probes=probes)
    checks = [
        firing([("NodePingNodeUnreachable", {"node": n}) for n in down], at(25)),
        expect("node_ping:zone_pair:cut", at(25)),
        expect(PARTITION, at(25)),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def assert_partition_sides(tmp_path: Path, cluster: Cluster, sizes: dict[str, int]) -> None:
    """One NodePingPartition, and each node of ``sizes`` named with its zone and the
    size of its side (nodes not in ``sizes``: not named)."""
    sides = [(f'{PARTITION}{{node="{n}",zone="{cluster.zones[n]}"}}', v) for n, v in sizes.items()]
    checks = [
        firing([("NodePingPartition", {})], at(25)),
        expect(PARTITION, at(25), *sides),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_two_zones_cut_from_each_other_only(tmp_path: Path) -> None:
    """zone-a and zone-b cannot reach each other; zone-c reaches both (a routing
    change between two zones): the nodes of a and b are named, with the side each
    still reaches (its own zone and zone-c), zone-c's are not."""
    probes = sampled(TWELVE, TWELVE_ZONES, 4)
    zone = {z: [n for n in TWELVE if TWELVE_ZONES[n] == z] for z in ("zone-a", "zone-b")}
    cluster = Cluster(
        TWELVE, loss=cut(zone["zone-a"], zone["zone-b"]), zones=TWELVE_ZONES, probes=probes
    )
    assert_partition_sides(tmp_path, cluster, dict.fromkeys([*zone["zone-a"], *zone["zone-b"]], 8))


def test_a_partition_through_a_zone_in_a_full_mesh_is_counted_node_by_node(
    tmp_path: Path,
) -> None:
    """Full mesh, a cut through zone-b (zone-a and half of zone-b | the rest): zone-a
    and zone-c are cut from each other, but their zones' sides (8) are not the true
    ones. Every node is probed by every other, so each side is counted exactly: 6 | 6."""
    zone_b = [n for n in TWELVE if TWELVE_ZONES[n] == "zone-b"]
    side = [n for n in TWELVE if TWELVE_ZONES[n] == "zone-a"] + zone_b[:2]
    others = [n for n in TWELVE if n not in side]
    cluster = Cluster(TWELVE, loss=cut(side, others), zones=TWELVE_ZONES)
    assert_partition_sides(tmp_path, cluster, dict.fromkeys(TWELVE, 6))


def test_a_partition_with_an_agent_not_scraped_keeps_its_sides_whole(
    tmp_path: Path,
) -> None:
    """Full mesh, zone-a cut off, and the agent of a zone-b node reports no pairs (its
    node still answers): counted node by node, the nodes of zone-b and zone-c would
    miss it (7); while a probed node reports nothing the zones' sides come first."""
    side = [n for n in TWELVE if TWELVE_ZONES[n] == "zone-a"]
    others = [n for n in TWELVE if n not in side]
    silent = others[0]
    cluster = Cluster(TWELVE, loss=cut(side, others), zones=TWELVE_ZONES, probes={silent: set()})
    assert_partition_sides(tmp_path, cluster, {n: 4 if n in side else 8 for n in TWELVE})


def test_repeated_outages_seen_by_most_nodes_are_a_flicker(tmp_path: Path) -> None:
    """d vanished twice (outages ending 2 and 6 minutes after the fault started) for every
    source; the loss they cost is under the node threshold by then."""
    outages = {(s, "d"): [2, 6] for s in SIX if s != "d"}
    cluster = Cluster(SIX, outages=outages)
    expected = [("NodePingNodeFlicker", {"node": "d"})]
    checks = [
        firing([], at(FAULT + 5)),  # one outage is no alert
        expect(OUTAGE, at(FAULT + 5), (f'{OUTAGE}{{node="d"}}', 1)),
        firing(expected, at(FAULT + 7)),
        expect(OUTAGE, at(FAULT + 7)),  # the flicker says it all
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_the_late_replies_after_an_outage_are_no_slow_node(tmp_path: Path) -> None:
    """d flaps: an outage ends every minute, and the replies as each ends come back
    late (neighbour resolution): a mean RTT over 20 ms, a flicker, not a slow node.
    A node slow for every source still is, though one source saw it vanish."""
    outages = {(s, "d"): list(range(1, 8)) for s in SIX if s != "d"}
    flapping = Cluster(SIX, outages=outages, recovery_ms=1400)
    mean = 'node_ping:pair_rtt:mean_ms{source_node="a",destination_node="d"} > 20'
    checks = [
        expect(f"count({mean})", at(FAULT + 5), ("{}", 1)),
        firing([("NodePingNodeFlicker", {"node": "d"})], at(FAULT + 5)),
        expect("node_ping:verdict:node_slow", at(FAULT + 5)),
    ]
    slow = Cluster(
        SIX,
        rtt_ms={(s, "d"): 20.0 for s in SIX if s != "d"},
        outages={("a", "d"): [4]},
        recovery_ms=1400,
    )
    expected = [("NodePingHighRTT", {"node": "d"})]
    run_promtool(tmp_path, [case(flapping, checks), case(slow, [firing(expected, at(FAULT + 5))])])


def test_one_blip_is_an_outage_not_loss(tmp_path: Path) -> None:
    """d vanishes once for 25 s: over the 3-minute window that is 14 % of its probes, yet
    no loss alert: the probes lost in the outage are the outage's. diagnose's record of
    it stays for the outage window; a node with steady loss and a blip still alerts."""
    cluster = Cluster(SIX, blips={"d": [(1, 25)]})
    checks = [
        firing([], at(FAULT + 1.5)),
        firing([], at(FAULT + 3)),
        expect(OUTAGE, at(FAULT + 3), (f'{OUTAGE}{{node="d"}}', 1)),
        expect("node_ping:node_loss_suspect:ratio", at(FAULT + 3)),
        expect(
            'round(node_ping:pair_loss:ratio{source_node="a",destination_node="d"}, 0.01)',
            at(FAULT + 2),
            ('{source_node="a",destination_node="d"}', 0.14),
        ),
    ]
    lossy = Cluster(SIX, loss=node_fault("e", SIX, 0.2), blips={"e": [(1, 25)]})
    # With STAMP and size probes too: what the blip took from them is no UDP policy.
    probed = Cluster(SIX, blips={"d": [(1, 25)]}, stamp=True, size=True)
    quiet = [firing([], at(FAULT + m)) for m in (1.5, 2, 2.5, 3, 4)]
    quiet += [expect("node_ping:verdict:protocol_loss", at(FAULT + m)) for m in (1.5, 2, 3)]
    run_promtool(
        tmp_path,
        [
            case(cluster, checks),
            case(lossy, [firing([("NodePingNodeLoss", {"node": "e"})], at(25))]),
            case(probed, quiet),
        ],
    )


def test_a_starved_agent_is_not_packet_loss(tmp_path: Path) -> None:
    """b's agent skips 30 % of its probes and its loop lags 2 s; its own row looks 40 %
    lossy. One NodePingAgentStarved{b}: no link or node alert from its row."""
    loss = {("b", d): 0.4 for d in FOUR if d != "b"}
    cluster = Cluster(FOUR, loss=loss, skipped={"b": 0.3})
    expected = [("NodePingAgentStarved", {"node": "b"})]
    # With STAMP: its reflector answers late, so UDP to it "is lost" while the
    # kernel answers echo; no UDP policy for that (make accuracy found it).
    stamped = Cluster(FOUR, loss=loss, skipped={"b": 0.3}, stamp=True)
    checks = [firing(expected, at(FAULT + m)) for m in (5, 6, 8)]
    run_promtool(
        tmp_path,
        [case(cluster, [firing(expected, at(FAULT + 5))]), case(stamped, checks)],
    )


def test_pair_alerts_are_bounded(tmp_path: Path) -> None:
    """16 bad pairs spread so that no node crosses the node threshold: at most 10 alerts."""
    nodes = [f"n{i}" for i in range(8)]
    loss = {(nodes[i], nodes[(i + k) % 8]): 0.5 for i in range(8) for k in (1, 2)}
    checks = [
        expect(
            'count(ALERTS{alertstate="firing",alertname="NodePingLinkLoss"})', at(25), ("{}", 10)
        ),
        expect('count(ALERTS{alertstate="firing",alertname!="NodePingLinkLoss"})', at(25)),
    ]
    run_promtool(tmp_path, [case(Cluster(nodes, loss=loss), checks)])


def test_high_rtt_to_a_node(tmp_path: Path) -> None:
    cluster = Cluster(FOUR, rtt_ms={(s, "a"): 20.0 for s in FOUR if s != "a"})
    alert = alert_test(
        at(25),
        "NodePingHighRTT",
        {"severity": "warning", "node": "a"},
        summary="a answers slowly: mean RTT 20.0 ms",
        description="Most nodes see a mean round-trip time to a above the threshold; "
        "mean over all of them 20.0 ms.",
        runbook_url="docs/runbooks.md#nodepinghighrtt",
    )
    checks = [firing([("NodePingHighRTT", {"node": "a"})], at(25))]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_a_node_that_just_joined_raises_nothing(tmp_path: Path) -> None:
    """Node e appears at minute 10 and answers nobody: no alert while its pairs are younger
    than 10 minutes; still down after that, it is reported."""
    cluster = Cluster(
        SIX, minutes=30, fault_start=0, joins_at={"e": 10}, loss=node_fault("e", SIX, 1.0)
    )
    expected = [("NodePingNodeUnreachable", {"node": "e"})]
    run_promtool(tmp_path, [case(cluster, [firing([], at(19)), firing(expected, at(23))])])


def test_a_cordoned_node_going_away_raises_nothing(tmp_path: Path) -> None:
    """Scale-down: d is cordoned (kube-state-metrics), then stops answering."""
    cordoned = {
        "series": 'kube_node_spec_unschedulable{job="kube-state-metrics",node="d"}',
        "values": f"0x20 1x{Cluster(FOUR).steps - 20}",
    }
    cluster = Cluster(FOUR, loss=node_fault("d", FOUR, 1.0), extra=[cordoned])
    run_promtool(tmp_path, [case(cluster, [firing([], at(20)), firing([], at(25))])])


def test_a_node_that_crashed_and_was_removed_raises_nothing(tmp_path: Path) -> None:
    """d's machine goes away at minute 15, its Node object a minute later: the agents
    stop probing it and its series end. The loss of that minute is not judged for the
    next 3 minutes as if d were still there."""
    # the series end a minute after the fault started
    cluster = Cluster(SIX, loss=node_fault("d", SIX, 1.0), leaves_at={"d": FAULT + 1})
    checks = [firing([], at(FAULT + 0.5)), firing([], at(FAULT + 2)), firing([], at(FAULT + 4))]
    checks.append(expect("node_ping:verdict:node_loss", at(FAULT + 2)))
    run_promtool(tmp_path, [case(cluster, checks)])


def test_a_node_the_autoscaler_deletes_raises_nothing(tmp_path: Path) -> None:
    """Scale-down: the cluster autoscaler taints c, then stops the machine before the
    Node object goes."""
    taint = {
        "series": 'kube_node_spec_taint{job="kube-state-metrics",node="c",'
        'key="ToBeDeletedByClusterAutoscaler",value="1700000000",effect="NoSchedule"}',
        "values": f"_x20 1x{Cluster(SIX).steps - 20}",
    }
    cluster = Cluster(SIX, loss=node_fault("c", SIX, 1.0), extra=[taint])
    run_promtool(tmp_path, [case(cluster, [firing([], at(20)), firing([], at(25))])])


def test_external_targets(tmp_path: Path) -> None:
    extra = []
    steps = Cluster(FOUR).steps
    for source in FOUR:
        for name, ratio in (("dns", 1.0), ("gateway", 0.3), ("ntp", 0.0)):
            labels = (
                f'job="{JOB}",source_node="{source}",destination_name="{name}",'
                f'destination_host="{name}.example"'
            )
            sent = f"external_ping_packets_sent_total{{{labels}}}"
            received = f"external_ping_packets_received_total{{{labels}}}"
            extra += [
                {"series": sent, "values": f"0+30x{steps}"},
                {"series": received, "values": f"0+{30 * (1 - ratio):g}x{steps}"},
            ]
    expected = [
        ("NodePingExternalTargetUnreachable", {"destination_name": "dns"}),
        ("NodePingExternalTargetLoss", {"destination_name": "gateway"}),
    ]
    run_promtool(tmp_path, [case(Cluster(FOUR, extra=extra), [firing(expected, at(25))])])


def test_agent_health_alerts(tmp_path: Path) -> None:
    base = f'job="{JOB}",source_node="a"'
    textfile = 'job="node-exporter",instance="b",file="/textfile/node-ping_b.prom"'
    steps = Cluster(FOUR).steps
    extra = [
        {"series": f'up{{job="{JOB}",instance="z"}}', "values": f"1x10 0x{steps - 10}"},
        {
            "series": f'kube_node_ping_send_errors_total{{{base},reason="ENETUNREACH"}}',
            "values": f"0+5x{steps}",
        },
        {  # a neighbour that did not answer ARP: loss on the path, not a local refusal
            "series": f'kube_node_ping_send_errors_total{{{base},reason="EHOSTUNREACH"}}',
            "values": f"0+5x{steps}",
        },
        {  # the send buffer held by requests waiting for such neighbours: the same
            "series": f'kube_node_ping_send_errors_total{{{base},reason="EAGAIN"}}',
            "values": f"0+5x{steps}",
        },
        {
            "series": f'kube_node_ping_discovery_up{{{base},source="kubernetes"}}',
            "values": f"1x5 0x{steps - 5}",
        },
        {
            "series": f"node_textfile_mtime_seconds{{{textfile}}}",
            "values": f"0+30x10 300x{steps - 10}",
        },
    ]
    expected = [
        ("NodePingAgentDown", {"job": JOB, "instance": "z"}),
        ("NodePingSendErrors", {"source_node": "a", "reason": "ENETUNREACH"}),
        ("NodePingDiscoveryFailing", {"job": JOB, "source_node": "a", "source": "kubernetes"}),
        (
            "NodePingTextfileStale",
            {"job": "node-exporter", "instance": "b", "file": "/textfile/node-ping_b.prom"},
        ),
    ]
    run_promtool(tmp_path, [case(Cluster(FOUR, extra=extra), [firing(expected, at(25))])])


def test_textfile_mode_series_through_node_exporter(tmp_path: Path) -> None:
    """Series scraped from node-exporter (job node-exporter): with the rules' default
    selector nothing fires (the gap this config closes); rendered with the textfile
    selector, the unreachable node is found."""
    cluster = Cluster(SIX, loss=node_fault("b", SIX, 1.0), job="node-exporter")
    expected = [("NodePingNodeUnreachable", {"node": "b"})]
    rules = write_rules(tmp_path, {"seriesSelector": 'job="node-exporter"'})
    run_promtool(tmp_path, [case(cluster, [firing(expected, at(25))])], rules=rules)
    run_promtool(tmp_path, [case(cluster, [firing([], at(25))])])


def test_thresholds_are_read_from_the_threshold_series(tmp_path: Path) -> None:
    """The chart's thresholds values rewrite node_ping:threshold:*; a 2 % pair threshold
    turns 3 % loss on one link into alerts that the 5 % default does not raise."""
    default = "record: node_ping:threshold:pair_loss_ratio\n        expr: vector(0.05)"
    assert default in render()
    custom = write_rules(tmp_path, text=render().replace(default, default.replace("0.05", "0.02")))
    cluster = Cluster(SIX, loss={("a", "b"): 0.03, ("b", "a"): 0.03})
    expected = [
        ("NodePingLinkLoss", {"source_node": "a", "destination_node": "b"}),
        ("NodePingLinkLoss", {"source_node": "b", "destination_node": "a"}),
    ]
    run_promtool(tmp_path, [case(cluster, [firing(expected, at(25))])], rules=custom)
    run_promtool(tmp_path, [case(cluster, [firing([], at(25))])])  # default: quiet


def test_every_alert_has_its_runbook_and_annotations() -> None:
    runbooks = (Path(__file__).resolve().parent.parent / "docs" / "runbooks.md").read_text()
    sections = {line[3:].strip() for line in runbooks.splitlines() if line.startswith("## ")}
    rules = yaml.safe_load(render())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert name in sections, f"docs/runbooks.md has no section for {name}"
        annotations = alert["annotations"]
        assert annotations["runbook_url"] == f"docs/runbooks.md#{name.lower()}"
        assert annotations["summary"] and annotations["description"]
        assert alert["labels"]["severity"] in ("critical", "warning", "info")


def test_the_rules_command_prints_the_rendered_rules() -> None:
    """`node-ping-exporter rules --set …` prints what the chart and the lab load; a bad
    setting is one line naming it, exit 2."""

    def rules_command(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", "rules", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    result = rules_command("--set", 'seriesSelector=job="node-exporter"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == render({"seriesSelector": 'job="node-exporter"'})
    assert not re.search(r"\$\{\w+\}", result.stdout) and "\nconfig:" not in result.stdout
    for args, problem in [
        (["--set", "window=3m"], "unknown rules setting 'window' (known: agentSelector, "),
        (["--set", "lossWindow=3 min"], "rules setting 'lossWindow': '3 min' is not a duration"),
        (["--set", "seriesSelector={job=x}"], "give the label matchers without braces"),
        (["--set", "lossWindow"], "argument --set: 'lossWindow' is not KEY=VALUE"),
    ]:
        result = rules_command(*args)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.startswith("node-ping-exporter rules: ")
        assert problem in result.stderr and len(result.stderr.splitlines()) == 1
