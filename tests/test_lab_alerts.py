"""The alert rules and `diagnose` on the lab, with real faults: every scenario of
lab/scenarios.py fires exactly its alerts, `diagnose` prints exactly its verdicts —
read from what the rules recorded and evaluated by diagnose from the same rules,
which must agree — and a clean run with churn fires nothing. Also: textfile mode
(series only through node-exporter) alerts, and a threshold changed through the
chart's values changes the alerts and diagnose alike.

The shorter variant of `make accuracy` (benchmarks/accuracy.py): lab-sized windows
(lab.prometheus.FAST_CONFIG: 30 s loss window, pairs established after 1 minute,
every `for` 15 s) on a 5 s scrape with 50 ms probes, so that each fault shows within
a minute. Time from fault to firing is printed per scenario (pytest -s); the
shipped rules' times are measured by `make accuracy` (docs/accuracy.md).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from functools import partial

import pytest
import yaml

from exporter.diagnose import diagnose
from lab.cli import LabPrometheus
from lab.cluster import Lab
from lab.faults import Fault
from lab.prometheus import FAST_CONFIG, FAST_FOR
from lab.scenarios import (
    SCENARIOS,
    Outcome,
    Scenario,
    firing,
    lab_config,
    probed_pairs,
    run,
    sampled_config,
    sampled_scenarios,
    verdicts,
    wait_quiet,
)
from lab.state import LabConfig

from .conftest import NETNS_OK, NETNS_WHY, ROOT, record, running_lab

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not NETNS_OK, reason=NETNS_WHY)]

TIMINGS = ROOT / ".cache" / "alert-timing.txt"
# loss window + `for` + two evaluations + a scrape's slack
FIRE_LIMIT = 30 + 15 + 2 * 5 + 15
QUIET_LIMIT = 180
CI_SCENARIOS = [s for s in SCENARIOS if s.ci]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with running_lab("alerts", lab_config(shipped=False)) as lab:
        established(lab, pairs=6 * 5)
        yield lab


def established(lab: Lab, pairs: int, timeout: float = 150) -> None:
    """Until the rules judge every pair: they take pairs a minute old."""
    deadline = time.monotonic() + timeout
    while len(lab.prometheus.query("node_ping:pair_loss:ratio")) < pairs:
        assert time.monotonic() < deadline, "pairs not established"
        time.sleep(2)


def quiet(lab: Lab, history: bool = False) -> None:
    wait_quiet(lab.prometheus.query, LabPrometheus(lab), QUIET_LIMIT, history)


def test_a_clean_network_with_churn_fires_nothing(lab: Lab) -> None:
    """Agents restarted one by one, a node leaving (removed from the peers, then gone)
    and joining back: no alert fires, no network alert is even pending, no verdict but
    past outages."""
    prometheus = LabPrometheus(lab)

    def leave() -> None:
        lab.remove_peer("node-6")
        lab.agents.stop("node-6")

    def come_back() -> None:
        lab.faults.clear(node="node-6")
        lab.agents.start("node-6")

    plan: list[tuple[float, Callable[[], object]]] = [
        (5, lambda: lab.agents.restart("node-2")),
        (20, leave),
        (25, lambda: lab.faults.apply(Fault("isolate", "node-6"))),
        (60, come_back),
        (62, lambda: lab.add_peer("node-6")),
        *[(90 + 10 * i, partial(lab.agents.restart, f"node-{i + 1}")) for i in range(6)],
    ]
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < 200:
        while plan and plan[0][0] <= elapsed:
            plan.pop(0)[1]()
        assert firing(lab.prometheus.query) == set()
        # An agent restarting misses a scrape: its `up` is 0 for a moment, true, and
        # not for long enough to fire. Nothing else may even be pending.
        pending = firing(lab.prometheus.query, "pending")
        assert {name for name, _ in pending} <= {"NodePingAgentDown"}, pending
        found = {v for v in verdicts(diagnose(prometheus)) if v[0] != "node_outage"}
        assert found == set(), f"{elapsed:.0f}s: {found}"
        time.sleep(3)


@pytest.mark.parametrize("scenario", CI_SCENARIOS, ids=[s.name for s in CI_SCENARIOS])
def test_the_fault_fires_its_alerts_only(lab: Lab, scenario: Scenario) -> None:
    outcome = run_from_quiet(lab, scenario)
    for alert, seconds in sorted(outcome.fired.items()):
        line = f"{scenario.name}: {alert[0]} {alert[1]} fired {seconds:.0f}s after the fault"
        print(f"\n{line}")
        record(TIMINGS, line)  # read back for docs/alert-timing.md
    assert_named(outcome)


def run_from_quiet(lab: Lab, scenario: Scenario) -> Outcome:
    quiet(lab, history=scenario.clean_history)
    return run(
        lab,
        LabPrometheus(lab),
        lab.prometheus.query,
        scenario,
        FIRE_LIMIT + 30,
        shipped=False,
        inline=FAST_CONFIG,
    )


def assert_named(outcome: Outcome) -> None:
    """Exactly the scenario's alerts, each in time, and exactly its verdicts."""
    scenario = outcome.scenario
    assert not outcome.error, outcome.error
    assert set(outcome.fired) == scenario.alerts, outcome.fired
    assert all(seconds <= FIRE_LIMIT for seconds in outcome.fired.values()), outcome.fired
    assert outcome.verdicts == scenario.verdicts
    assert outcome.inline == outcome.verdicts  # one definition: recorded or inline
    # and the words say what the scenario is about (the way STAMP puts a loss on)
    assert outcome.unsaid == [], (outcome.texts, outcome.alert_texts)


