"""The fault scenarios the alerts and ``diagnose`` are held to, and how one is run.

One list for both uses: ``make accuracy`` (benchmarks/accuracy.py) runs every
scenario with the shipped rules at a 30 s scrape and prints how each went;
tests/test_lab_alerts.py runs the same scenarios with lab-sized windows and
asserts them. Each names the alerts that must fire (and no other) and the
verdicts ``diagnose`` must print, on a 6-node lab in three zones
(node-1, node-2: zone-a; node-3, node-4: zone-b; node-5, node-6: zone-c).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from exporter.diagnose import DiagnoseError, Diagnosis, Prometheus, diagnose
from exporter.sampling import choose_peers

from .faults import Fault
from .state import LabConfig, LabError

Alert = tuple[str, str]  # alert name, what it names ("" for the whole cluster)
Verdict = tuple[str, str]  # diagnose's kind and subject

NODES, ZONES = 6, 3


def lab_config(shipped: bool) -> LabConfig:
    """The scenarios' lab: the shipped rules at kube-prometheus-stack's 30 s scrape and
    evaluation with the agents' default interval and timeout, or lab-sized windows
    on a 5 s scrape with 50 ms probes (the test)."""
    if shipped:
        return LabConfig(nodes=NODES, zones=ZONES, output="http", interval=1.0, timeout=1.0,
                         scrape_interval="30s", fast_alerts=False)  # fmt: skip
    return LabConfig(nodes=NODES, zones=ZONES, output="http", fast_alerts=True)


@dataclass(frozen=True)
class Scenario:
    name: str
    culprit: str  # in words, for the table
    faults: tuple[Fault, ...]
    alerts: frozenset[Alert]  # must fire, and nothing else
    verdicts: frozenset[Verdict]  # diagnose prints exactly these
    # The first fault on and off every so many seconds (flap), or on once for so many
    # seconds (blip), with the shipped and with the lab-sized windows: a blip is
    # short against the windows that judge a node unreachable (two scrape intervals
    # at least), a flap's off time is too, and both are long enough to be outages.
    flap: tuple[float, float] = (0.0, 0.0)
    blip: tuple[float, float] = (0.0, 0.0)
    # Seconds to watch after the fault when no alert is expected (a blip, a fault
    # echo cannot see), at the shipped and the lab-sized windows.
    watch: tuple[float, float] = (0.0, 0.0)
    # Part of the test's shorter run (every verdict kind is); the others only in
    # `make accuracy`.
    ci: bool = True
    # The faults with the shipped settings, where they must differ (default: faults).
    shipped_faults: tuple[Fault, ...] = ()
    # Judged on outages: starts only once no pair has had one within the outage
    # window, so that earlier scenarios' outages do not add up with its own.
    clean_history: bool = False
    # What the words must say (regular expressions, each found in some line): in
    # diagnose's verdicts, and in the firing alerts' summary and description, e.g.
    # the direction STAMP places a loss on.
    says: tuple[str, ...] = ()
    alert_says: tuple[str, ...] = ()


def _placed(node: str, way: str) -> tuple[str, ...]:
    """diagnose puts the node's loss on one way only (STAMP): "loses X% of what arrives ("."""
    return (rf"^{node} loses \d+% of what {way} \(echo",)


def _alert_placed(node: str, way: str) -> tuple[str, ...]:
    """The alert's summary names that one way, then its description begins."""
    return (rf"^{node} loses \d+(\.\d+)?% of what {way}; \d+(\.\d+)?% of the nodes",)


def _link(a: str, b: str) -> set[Alert]:
    return {("NodePingLinkLoss", f"{a} → {b}"), ("NodePingLinkLoss", f"{b} → {a}")}


def _link_verdicts(a: str, b: str) -> set[Verdict]:
    return {("link_loss", f"{a} → {b}"), ("link_loss", f"{b} → {a}")}


