"""Benchmark: are the shipped alerts and ``diagnose`` right, and how fast?

    python -m benchmarks.accuracy [--labs 3] [--clean-minutes 20] [--only NAME ...]
    (make accuracy)
    python -m benchmarks.accuracy --sampled [--fast]    (make accuracy-sampled)

Brings up 6-node labs in three zones (lab/cluster.py) whose agents run with their
default probe interval and timeout, and whose Prometheus scrapes and evaluates
every 30 s (kube-prometheus-stack's defaults) with the *shipped* rules, windows and
`for`. Every scenario of lab/scenarios.py runs on one of them (several labs side by
side to fit in an hour; each scenario waits for the previous one's alerts to
resolve), and one more lab runs clean with churn: agents restarted, a rolling
restart of every agent, nodes leaving and joining. Prints one table — scenario,
expected culprit, alerts fired with their time from the fault, diagnose's
verdicts, correct or not — then precision and recall over the alerts, and the
false alerts of the clean run. Results and method: docs/accuracy.md.

``--sampled``: the same fault set on 12-node labs whose agents probe 3 nodes each
(--max-peers 3, plus a node of each zone they miss), link faults moved to probed
pairs, and two links a sample sees partly or not at all (lab.scenarios
.sampled_scenarios; docs/sizing.md). ``--fast``: lab-sized windows (30 s loss
window, 5 s scrape, 50 ms probes) instead of the shipped ones, as the tests run.

Needs root (network namespaces, nftables, cgroups), prometheus and Go (the delayed
responder). Every packet stays inside namespaces the labs create.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import dataclass, field

from exporter.diagnose import DiagnoseError, diagnose
from lab.cli import LabPrometheus
from lab.cluster import Lab
from lab.faults import Fault
from lab.prometheus import FAST_CONFIG
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
from lab.state import LabConfig, LabError

ESTABLISHED_LIMIT_S = 15 * 60  # the rules judge pairs 10 minutes old
FIRE_LIMIT_S = 8 * 60  # the targets are 2 and 5 minutes: room to measure a miss
QUIET_LIMIT_S = 20 * 60  # a flicker is remembered for the 15-minute outage window
FAST_FIRE_LIMIT_S = 100  # lab-sized windows (tests/test_lab_alerts.py: 70 s)


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass
class CleanRun:
    """What the clean run with churn raised: alerts that fired (false alerts), alerts
    only pending, and verdicts other than past outages, each with when (seconds)."""

    alerts: dict[tuple[str, str], float] = field(default_factory=dict)  # fired: false alerts
    pending: dict[tuple[str, str], float] = field(default_factory=dict)  # pending, not fired
    verdicts: dict[tuple[str, str], float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)


def churn_plan(minutes: float) -> list[tuple[float, str, str]]:
    """(seconds from the start, action, node): restarts, a rolling restart, a node
    leaving gracefully (removed from the peers, then gone) and joining back, a node
    crashing (gone, then removed 20 s later, as a cloud controller deletes a Node)."""
    plan = [
        (60, "restart", "node-2"),
        (180, "leave", "node-6"),
        (330, "join", "node-6"),
        *[(420 + 20 * i, "restart", f"node-{i + 1}") for i in range(6)],
        (600, "crash", "node-5"),
        (620, "remove", "node-5"),
        (780, "join", "node-5"),
        (900, "restart", "node-3"),
    ]
    return [step for step in plan if step[0] < minutes * 60 - 60]


def clean_with_churn(lab: Lab, minutes: float, result: CleanRun) -> None:
    prometheus = LabPrometheus(lab)
    plan = churn_plan(minutes)
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < minutes * 60:
        while plan and plan[0][0] <= elapsed:
            _, action, node = plan.pop(0)
            result.events.append(f"{elapsed:.0f}s {action} {node}")
            log(f"clean run: {action} {node}")
            if action == "restart":
                lab.agents.restart(node)
            elif action == "leave":
                lab.remove_peer(node)
                lab.agents.stop(node)
                lab.faults.apply(Fault("isolate", node))
            elif action == "crash":
                lab.agents.stop(node)
                lab.faults.apply(Fault("isolate", node))
            elif action == "remove":
                lab.remove_peer(node)
            elif action == "join":
                lab.faults.clear(node=node)
                lab.agents.start(node)
                lab.add_peer(node)
        for alert in firing(lab.prometheus.query):
            result.alerts.setdefault(alert, round(elapsed))
        for alert in firing(lab.prometheus.query, "pending"):
            result.pending.setdefault(alert, round(elapsed))
        try:
            found = verdicts(diagnose(prometheus))
        except DiagnoseError as exc:
            found = {("error", str(exc))}
        for verdict in found:
            if verdict[0] != "node_outage":
                result.verdicts.setdefault(verdict, round(elapsed))
        time.sleep(5)


def established(lab: Lab, config: LabConfig) -> None:
    """Until the rules judge every pair of the lab."""
    pairs = len(probed_pairs(config))
    deadline = time.monotonic() + ESTABLISHED_LIMIT_S
    while len(lab.prometheus.query("node_ping:pair_loss:ratio")) < pairs:
        if time.monotonic() > deadline:
            raise SystemExit(f"{lab.name}: pairs not judged after {ESTABLISHED_LIMIT_S} s")
        time.sleep(10)


def run_lab(
    lab: Lab, scenarios: list[Scenario], outcomes: dict[str, Outcome], shipped: bool
) -> None:
    prometheus = LabPrometheus(lab)
    limit, inline = (FIRE_LIMIT_S, None) if shipped else (FAST_FIRE_LIMIT_S, FAST_CONFIG)
    for scenario in scenarios:
        log(f"{lab.name}: {scenario.name}")
        try:
            wait_quiet(lab.prometheus.query, prometheus, QUIET_LIMIT_S, scenario.clean_history)
            outcome = run(
                lab, prometheus, lab.prometheus.query, scenario, limit, shipped, inline=inline
            )
        except (LabError, DiagnoseError) as exc:  # one scenario lost, not the lab's others
            outcome = Outcome(scenario, error=str(exc))
        outcomes[scenario.name] = outcome
        log(f"{lab.name}: {scenario.name}: fired {outcome.fired}, diagnose {outcome.verdicts}")


def table(outcomes: list[Outcome]) -> str:
    lines = [
        "| scenario | expected culprit | alerts fired (s after the fault) | diagnose | correct |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        fired = ", ".join(
            f"{name}{f' {subject}' if subject else ''} ({seconds:.0f} s)"
            for (name, subject), seconds in sorted(o.fired.items(), key=lambda i: i[1])
        )
        said = "; ".join(f"{kind}: {subject}" for kind, subject in sorted(o.verdicts)) or "nothing"
        if o.error:
            said = f"error: {o.error}"
        verdict = "yes" if o.correct else "**no**"
        if o.unsaid and not o.error:
            verdict += " (not said: " + ", ".join(f"`{p}`" for p in o.unsaid) + ")"
        lines.append(
            f"| {o.scenario.name} | {o.scenario.culprit} | {fired or 'none'} | {said} | {verdict} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", type=int, default=3, help="labs running scenarios at once")
    parser.add_argument("--clean-minutes", type=float, default=20.0)
    parser.add_argument("--only", nargs="*", default=[], help="scenario names (substrings)")
    parser.add_argument("--sampled", action="store_true", help="12 nodes, --max-peers 3")
    parser.add_argument("--fast", action="store_true", help="lab-sized windows")
    args = parser.parse_args()
    shipped = not args.fast
    config = sampled_config(shipped) if args.sampled else lab_config(shipped)
    scenarios = sampled_scenarios(config) if args.sampled else SCENARIOS
    chosen = [s for s in scenarios if not args.only or any(o in s.name for o in args.only)]
    # A flicker is remembered for the outage window: such scenarios go last on their lab.
    chosen.sort(key=lambda s: bool(s.flap[0]))
    labs = [Lab(f"acc{i}") for i in range(1, args.labs + 1)]
    clean = Lab("acc-clean") if args.clean_minutes > 0 else None
    everything = [*labs, *([clean] if clean else [])]
    outcomes: dict[str, Outcome] = {}
    clean_result = CleanRun()
    try:
        for lab in everything:
            log(f"bringing up {lab.name}")
            lab.up(config)
        log("waiting until the rules judge every pair (they take pairs 10 minutes old)")
        for lab in everything:
            established(lab, config)
        threads = [
            threading.Thread(target=run_lab, args=(lab, chosen[i :: len(labs)], outcomes, shipped))
            for i, lab in enumerate(labs)
        ]
        if clean:
            threads.append(
                threading.Thread(
                    target=clean_with_churn, args=(clean, args.clean_minutes, clean_result)
                )
            )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for lab in everything:
            lab.down()
    ordered = [outcomes[s.name] for s in scenarios if s.name in outcomes]
    print(table(ordered))
    expected = sum(len(o.scenario.alerts) for o in ordered)
    fired = sum(len(o.fired) for o in ordered)
    right = sum(len(set(o.fired) & o.scenario.alerts) for o in ordered)
    print(
        f"\nalerts: {fired} fired, {right} right: precision {right / fired if fired else 1:.2f}, "
        f"recall {right / expected if expected else 1:.2f} ({right}/{expected} expected); "
        f"scenarios fully right (alerts and diagnose): "
        f"{sum(o.correct for o in ordered)}/{len(ordered)}"
    )
    if clean:
        print(
            f"clean run with churn, {args.clean_minutes:g} min ({'; '.join(clean_result.events)}): "
            f"{len(clean_result.alerts)} alerts fired "
            + (str(clean_result.alerts) if clean_result.alerts else "")
            + f", {len(clean_result.pending)} pending and never fired "
            + (str(clean_result.pending) if clean_result.pending else "")
            + f", {len(clean_result.verdicts)} diagnose verdicts "
            + (str(clean_result.verdicts) if clean_result.verdicts else "")
        )


if __name__ == "__main__":
    main()