def test_a_threshold_set_through_the_chart_changes_alerts_and_diagnose_alike(lab: Lab) -> None:
    """The chart renders the rules with pair_loss_ratio 0.4: 30 % loss into a node is
    then no problem for the alerts, for diagnose reading the recorded verdicts and for
    diagnose evaluating the rules itself with the thresholds Prometheus records."""
    from .test_chart import helm_binaries, render

    helm_binaries()
    values = [
        "--set", "prometheusRule.enabled=true",
        "--set-json", f"prometheusRule.config={json.dumps(FAST_CONFIG)}",
        "--set-json", "prometheusRule.thresholds.pair_loss_ratio=0.4",
    ]  # fmt: skip
    (rule,) = [o for o in render(values) if o["kind"] == "PrometheusRule"]
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if "for" in r:
                r["for"] = FAST_FOR
    quiet(lab)
    lab.prometheus.load_rules(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    prometheus = LabPrometheus(lab)
    try:
        deadline = time.monotonic() + 30
        while diagnose(prometheus).thresholds.get("pair_loss_ratio") != 0.4:
            assert time.monotonic() < deadline, "the chart's rules were not loaded"
            time.sleep(1)
        lab.faults.apply(Fault("node-in", "node-2", percent=30))
        time.sleep(FIRE_LIMIT)
        assert firing(lab.prometheus.query) | firing(lab.prometheus.query, "pending") == set()
        loss = diagnose(prometheus).loss
        assert all(row["node-2"] > 0.15 for source, row in loss.items() if source != "node-2")
        assert diagnose(prometheus).verdicts == []
        assert diagnose(prometheus, config=FAST_CONFIG).verdicts == []
        lab.faults.clear()
    finally:
        lab.faults.clear()
        lab.prometheus.load_rules(lab.prometheus.rules_text(lab.config))


@pytest.fixture(scope="module")
def textfile_lab() -> Iterator[Lab]:
    config = LabConfig(nodes=4, output="textfile", fast_alerts=True)
    with running_lab("textfile", config) as lab:
        established(lab, pairs=4 * 3)
        yield lab


def test_textfile_mode_alerts_through_node_exporter(textfile_lab: Lab) -> None:
    """Agents only write textfiles; Prometheus scrapes node-exporter alone, and the rules
    rendered for textfile mode (as the chart renders them) find the isolated node."""
    lab = textfile_lab
    jobs = {
        s["metric"]["job"]
        for s in lab.prometheus.query("count by (job) (kube_node_ping_packets_sent_total)")
    }
    assert jobs == {"node-exporter"}
    quiet(lab)
    scenario = Scenario(
        "textfile: node down",
        "node-3",
        (Fault("isolate", "node-3"),),
        frozenset({("NodePingNodeUnreachable", "node-3")}),
        frozenset({("node_unreachable", "node-3")}),
    )
    outcome = run(lab, LabPrometheus(lab), lab.prometheus.query, scenario, FIRE_LIMIT + 30, False)
    assert set(outcome.fired) == scenario.alerts, outcome.fired
    assert outcome.verdicts == scenario.verdicts
    # and diagnose evaluating the rules itself needs the textfile selector, like the rules
    found = diagnose(LabPrometheus(lab), selector='job="node-exporter"', config=FAST_CONFIG)
    assert found.source.startswith("the rules, evaluated by diagnose")


# -- a sampled lab (--max-peers) ---------------------------------------------------------

SAMPLED = sampled_config(shipped=False)
SAMPLED_PAIRS = probed_pairs(SAMPLED)  # as the agents choose them (asserted below)
# The rest of the set runs in `make accuracy-sampled` (docs/sizing.md).
SAMPLED_CI = ("node down", "zone split", "link cut, probed one way")
SAMPLED_SCENARIOS = [s for s in sampled_scenarios(SAMPLED) if s.name in SAMPLED_CI]


@pytest.fixture(scope="module")
def sampled_lab() -> Iterator[Lab]:
    with running_lab("sampled", SAMPLED) as lab:
        established(lab, pairs=len(SAMPLED_PAIRS))
        yield lab


def test_a_sampled_lab_probes_the_ring_and_every_zone(sampled_lab: Lab) -> None:
    """12 nodes in 3 zones, --max-peers 3: the agents probe what exporter.sampling
    chooses (3 ring successors, plus a node of each zone they miss), so every node is
    probed by 3 at least and from every zone."""
    judged = {
        (s["metric"]["source_node"], s["metric"]["destination_node"])
        for s in sampled_lab.prometheus.query("node_ping:pair_loss:ratio")
    }
    assert judged == SAMPLED_PAIRS
    nodes = SAMPLED.node_names()
    for node in nodes:
        sources = {a for a, b in judged if b == node}
        zones = {SAMPLED.zone(s) for s in sources}
        assert len(sources) >= 3 and zones == set(SAMPLED.zone_names()), node
    assert len(judged) < len(nodes) * (len(nodes) - 1) / 2


@pytest.mark.parametrize("scenario", SAMPLED_SCENARIOS, ids=[s.name for s in SAMPLED_SCENARIOS])
def test_a_sampled_lab_names_the_culprit(sampled_lab: Lab, scenario: Scenario) -> None:
    """Each node judged by its 3–5 sources only: a node down, a zone cut off (named
    from the zones' dead pairs, which the sample shows) and a link probed one way."""
    assert len(SAMPLED_SCENARIOS) == len(SAMPLED_CI)
    assert_named(run_from_quiet(sampled_lab, scenario))