ALL = [f"node-{i}" for i in range(1, NODES + 1)]
SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "15 s blip",
        "node-4 (once: no alert)",
        (Fault("isolate", "node-4"),),
        frozenset(),
        frozenset({("node_outage", "node-4")}),
        blip=(15, 4),
        watch=(150, 40),
        clean_history=True,
    ),
    Scenario(
        "node down",
        "node-5",
        (Fault("isolate", "node-5"),),
        frozenset({("NodePingNodeUnreachable", "node-5")}),
        frozenset({("node_unreachable", "node-5")}),
    ),
    Scenario(
        "30 % loss into a node",
        "node-2 (in)",
        (Fault("node-in", "node-2", percent=30),),
        frozenset({("NodePingNodeLoss", "node-2")}),
        frozenset({("node_loss", "node-2")}),
        says=_placed("node-2", "arrives"),
        alert_says=_alert_placed("node-2", "arrives"),
    ),
    Scenario(
        "30 % loss out of a node",
        "node-4 (out)",
        (Fault("node-out", "node-4", percent=30),),
        frozenset({("NodePingNodeLoss", "node-4")}),
        frozenset({("node_loss", "node-4")}),
        says=_placed("node-4", "leaves"),
        alert_says=_alert_placed("node-4", "leaves"),
    ),
    Scenario(
        "10 % loss into a node",
        "node-3 (in)",
        (Fault("node-in", "node-3", percent=10),),
        frozenset({("NodePingNodeLoss", "node-3")}),
        frozenset({("node_loss", "node-3")}),
        ci=False,
        says=_placed("node-3", "arrives"),
        alert_says=_alert_placed("node-3", "arrives"),
    ),
    Scenario(
        "link cut one way",
        "node-1 → node-3",
        (Fault("link", "node-1", peer="node-3", both_ways=False),),
        frozenset(_link("node-1", "node-3")),
        frozenset(_link_verdicts("node-1", "node-3")),
    ),
    Scenario(
        "30 % loss on a link, one way",
        "node-2 → node-5",
        (Fault("link", "node-2", peer="node-5", percent=30, both_ways=False),),
        frozenset(_link("node-2", "node-5")),
        frozenset(_link_verdicts("node-2", "node-5")),
        says=(r"lost on the way node-2 → node-5 \(\d+%\)$",),
        alert_says=(r"STAMP places it on node-2 → node-5 \(\d+(\.\d+)?%\); $",),
    ),
    Scenario(
        "UDP dropped at a node (firewall)",
        "node-3 (UDP only)",
        (Fault("node-in", "node-3", percent=100, protocol="udp"),),
        frozenset({("NodePingUDPLoss", "node-3")}),
        frozenset({("protocol_loss", "node-3")}),
        says=(r"^UDP lost at node-3 while ICMP passes",),
    ),
    Scenario(
        "30 % of ICMP into a node (rate limit)",
        "node-6 (ICMP only)",
        (Fault("node-in", "node-6", percent=30, protocol="icmp"),),
        frozenset({("NodePingNodeLoss", "node-6")}),
        frozenset({("node_loss", "node-6")}),
        ci=False,
        says=(r"^node-6: ICMP lost while UDP passes",),
        alert_says=(r"Only ICMP is lost",),
    ),
    Scenario(
        "10 % loss on a link",
        "node-2 ↔ node-6",
        (Fault("link", "node-2", peer="node-6", percent=10),),
        frozenset(_link("node-2", "node-6")),
        frozenset(_link_verdicts("node-2", "node-6")),
        ci=False,
    ),
    Scenario(
        "zone split",
        "zone-a | zone-b, zone-c",
        (Fault("partition", group_a=("zone-a",), group_b=("zone-b", "zone-c")),),
        frozenset({("NodePingPartition", "")}),
        frozenset({("partition", "node-1, node-2 | node-3, node-4, node-5, node-6")}),
    ),
    Scenario(
        "node flapping",
        "node-6",
        (Fault("isolate", "node-6"),),
        frozenset({("NodePingNodeFlicker", "node-6")}),
        frozenset({("node_flicker", "node-6")}),
        flap=(20, 5),
        clean_history=True,
    ),
    Scenario(
        "MTU black hole (1000 bytes)",
        "node-2 (large packets only)",
        (Fault("size", "node-2", max_bytes=1000),),
        frozenset({("NodePingPathMTU", "node-2")}),
        frozenset({("node_size_loss", "node-2")}),
        says=(r"^large packets lost at node-2 while small ones pass: \d+% of the 1500-byte",),
        alert_says=(r"path MTU below 1500 bytes\?",),
    ),
    Scenario(
        "MTU black hole on one link (1200 bytes)",
        "node-1 ↔ node-6 (large packets only)",
        (Fault("size", "node-1", peer="node-6", max_bytes=1200),),
        frozenset(
            {("NodePingLinkPathMTU", "node-1 → node-6"), ("NodePingLinkPathMTU", "node-6 → node-1")}
        ),
        frozenset({("link_size_loss", "node-1 → node-6"), ("link_size_loss", "node-6 → node-1")}),
        ci=False,
    ),
    Scenario(
        "starved agent",
        "node-3's agent",
        (Fault("starve", "node-3", percent=1),),
        frozenset({("NodePingAgentStarved", "node-3")}),
        frozenset({("agent_starved", "node-3")}),
        # Probing 6 peers once a second needs well under 1 % of a CPU (measured: 1 %
        # starved nothing): the shipped run holds it to the kernel's smallest quota.
        shipped_faults=(Fault("starve", "node-3", percent=0.1),),
    ),
    Scenario(
        "20 ms latency",
        "node-5",
        (Fault("latency", "node-5", delay_ms=20),),
        frozenset({("NodePingHighRTT", "node-5")}),
        frozenset({("node_slow", "node-5")}),
    ),
    Scenario(
        "node loss and a lossy link at once",
        "node-2; node-4 ↔ node-6",
        (
            Fault("node-in", "node-2", percent=30),
            Fault("link", "node-4", peer="node-6", percent=50),
        ),
        frozenset({("NodePingNodeLoss", "node-2"), *_link("node-4", "node-6")}),
        frozenset({("node_loss", "node-2"), *_link_verdicts("node-4", "node-6")}),
    ),
    Scenario(
        "two lossy nodes",
        "node-1; node-4",
        (Fault("node-in", "node-1", percent=30), Fault("node-out", "node-4", percent=30)),
        frozenset({("NodePingNodeLoss", "node-1"), ("NodePingNodeLoss", "node-4")}),
        frozenset({("node_loss", "node-1"), ("node_loss", "node-4")}),
        says=(*_placed("node-1", "arrives"), *_placed("node-4", "leaves")),
    ),
    Scenario(
        "lossy switch (20 % into every node)",
        "ambiguous: every node",
        tuple(Fault("node-in", node, percent=20) for node in ALL),
        frozenset({("NodePingLossAmbiguous", "")}),
        frozenset({("ambiguous", ", ".join(ALL))}),
    ),
)


