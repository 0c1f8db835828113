"""Alert and recording rules (rules/node-ping.rules.yml) under `promtool test rules`.

Each scenario describes a small cluster in Python (nodes, which pairs lose what
from when, RTTs, nodes that join late) and is turned into a promtool unit test
with one-minute samples of the agent's counters. The expected result is the
exact set of firing alerts (from the ALERTS series, so that annotation wording
is not pinned here) plus, where it matters, recorded values and annotations.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import ROOT

RULES = ROOT / "rules" / "node-ping.rules.yml"
JOB = "node-ping-exporter"
pytestmark = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (apt-get install prometheus)",
)

Pair = tuple[str, str]


@dataclass
class Cluster:
    nodes: list[str]
    minutes: int = 40
    fault_start: int = 15  # faults below apply from this minute on
    loss: dict[Pair, float] = field(default_factory=dict)
    rtt_ms: dict[Pair, float] = field(default_factory=dict)
    joins_at: dict[str, int] = field(default_factory=dict)  # node -> first minute with series
    extra: list[dict[str, str]] = field(default_factory=list)

    def series(self) -> list[dict[str, str]]:
        out = list(self.extra)
        for source in self.nodes:
            out.append(
                {"series": f'up{{job="{JOB}",instance="{source}"}}', "values": f"1x{self.minutes}"}
            )
            for destination in self.nodes:
                if source != destination:
                    out += self._pair(source, destination)
        return out

    def _pair(self, source: str, destination: str) -> list[dict[str, str]]:
        labels = (
            f'job="{JOB}",source_node="{source}",destination_node="{destination}",'
            f'destination_node_ip_address="10.0.0.{self.nodes.index(destination) + 1}"'
        )
        first = max(self.joins_at.get(source, 0), self.joins_at.get(destination, 0))
        sent: list[str] = []
        received: list[str] = []
        rtt: list[str] = []
        totals = [0.0, 0.0, 0.0]
        for minute in range(self.minutes + 1):
            if minute < first:
                for values in (sent, received, rtt):
                    values.append("_")  # no series yet: the node has not joined
                continue
            if minute > first:
                faulty = minute > self.fault_start
                ratio = self.loss.get((source, destination), 0.0) if faulty else 0.0
                delay = self.rtt_ms.get((source, destination), 0.5) if faulty else 0.5
                replies = 60 * (1 - ratio)
                totals = [totals[0] + 60, totals[1] + replies, totals[2] + replies * delay]
            for values, total in zip((sent, received, rtt), totals, strict=True):
                values.append(f"{total:g}")
        return [
            {"series": f"kube_node_ping_packets_sent_total{{{labels}}}", "values": " ".join(sent)},
            {
                "series": f"kube_node_ping_packets_received_total{{{labels}}}",
                "values": " ".join(received),
            },
            {
                "series": f"kube_node_ping_rtt_milliseconds_total{{{labels}}}",
                "values": " ".join(rtt),
            },
        ]


Alert = tuple[str, dict[str, str]]
SEVERITY = {"NodePingNodeUnreachable": "critical"}


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


def run_promtool(tmp_path: Path, tests: list[dict[str, Any]], rules: Path = RULES) -> None:
    path = tmp_path / "test.yml"
    spec = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def case(
    cluster: Cluster, checks: list[dict[str, Any]], alerts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    test: dict[str, Any] = {
        "interval": "1m",
        "input_series": cluster.series(),
        "promql_expr_test": checks,
    }
    if alerts:
        test["alert_rule_test"] = alerts
    return test


FOUR = ["a", "b", "c", "d"]
SIX = ["a", "b", "c", "d", "e", "f"]


def into(node: str, nodes: list[str], ratio: float) -> dict[Pair, float]:
    return {(s, node): ratio for s in nodes if s != node}


def out_of(node: str, nodes: list[str], ratio: float) -> dict[Pair, float]:
    return {(node, d): ratio for d in nodes if d != node}


UNREACHABLE_D = 'node_ping:destination_unreachable_sources:ratio5m{destination_node="d"}'
LOSS_A_C = 'node_ping:pair_loss:ratio5m{source_node="a",destination_node="c"}'
LOSS_TO_E = 'node_ping:destination_loss:ratio5m{destination_node="e"}'
RTT_B_A = 'node_ping:pair_rtt:mean_ms5m{source_node="b",destination_node="a"}'
LINK_ALERTS = 'count(ALERTS{alertstate="firing",alertname="NodePingLinkLoss"})'
OTHER_ALERTS = 'count(ALERTS{alertstate="firing",alertname!="NodePingLinkLoss"})'


def test_syntax() -> None:
    result = subprocess.run(
        ["promtool", "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_clean_cluster_fires_nothing(tmp_path: Path) -> None:
    run_promtool(tmp_path, [case(Cluster(SIX), [firing([], "20m"), firing([], "40m")])])


def test_unreachable_node(tmp_path: Path) -> None:
    """All requests to d lost: only NodePingNodeUnreachable{d}; pairs and sources quiet."""
    cluster = Cluster(FOUR, loss=into("d", FOUR, 1.0))
    expected = [("NodePingNodeUnreachable", {"destination_node": "d"})]
    description = (
        "100% of the nodes that ping d have lost almost every echo request to it for 2 "
        "minutes: the node, its network interface or its uplink is down, or a firewall on "
        "it drops ICMP."
    )
    alert = alert_test(
        "25m",
        "NodePingNodeUnreachable",
        {"severity": "critical", "destination_node": "d"},
        summary="d is unreachable from 100% of the nodes",
        description=description,
        runbook_url="docs/runbooks.md#nodepingnodeunreachable",
    )
    checks = [
        firing([], "16m"),  # not before `for`
        firing(expected, "25m"),
        expect(UNREACHABLE_D, "25m", (UNREACHABLE_D, 1)),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_isolated_node_is_one_alert(tmp_path: Path) -> None:
    """In and out lost: still only NodePingNodeUnreachable{d}, not outbound or link alerts."""
    cluster = Cluster(FOUR, loss={**into("d", FOUR, 1.0), **out_of("d", FOUR, 1.0)})
    expected = [("NodePingNodeUnreachable", {"destination_node": "d"})]
    run_promtool(tmp_path, [case(cluster, [firing(expected, "25m")])])


def test_inbound_loss_at_a_node(tmp_path: Path) -> None:
    cluster = Cluster(FOUR, loss=into("c", FOUR, 0.3))
    per_destination = [(f'{{destination_node="{n}"}}', 0.3 if n == "c" else 0) for n in FOUR]
    checks = [
        firing([("NodePingNodeInboundLoss", {"destination_node": "c"})], "30m"),
        expect(f"round({LOSS_A_C}, 0.01)", "30m", ('{source_node="a",destination_node="c"}', 0.3)),
        expect("round(node_ping:destination_loss:ratio5m, 0.01)", "30m", *per_destination),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_outbound_loss_from_a_node(tmp_path: Path) -> None:
    cluster = Cluster(FOUR, loss=out_of("b", FOUR, 0.3))
    expected = [("NodePingNodeOutboundLoss", {"source_node": "b"})]
    run_promtool(tmp_path, [case(cluster, [firing(expected, "30m")])])


def test_single_bad_pair_among_many(tmp_path: Path) -> None:
    """One broken path in six nodes: NodePingLinkLoss for that pair, nothing node-level."""
    cluster = Cluster(SIX, loss={("a", "e"): 0.4})
    checks = [
        firing([("NodePingLinkLoss", {"source_node": "a", "destination_node": "e"})], "30m"),
        # summed over all sources the bad pair barely shows: why verdicts are per pair
        expect(f"round({LOSS_TO_E}, 0.01)", "30m", ('{destination_node="e"}', 0.08)),
    ]
    run_promtool(tmp_path, [case(cluster, checks)])


def test_a_node_fault_and_a_link_fault_at_once(tmp_path: Path) -> None:
    """Inbound loss at c and a broken a → b: a's loss towards c is c's doing, so a is not
    blamed as a source; the link keeps its own alert."""
    cluster = Cluster(FOUR, loss={**into("c", FOUR, 0.4), ("a", "b"): 0.5})
    expected = [
        ("NodePingNodeInboundLoss", {"destination_node": "c"}),
        ("NodePingLinkLoss", {"source_node": "a", "destination_node": "b"}),
    ]
    run_promtool(tmp_path, [case(cluster, [firing(expected, "30m")])])


def test_both_directions_of_a_link(tmp_path: Path) -> None:
    cluster = Cluster(SIX, loss={("b", "c"): 1.0, ("c", "b"): 1.0})
    expected = [
        ("NodePingLinkLoss", {"source_node": "b", "destination_node": "c"}),
        ("NodePingLinkLoss", {"source_node": "c", "destination_node": "b"}),
    ]
    run_promtool(tmp_path, [case(cluster, [firing(expected, "30m")])])


def test_pair_alerts_are_bounded(tmp_path: Path) -> None:
    """16 bad pairs spread so that no node crosses the node threshold: at most 10 alerts."""
    nodes = [f"n{i}" for i in range(8)]
    loss = {(nodes[i], nodes[(i + k) % 8]): 0.5 for i in range(8) for k in (1, 2)}
    checks = [expect(LINK_ALERTS, "30m", ("{}", 10)), expect(OTHER_ALERTS, "30m")]
    run_promtool(tmp_path, [case(Cluster(nodes, loss=loss), checks)])


def test_high_rtt_to_a_node(tmp_path: Path) -> None:
    cluster = Cluster(FOUR, rtt_ms={(s, "a"): 20.0 for s in FOUR if s != "a"})
    alert = alert_test(
        "30m",
        "NodePingHighRTT",
        {"severity": "warning", "destination_node": "a"},
        summary="a answers slowly: mean RTT 20.0 ms",
        description="Most nodes see a mean round-trip time to a above the threshold; "
        "mean over all of them 20.0 ms.",
        runbook_url="docs/runbooks.md#nodepinghighrtt",
    )
    checks = [
        firing([("NodePingHighRTT", {"destination_node": "a"})], "30m"),
        expect(RTT_B_A, "30m", (RTT_B_A, 20)),
    ]
    run_promtool(tmp_path, [case(cluster, checks, [alert])])


def test_a_node_that_just_joined_raises_nothing(tmp_path: Path) -> None:
    """Node e appears at minute 20 and answers nobody yet: no alert for its first 10
    minutes; still down at minute 36, it is reported."""
    loss = {**into("e", SIX, 1.0), **out_of("e", SIX, 1.0)}
    cluster = Cluster(SIX, minutes=40, fault_start=0, joins_at={"e": 20}, loss=loss)
    expected = [("NodePingNodeUnreachable", {"destination_node": "e"})]
    run_promtool(tmp_path, [case(cluster, [firing([], "29m"), firing(expected, "36m")])])


def test_a_cordoned_node_going_away_raises_nothing(tmp_path: Path) -> None:
    """Scale-down: d is cordoned (kube-state-metrics), then stops answering."""
    cordoned = {
        "series": 'kube_node_spec_unschedulable{job="kube-state-metrics",node="d"}',
        "values": "0x10 1x30",
    }
    cluster = Cluster(FOUR, loss=into("d", FOUR, 1.0), extra=[cordoned])
    run_promtool(tmp_path, [case(cluster, [firing([], "25m")])])


def test_external_targets(tmp_path: Path) -> None:
    extra = []
    for source in FOUR:
        for name, ratio in (("dns", 1.0), ("gateway", 0.3), ("ntp", 0.0)):
            labels = (
                f'job="{JOB}",source_node="{source}",destination_name="{name}",'
                f'destination_host="{name}.example"'
            )
            sent = f"external_ping_packets_sent_total{{{labels}}}"
            received = f"external_ping_packets_received_total{{{labels}}}"
            extra += [
                {"series": sent, "values": "0+60x40"},
                {"series": received, "values": f"0+{60 * (1 - ratio):g}x40"},
            ]
    expected = [
        ("NodePingExternalTargetUnreachable", {"destination_name": "dns"}),
        ("NodePingExternalTargetLoss", {"destination_name": "gateway"}),
    ]
    run_promtool(tmp_path, [case(Cluster(FOUR, extra=extra), [firing(expected, "30m")])])


def test_agent_health_alerts(tmp_path: Path) -> None:
    base = f'job="{JOB}",source_node="a"'
    textfile = 'job="node-exporter",instance="b",file="/textfile/node-ping_b.prom"'
    extra = [
        {"series": f'up{{job="{JOB}",instance="z"}}', "values": "1x10 0x30"},
        {
            "series": f'kube_node_ping_send_errors_total{{{base},reason="ENETUNREACH"}}',
            "values": "0+5x40",
        },
        {
            "series": f'kube_node_ping_discovery_up{{{base},source="kubernetes"}}',
            "values": "1x5 0x35",
        },
        {"series": f"node_textfile_mtime_seconds{{{textfile}}}", "values": "0+60x10 600x30"},
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
    run_promtool(tmp_path, [case(Cluster(FOUR, extra=extra), [firing(expected, "30m")])])


def test_thresholds_are_read_from_the_threshold_series(tmp_path: Path) -> None:
    """The chart's thresholds values rewrite node_ping:threshold:*; a 2 % pair threshold
    turns 3 % loss on one pair into an alert that the 5 % default does not raise."""
    default = "record: node_ping:threshold:pair_loss_ratio\n        expr: vector(0.05)"
    assert default in RULES.read_text()
    custom = tmp_path / "custom.rules.yml"
    custom.write_text(RULES.read_text().replace(default, default.replace("0.05", "0.02")))
    cluster = Cluster(SIX, loss={("a", "b"): 0.03})
    expected = [("NodePingLinkLoss", {"source_node": "a", "destination_node": "b"})]
    run_promtool(tmp_path, [case(cluster, [firing(expected, "30m")])], rules=custom)
    run_promtool(tmp_path, [case(cluster, [firing([], "30m")])])  # default: quiet


def test_every_alert_has_its_runbook_and_annotations() -> None:
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    sections = {line[3:].strip() for line in runbooks.splitlines() if line.startswith("## ")}
    rules = yaml.safe_load(RULES.read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        name = alert["alert"]
        assert name in sections, f"docs/runbooks.md has no section for {name}"
        annotations = alert["annotations"]
        assert annotations["runbook_url"] == f"docs/runbooks.md#{name.lower()}"
        assert annotations["summary"] and annotations["description"]
        assert alert["labels"]["severity"] in ("critical", "warning", "info")


def test_a_node_lossy_both_ways_is_one_alert(tmp_path: Path) -> None:
    """Flapping or partial loss in and out of b: one NodePingNodeInboundLoss{b}, not also
    an outbound alert for the same node."""
    cluster = Cluster(FOUR, loss={**into("b", FOUR, 0.5), **out_of("b", FOUR, 0.5)})
    expected = [("NodePingNodeInboundLoss", {"destination_node": "b"})]
    run_promtool(tmp_path, [case(cluster, [firing(expected, "30m")])])


def test_every_recording_rule_value(tmp_path: Path) -> None:
    """Each recorded series, on one scenario: 30 % inbound loss at c, RTT 0.5 ms, plus an
    external target that loses 30 % and answers in 2 ms."""
    extra = []
    for source in FOUR:
        labels = f'job="{JOB}",source_node="{source}",destination_name="gw",destination_host="gw"'
        extra += [
            {"series": f"external_ping_packets_sent_total{{{labels}}}", "values": "0+60x40"},
            {"series": f"external_ping_packets_received_total{{{labels}}}", "values": "0+42x40"},
            {"series": f"external_ping_rtt_milliseconds_total{{{labels}}}", "values": "0+84x40"},
        ]
    cluster = Cluster(FOUR, loss=into("c", FOUR, 0.3), extra=extra)
    pair = '{source_node="a",destination_node="c"}'
    clean_pair = '{source_node="a",destination_node="b"}'
    expected: list[tuple[str, str, float]] = [
        ("node_ping:pair_sent:rate5m", pair, 1.0),
        ("node_ping:pair_received:rate5m", pair, 0.7),
        ("node_ping:pair_loss:ratio5m", pair, 0.3),
        ("node_ping:pair_rtt:mean_ms5m", pair, 0.5),
        ("node_ping:pair_loss_established:ratio5m", pair, 0.3),
        ("node_ping:pair_rtt_established:mean_ms5m", pair, 0.5),
        ("node_ping:pair_loss_source_view:ratio5m", clean_pair, 0.0),
        ("node_ping:destination_loss:ratio5m", '{destination_node="c"}', 0.3),
        ("node_ping:destination_lossy_sources:ratio5m", '{destination_node="c"}', 1.0),
        ("node_ping:destination_unreachable_sources:ratio5m", '{destination_node="c"}', 0.0),
        ("node_ping:destination_rtt:mean_ms5m", '{destination_node="c"}', 0.5),
        ("node_ping:destination_slow_sources:ratio5m", '{destination_node="c"}', 0.0),
        ("node_ping:source_loss:ratio5m", '{source_node="a"}', 0.1),
        ("node_ping:source_lossy_destinations:ratio5m", '{source_node="a"}', 0.0),
        ("node_ping:source_unreachable_destinations:ratio5m", '{source_node="a"}', 0.0),
        ("external_ping:target_loss:ratio5m", '{source_node="a",destination_name="gw"}', 0.3),
        ("external_ping:target_rtt:mean_ms5m", '{source_node="a",destination_name="gw"}', 2.0),
        ("external_ping:target_lossy_sources:ratio5m", '{destination_name="gw"}', 1.0),
        ("external_ping:target_unreachable_sources:ratio5m", '{destination_name="gw"}', 0.0),
    ]
    checks = [
        expect(f"round({name}{labels}, 0.001)", "30m", (labels, value))
        for name, labels, value in expected
    ]
    # pairs towards c are explained by c: a source is judged without them
    checks.append(expect(f"node_ping:pair_loss_source_view:ratio5m{pair}", "30m"))
    run_promtool(tmp_path, [case(cluster, checks)])
    rules = yaml.safe_load(RULES.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    covered = {name for name, _, _ in expected}
    thresholds = {r for r in recorded if r.startswith("node_ping:threshold:")}
    assert recorded - thresholds == covered, sorted(recorded - thresholds - covered)
