"""The real agent, run by the benchmark, with every RTT recorded for percentiles.

``python -m benchmarks.agent_probe --window START END --out FILE -- AGENT FLAGS``
runs ``exporter.cli.main`` unchanged, except that replies and losses resolved
between the monotonic times START and END are also recorded (an array append
per reply), and that one extra thread, asleep except at START and END, reads
what each thread spent: CPU and wake-ups (voluntary context switches, from
/proc/self/task), and the process totals, user and kernel (getrusage, which
also counts threads that ended within the window: the short-lived ones of file
reads and name lookups). On exit it writes all of it to FILE.
"""

from __future__ import annotations

import array
import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

from exporter.cli import main
from exporter.stats import PeerStats

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


def thread_counters() -> dict[str, list[float]]:
    """Per live thread, by its Python name: [CPU s (schedstat: ns, not 10 ms ticks),
    voluntary switches]."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    counters: dict[str, list[float]] = {}
    for task in Path("/proc/self/task").iterdir():
        tid = int(task.name)
        if tid == threading.get_native_id():
            continue  # this measuring thread
        try:
            on_cpu_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except OSError:
            continue  # ended meanwhile
        switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
        name = "main (event loop)" if tid == os.getpid() else names.get(tid, "unnamed")
        counters[f"{name} [{tid}]"] = [on_cpu_ns / 1e9, switches]
    return counters


def process_counters() -> list[float]:
    """[user s, kernel s, voluntary switches] of every thread, ended ones included
    (user + kernel is exact: the kernel scales its tick samples to the run time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return [usage.ru_utime, usage.ru_stime, usage.ru_nvcsw]


def measure(start: float, end: float, result: dict[str, Any]) -> None:
    time.sleep(max(0.0, start - time.monotonic()))
    threads, total = thread_counters(), process_counters()
    time.sleep(max(0.0, end - time.monotonic()))
    threads_end, total_end = thread_counters(), process_counters()
    result["threads"] = {
        name: [b - a for a, b in zip(threads.get(name, [0, 0]), after, strict=True)]
        for name, after in threads_end.items()
    }
    result["total"] = [b - a for a, b in zip(total, total_end, strict=True)]


if __name__ == "__main__":
    args = sys.argv[1:]
    split = args.index("--")
    own, agent_args = args[:split], args[split + 1 :]
    start, end, out = float(own[1]), float(own[2]), own[4]
    rtts, resolved = instrument(start, end)
    counters: dict[str, Any] = {}
    threading.Thread(
        target=measure, args=(start, end, counters), name="bench-measure", daemon=True
    ).start()
    code = main(agent_args)
    with open(out, "w") as f:
        json.dump({"rtts": rtts.tolist(), "resolved": resolved[0], **counters}, f)
    sys.exit(code)