# -- the same faults on a sampled lab (--max-peers) ----------------------------------------

SAMPLED_NODES, SAMPLED_MAX_PEERS = 12, 3


def sampled_config(shipped: bool) -> LabConfig:
    """The sampled lab: 12 nodes in three zones, each agent probing 3 (--max-peers 3),
    plus a node of each zone its 3 miss: every node is judged by 3–5 sources."""
    return dataclasses.replace(
        lab_config(shipped), nodes=SAMPLED_NODES, max_peers=SAMPLED_MAX_PEERS
    )


def probed_pairs(config: LabConfig) -> set[tuple[str, str]]:
    """(source, destination) for every pair the lab's agents probe, as they choose them."""
    names = config.node_names()
    zones = {n: config.zone(n) for n in names}
    return {(a, b) for a in names for b in choose_peers(a, names, config.max_peers, zones)}


def _renamed(scenario: Scenario, names: dict[str, str]) -> Scenario:
    """The scenario with its nodes renamed, in its faults and in every word expected."""

    def sub(text: str) -> str:
        return re.sub(r"node-\d+\b", lambda m: names.get(m[0], m[0]), text)

    return dataclasses.replace(
        scenario,
        culprit=sub(scenario.culprit),
        faults=tuple(
            dataclasses.replace(f, node=sub(f.node), peer=sub(f.peer)) for f in scenario.faults
        ),
        alerts=frozenset((a, sub(b)) for a, b in scenario.alerts),
        verdicts=frozenset((a, sub(b)) for a, b in scenario.verdicts),
        says=tuple(sub(p) for p in scenario.says),
        alert_says=tuple(sub(p) for p in scenario.alert_says),
    )


