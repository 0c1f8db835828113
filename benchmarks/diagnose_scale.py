"""Benchmark: ``diagnose`` on large synthetic meshes, from Prometheus's JSON to text.

    python -m benchmarks.diagnose_scale [--sizes 80,200,500]

For each size N, a full mesh of N nodes (N·(N-1) pairs) with background noise, a
faulty node and one lossy link, served as the JSON a Prometheus running the rules
would send: the matrix (loss and RTT), the thresholds and the recorded verdicts
with their details. The verdicts themselves are the rules' work, in Prometheus;
what is measured is diagnose's: parsing the answers (the matrix is most of the
bytes), wording the verdicts, rendering the text and the JSON. Nothing leaves the
process: the answers are handed to diagnose's own parsing, no socket involved.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from exporter.diagnose import Prometheus, diagnose, render_json, render_text

THRESHOLDS = {"pair_loss_ratio": 0.05, "pair_unreachable_ratio": 0.95, "node_share_ratio": 0.5}


def mesh(nodes: int, seed: int = 1) -> tuple[dict[tuple[str, str], float], list[str]]:
    """Loss per pair of a full mesh with two planted faults, and what diagnose says."""
    rng = random.Random(seed)
    names = [f"node-{i:04d}" for i in range(nodes)]
    faulty, (a, b) = names[1], names[3:5]
    loss = {}
    for source in names:
        for destination in names:
            if source != destination:
                loss[(source, destination)] = rng.choice([0.0, 0.0, 0.0, 0.01, 0.02])
                if faulty in (source, destination):
                    loss[(source, destination)] = 0.3
    loss[(a, b)] = 0.5
    expected = [
        f"{faulty} or its link loses packets (30% from {nodes - 1}/{nodes - 1} nodes, and 30% "
        "of its own probes lost)",
        f"{a} → {b}: 50% loss, other paths clean (link)",
    ]
    return loss, expected


def answer(values: dict[tuple[str, str], float]) -> bytes:
    """A Prometheus instant-query answer holding one sample per pair."""
    result = [
        {
            "metric": {"destination_node": destination, "source_node": source},
            "value": [1700000000.0, repr(value)],
        }
        for (source, destination), value in values.items()
    ]
    body = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(body).encode()


def by_node(name: str, values: dict[str, float]) -> bytes:
    result = [
        {"metric": {"__name__": name, "node": node}, "value": [1700000000.0, repr(value)]}
        for node, value in values.items()
    ]
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": result}}
    ).encode()


class CannedPrometheus(Prometheus):
    """Answers the recorded series' queries from memory; anything else is empty."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        super().__init__("http://canned.invalid")
        self.answers = answers

    def fetch(self, expr: str) -> bytes:
        return self.answers.get(expr) or answer({})


def measure(nodes: int) -> dict[str, float]:
    """Seconds per stage for one mesh size; checks the verdicts on the way."""
    loss, expected = mesh(nodes)
    faulty, (a, b) = f"node-{1:04d}", (f"node-{3:04d}", f"node-{4:04d}")
    thresholds = [
        {"metric": {"__name__": f"node_ping:threshold:{k}"}, "value": [1.7e9, str(v)]}
        for k, v in THRESHOLDS.items()
    ]
    answers = {
        '{__name__=~"node_ping:threshold:.+"}': json.dumps(
            {"status": "success", "data": {"resultType": "vector", "result": thresholds}}
        ).encode(),
        "node_ping:pair_loss:ratio": answer(loss),
        "node_ping:pair_rtt:mean_ms": answer({pair: 0.4 for pair in loss}),
        "node_ping:verdict:node_loss": by_node("v", {faulty: 1.0}),
        "node_ping:verdict:link_loss": answer({(a, b): 0.5}),
        "node_ping:node_loss:ratio": by_node("v", {faulty: 0.3}),
        "node_ping:node_own_loss:ratio": by_node("v", {faulty: 0.3}),
        "node_ping:node_lossy_sources:ratio": by_node("v", {faulty: 1.0}),
    }
    figures = {"pairs": float(len(loss)), "MB": len(answers["node_ping:pair_loss:ratio"]) / 1e6}
    start = time.perf_counter()
    result = diagnose(CannedPrometheus(answers))
    figures["diagnose"] = time.perf_counter() - start
    if [v.text for v in result.verdicts] != expected:
        raise SystemExit(f"wrong verdicts for {nodes} nodes: {result.verdicts}")
    start = time.perf_counter()
    render_text(result)
    figures["text"] = time.perf_counter() - start
    start = time.perf_counter()
    render_json(result)
    figures["json"] = time.perf_counter() - start
    figures["total"] = figures["diagnose"] + figures["text"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="80,200,500", help="node counts (default 80,200,500)")
    sizes = [int(size) for size in parser.parse_args().sizes.split(",")]
    columns = ["pairs", "MB", "diagnose", "text", "json", "total"]
    print("| nodes | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for nodes in sizes:
        figures = measure(nodes)
        cells = [f"{figures['pairs']:.0f}", f"{figures['MB']:.1f}"]
        cells += [f"{figures[c]:.2f} s" for c in columns[2:]]
        print(f"| {nodes} | " + " | ".join(cells) + " |", flush=True)
    print(
        "\nMB: one answer; diagnose: the answers parsed (two matrices), the verdicts "
        "worded; text, json: rendering; total: diagnose + text"
    )


if __name__ == "__main__":
    main()
