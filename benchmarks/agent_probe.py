"""The real agent, run by the benchmark, with every RTT recorded for percentiles.

``python -m benchmarks.agent_probe --window START END --out FILE -- AGENT FLAGS``
runs ``exporter.cli.main`` unchanged, except that replies and losses resolved
between the monotonic times START and END are also recorded (an array append
per reply). On exit it writes the RTTs and the count of resolved probes to FILE.
"""

from __future__ import annotations

import array
import json
import sys
import time

from exporter.cli import main
from exporter.stats import PeerStats


def instrument(start: float, end: float) -> tuple[array.array[float], list[int]]:
    rtts: array.array[float] = array.array("d")
    resolved = [0]
    record_reply, record_loss = PeerStats.record_reply, PeerStats.record_loss

    def on_reply(self: PeerStats, rtt_ms: float, sent_ns: int) -> None:
        record_reply(self, rtt_ms, sent_ns)
        if start <= time.monotonic() < end:
            rtts.append(rtt_ms)
            resolved[0] += 1

    def on_loss(self: PeerStats, sent_ns: int) -> None:
        record_loss(self, sent_ns)
        if start <= time.monotonic() < end:
            resolved[0] += 1

    PeerStats.record_reply = on_reply  # type: ignore[method-assign]
    PeerStats.record_loss = on_loss  # type: ignore[method-assign]
    return rtts, resolved


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--")
    own, agent_args = args[:split], args[split + 1 :]
    start, end, out = float(own[1]), float(own[2]), own[4]
    rtts, resolved = instrument(start, end)
    code = main(agent_args)
    with open(out, "w") as f:
        json.dump({"rtts": rtts.tolist(), "resolved": resolved[0]}, f)
    sys.exit(code)