def sampled_scenarios(config: LabConfig) -> tuple[Scenario, ...]:
    """SCENARIOS on a sampled lab, and what a sample cannot see.

    A fault at a node stays as it is (the sampled lab has the same node names and
    more); a link fault moves to a pair probed both ways, away from the scenario's
    other nodes; a fault at every node covers all of them; the zone split's sides
    are the sampled lab's zones. Two more: a link cut that only one of its two
    pairs probes (one alert, one verdict), and one that no pair probes (nothing:
    the sample's blind spot, docs/sizing.md)."""
    names = config.node_names()
    probed = probed_pairs(config)
    mutual = sorted((a, b) for a, b in probed if (b, a) in probed and a < b)
    one_way = sorted((a, b) for a, b in probed if (b, a) not in probed)
    unprobed = sorted(
        (a, b) for a in names for b in names if a < b and not {(a, b), (b, a)} & probed
    )
    out = []
    for scenario in SCENARIOS:
        ends = {n for f in scenario.faults if f.peer for n in (f.node, f.peer)}
        others = {f.node for f in scenario.faults if not f.peer} - ends
        if {f.node for f in scenario.faults} == set(ALL):  # every node
            fault = scenario.faults[0]
            scenario = dataclasses.replace(
                scenario,
                faults=tuple(dataclasses.replace(fault, node=n) for n in names),
                verdicts=frozenset({("ambiguous", ", ".join(sorted(names)))}),
            )
        elif any(f.kind == "partition" for f in scenario.faults):
            (fault,) = scenario.faults
            sides = [
                sorted(n for n in names if config.zone(n) in group)
                for group in (fault.group_a, fault.group_b)
            ]
            sides.sort(key=lambda side: (len(side), side))
            subject = " | ".join(", ".join(side) for side in sides)
            scenario = dataclasses.replace(scenario, verdicts=frozenset({("partition", subject)}))
        elif ends:
            a, b = sorted(ends)
            pair = next(p for p in mutual if not set(p) & others)
            scenario = _renamed(scenario, {a: pair[0], b: pair[1]})
        out.append(scenario)
    for a, b in one_way[:1]:
        out.append(
            Scenario(
                "link cut, probed one way",
                f"{a} ↔ {b} (only {a} → {b} probed)",
                (Fault("link", a, peer=b),),
                frozenset({("NodePingLinkLoss", f"{a} → {b}")}),
                frozenset({("link_loss", f"{a} → {b}")}),
            )
        )
    for a, b in unprobed[:1]:
        out.append(
            Scenario(
                "link cut, not probed",
                f"{a} ↔ {b} (no pair probes it: nothing can be seen)",
                (Fault("link", a, peer=b),),
                frozenset(),
                frozenset(),
                watch=(300, 60),
            )
        )
    return tuple(out)


def firing(query: Callable[[str], list[dict[str, object]]], state: str = "firing") -> set[Alert]:
    """The alerts in ``state`` now, each with what it names."""
    out = set()
    for sample in query(f'ALERTS{{alertstate="{state}"}}'):
        labels = sample["metric"]
        assert isinstance(labels, dict)
        if "source_node" in labels and "destination_node" in labels:
            subject = f"{labels['source_node']} → {labels['destination_node']}"
        else:
            subject = str(labels.get("node", ""))
        out.add((str(labels["alertname"]), subject))
    return out


def verdicts(diagnosis: Diagnosis) -> set[Verdict]:
    return {(v.kind, v.subject) for v in diagnosis.verdicts}


def judged(found: set[Verdict], scenario: Scenario) -> set[Verdict]:
    """The verdicts a scenario is judged on: past outages (a record kept for the whole
    outage window, from earlier scenarios too) only where it is about outages."""
    if any(kind == "node_outage" for kind, _ in scenario.verdicts):
        return found
    return {v for v in found if v[0] != "node_outage"}


