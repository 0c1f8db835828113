"""Benchmark: ``diagnose`` on large synthetic meshes, from Prometheus's JSON to text.

    python -m benchmarks.diagnose_scale [--sizes 80,200,500]

For each size N, a full mesh of N nodes (N·(N-1) pairs) with background noise, an
inbound-faulty node, an outbound-faulty node and one lossy link, served as the
JSON Prometheus would send for the loss and RTT queries. Nothing leaves the
process: the answers are handed to diagnose's own parsing, no socket involved.
Prints the seconds spent on the verdicts alone, on ``diagnose`` (parsing both
answers, the verdicts, the matrix), on rendering the text and the JSON.

Before the verdicts were made linear in the number of pairs they alone took
2.5 s for 80 nodes and about 95 s for 200 (O(N⁴)); 500 nodes would have taken
hours.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from exporter.diagnose import (
    LOSS,
    RTT,
    Prometheus,
    diagnose,
    render_json,
    render_text,
    verdicts,
)

# What diagnose asks with its default arguments (no recording rules for a 10m window).
LOSS_QUERY = LOSS.format(selector="", window="10m")
RTT_QUERY = RTT.format(selector="", window="10m")


def mesh(nodes: int, seed: int = 1) -> tuple[dict[tuple[str, str], float], list[str]]:
    """Loss per pair of a full mesh with three planted faults, and what diagnose says."""
    rng = random.Random(seed)
    names = [f"node-{i:04d}" for i in range(nodes)]
    inbound, outbound, (a, b) = names[1], names[2], names[3:5]
    loss = {}
    for source in names:
        for destination in names:
            if source != destination:
                loss[(source, destination)] = rng.choice([0.0, 0.0, 0.0, 0.01, 0.02])
    for source in names:
        if source != inbound:
            loss[(source, inbound)] = 0.3
    for destination in names:
        if destination not in (outbound, inbound):
            loss[(outbound, destination)] = 0.2
    loss[(a, b)] = 0.5
    expected = [
        f"{inbound}: 30% loss from {nodes - 1}/{nodes - 1} sources"
        f" (inbound problem at {inbound} or its link)",
        f"{outbound}: loses packets to {nodes - 2}/{nodes - 2}"
        f" destinations (outbound problem at {outbound})",
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


class CannedPrometheus(Prometheus):
    """Answers the counters' queries from memory; anything else (the rules) is empty."""

    def __init__(self, answers: dict[str, bytes]) -> None:
        super().__init__("http://canned.invalid")
        self.answers = answers

    def fetch(self, expr: str) -> bytes:
        return self.answers.get(expr) or answer({})


def measure(nodes: int) -> dict[str, float]:
    """Seconds per stage for one mesh size; checks the verdicts on the way."""
    loss, expected = mesh(nodes)
    rtt = {pair: 0.4 for pair in loss}
    answers = {LOSS_QUERY: answer(loss), RTT_QUERY: answer(rtt)}
    figures = {"pairs": float(len(loss)), "MB": len(answers[LOSS_QUERY]) / 1e6}
    start = time.perf_counter()
    found = verdicts(loss, rtt, 0.05, 0.95, 0.5, 10.0)
    figures["verdicts"] = time.perf_counter() - start
    start = time.perf_counter()
    result = diagnose(CannedPrometheus(answers))
    figures["diagnose"] = time.perf_counter() - start
    for verdict_list in (found, result.verdicts):
        if [v.text for v in verdict_list] != expected:
            raise SystemExit(f"wrong verdicts for {nodes} nodes: {verdict_list}")
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
    columns = ["pairs", "MB", "verdicts", "diagnose", "text", "json", "total"]
    print("| nodes | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * len(columns))
    for nodes in sizes:
        figures = measure(nodes)
        cells = [f"{figures['pairs']:.0f}", f"{figures['MB']:.1f}"]
        cells += [f"{figures[c]:.2f} s" for c in columns[2:]]
        print(f"| {nodes} | " + " | ".join(cells) + " |", flush=True)
    print(
        "\nMB: one answer; verdicts: the algorithm alone; diagnose: both answers parsed, "
        "the verdicts and the matrix; text, json: rendering; total: diagnose + text"
    )


if __name__ == "__main__":
    main()