@dataclass
class Outcome:
    """What one scenario did: when each alert first fired (seconds after the fault),
    and what diagnose said at the end."""

    scenario: Scenario
    fired: dict[Alert, float] = field(default_factory=dict)
    verdicts: set[Verdict] = field(default_factory=set)
    inline: set[Verdict] = field(default_factory=set)  # the same rules, evaluated by diagnose
    texts: list[str] = field(default_factory=list)  # diagnose's verdict lines
    alert_texts: list[str] = field(default_factory=list)  # firing alerts: summary description
    error: str = ""

    @property
    def unsaid(self) -> list[str]:
        """The scenario's patterns that no verdict line, or no alert, matches."""
        missing = [p for p in self.scenario.says if not any(re.search(p, t) for t in self.texts)]
        return missing + [
            p
            for p in self.scenario.alert_says
            if not any(re.search(p, t) for t in self.alert_texts)
        ]

    @property
    def unexpected(self) -> set[Alert]:
        return set(self.fired) - self.scenario.alerts

    @property
    def missed(self) -> set[Alert]:
        return set(self.scenario.alerts - set(self.fired))

    @property
    def correct(self) -> bool:
        return (
            not self.error
            and not self.unexpected
            and not self.missed
            and self.verdicts == self.scenario.verdicts
            and not self.unsaid
        )


def run(
    lab: object,
    prometheus: Prometheus,
    query: Callable[[str], list[dict[str, object]]],
    scenario: Scenario,
    limit: float,
    shipped: bool,
    hold: float = 10.0,
    inline: dict[str, str] | None = None,
) -> Outcome:
    """Apply the scenario's faults, watch the alerts until every expected one fired and
    ``hold`` seconds more passed (or ``limit``), ask diagnose — and, with ``inline``
    (the rules' config the lab's Prometheus runs), diagnose evaluating those rules
    itself — then clear the faults.

    ``lab`` is a lab.cluster.Lab (typed loosely: lab.cluster imports this module's
    users, not this module)."""
    faults = lab.faults  # type: ignore[attr-defined]
    outcome = Outcome(scenario)
    started = time.monotonic()
    first, *rest = (shipped and scenario.shipped_faults) or scenario.faults
    mode = 0 if shipped else 1
    if scenario.flap[mode]:
        faults.flap(first, scenario.flap[mode])
    elif scenario.blip[mode]:
        faults.pulse(first, scenario.blip[mode])
    else:
        faults.apply(first)
    for fault in rest:
        faults.apply(fault)
    watch = scenario.watch[mode]
    try:
        done_at: float | None = None
        while True:
            now = time.monotonic() - started
            for alert in firing(query):
                outcome.fired.setdefault(alert, round(now))
            complete = scenario.alerts <= set(outcome.fired)
            if complete and done_at is None:
                done_at = now
            if scenario.alerts and done_at is not None and now - done_at >= hold:
                break
            if not scenario.alerts and now >= watch:
                break
            if now >= limit:
                break
            time.sleep(1)
        outcome.alert_texts = [
            f"{a['annotations'].get('summary', '')} {a['annotations'].get('description', '')}"
            for a in lab.prometheus.alerts()  # type: ignore[attr-defined]
            if a.get("state") == "firing"
        ]
        try:
            found = diagnose(prometheus)
            outcome.verdicts = judged(verdicts(found), scenario)
            outcome.texts = [v.text for v in found.verdicts]
            if inline is not None:
                outcome.inline = judged(verdicts(diagnose(prometheus, config=inline)), scenario)
        except DiagnoseError as exc:
            outcome.error = str(exc)
    finally:
        faults.clear()
    return outcome


def wait_quiet(
    query: Callable[[str], list[dict[str, object]]],
    prometheus: Prometheus,
    timeout: float,
    history: bool = False,
) -> None:
    """Until no alert fires or is pending and diagnose finds nothing but past outages
    (the last scenario's windows have passed); with ``history``, until no pair has had
    an outage within the outage window either."""
    deadline = time.monotonic() + timeout
    left: object = None
    while time.monotonic() < deadline:
        active = firing(query) | firing(query, "pending")
        try:
            found = verdicts(diagnose(prometheus))
        except DiagnoseError as exc:  # e.g. a pair not judged yet after a restart
            found = {("error", str(exc))}
        left = active or {v for v in found if history or v[0] != "node_outage"}
        if not left and history:
            left = {str(s["metric"]) for s in query("node_ping:pair_outages:count > 0")}
        if not left:
            return
        time.sleep(2)
    raise LabError(f"still not quiet after {timeout:.0f}s: {left}")
