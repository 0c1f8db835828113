"""Benchmark: this agent vs fping in loop mode, same targets, same rate, one run.

    sudo python3 -m benchmarks.bench [--sizes 100,1000,5000] [--seconds 20] [--delay-ms 1]

For each size N, in private network namespaces (lab.targets): N target
addresses answered by a user-space responder after a fixed delay (kernel echo
replies off), probed once per second each, by the agent with echo only
(``--stamp-port 0 --size-probe-interval 0``), by the agent as shipped (echo, a
STAMP packet per echo to a reflector answering on every target address, a
path-MTU probe per peer every 10 s), and by ``fping -l -p 1000``. Over a window of
``--seconds`` after a warm-up it measures CPU seconds per 1000 probes, probes/s
achieved vs scheduled, peak RSS, median and p99 RTT against the responder's
measured hold time, and for the agent the ``/metrics`` render time. Prints a
Markdown table (docs/benchmarks.md keeps the last one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lab.netns import can_create_namespaces
from lab.responder import ResponderUnavailable, ensure_responder
from lab.targets import TargetNetwork, target_v4

ROOT = Path(__file__).resolve().parent.parent
WARMUP_SECONDS = 4.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 19798


@dataclass
class Result:
    tool: str
    peers: int
    seconds: float
    cpu_seconds: float
    cpu_per_1000: float
    achieved: float
    scheduled: float
    rss_mb: float
    rtt_median: float
    rtt_p99: float
    render_ms: float | None


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def sleep_until(monotonic_deadline: float) -> None:
    time.sleep(max(0.0, monotonic_deadline - time.monotonic()))


# The agent's variants: echo only, and as shipped (STAMP and path-MTU probes on).
ECHO_ONLY = ["--stamp-port", "0", "--size-probe-interval", "0"]
VARIANTS = {"echo only": ECHO_ONLY, "echo + STAMP + size": []}
STAMP_PORT = 8762
# A STAMP reflector for every target address (the agent's own, answering any source).
REFLECTOR = """
import asyncio, sys
from exporter.reflector import Reflector, open_reflector_socket
asyncio.run(Reflector({4: open_reflector_socket(4, int(sys.argv[1]))}, "targets").run())
"""


def run_agent(
    net: TargetNetwork,
    peers: int,
    seconds: float,
    work: Path,
    responder: subprocess.Popen[bytes],
    variant: str = "echo only",
) -> Result:
    peers_file = work / "nodes.json"
    peers_file.write_text(
        json.dumps([{"name": f"t{i}", "ipAddress": target_v4(i)} for i in range(1, peers + 1)])
    )
    out = work / f"agent-{peers}.json"
    start = time.monotonic() + WARMUP_SECONDS
    end = start + seconds
    proc = net.agent.popen(
        [
            sys.executable,
            "-m",
            "benchmarks.agent_probe",
            "--window",
            str(start),
            str(end),
            "--out",
            str(out),
            "--",
            "--node-name",
            "bench",
            "--discovery",
            "file",
            "--peers-file",
            str(peers_file),
            "--icmp-mode",
            "unprivileged",
            "--listen-address",
            f"127.0.0.1:{PORT}",
            "--log-level",
            "warning",
            *VARIANTS[variant],
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    reflector = None
    if "STAMP" in variant:
        reflector = net.hosts.popen(
            [sys.executable, "-c", REFLECTOR, str(STAMP_PORT)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        sleep_until(start)
        cpu_start = cpu_seconds(proc.pid)
        responder.send_signal(signal.SIGUSR1)
        sleep_until(end)
        cpu = cpu_seconds(proc.pid) - cpu_start
        responder.send_signal(signal.SIGUSR2)
        renders = []
        for _ in range(5):
            took = net.agent.run(
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{time_total}",
                f"http://127.0.0.1:{PORT}/metrics",
            )
            renders.append(float(took) * 1000)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if reflector is not None:
            reflector.kill()
            reflector.wait(timeout=10)
    data = json.loads(out.read_text())
    rtts = data["rtts"]
    return Result(
        f"node-ping-exporter ({variant})",
        peers,
        seconds,
        cpu,
        cpu / data["resolved"] * 1000,
        data["resolved"] / seconds,
        peers,
        rss,
        statistics.median(rtts) if rtts else float("nan"),
        percentile(rtts, 0.99),
        statistics.median(renders),
    )


FPING_LINE = re.compile(r"^\[(?P<ts>[\d.]+)\] \S+\s+: \[\d+\], \d+ bytes, (?P<rtt>[\d.]+) ms")


def run_fping(
    net: TargetNetwork, peers: int, seconds: float, work: Path, responder: subprocess.Popen[bytes]
) -> Result:
    targets = work / "targets.txt"
    targets.write_text("".join(f"{target_v4(i)}\n" for i in range(1, peers + 1)))
    interval_ms = max(1000 / peers, 0.001)  # spread the targets over the 1 s period
    log = work / f"fping-{peers}.txt"
    with open(log, "w") as out:
        proc = net.agent.popen(
            [
                "fping",
                "-l",
                "-D",
                "-p",
                "1000",
                "-t",
                "1000",
                "-i",
                f"{interval_ms:.3f}",
                "-f",
                str(targets),
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
        )
        start_wall = time.time() + WARMUP_SECONDS
        start = time.monotonic() + WARMUP_SECONDS
        try:
            sleep_until(start)
            cpu_start = cpu_seconds(proc.pid)
            responder.send_signal(signal.SIGUSR1)
            sleep_until(start + seconds)
            cpu = cpu_seconds(proc.pid) - cpu_start
            responder.send_signal(signal.SIGUSR2)
            rss = peak_rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)  # fping exits cleanly and flushes its output
            proc.wait(timeout=10)
    rtts = []
    for line in log.read_text().splitlines():
        match = FPING_LINE.match(line)
        if match and start_wall <= float(match["ts"]) < start_wall + seconds:
            rtts.append(float(match["rtt"]))
    # fping in loop mode prints replies only: probes achieved = replies (no loss here).
    return Result(
        "fping -l",
        peers,
        seconds,
        cpu,
        cpu / max(len(rtts), 1) * 1000,
        len(rtts) / seconds,
        peers,
        rss,
        statistics.median(rtts) if rtts else float("nan"),
        percentile(rtts, 0.99),
        None,
    )


def table(results: list[Result], hold: dict[int, dict[str, float]]) -> str:
    lines = [
        "| peers | tool | CPU-s / 1000 echo probes | CPU ms per peer per s "
        "| echo probes/s achieved / scheduled | peak RSS MB "
        "| RTT median ms | RTT p99 ms | true delay (responder hold, median) ms "
        "| /metrics render ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        render = f"{r.render_ms:.0f}" if r.render_ms is not None else "—"
        true = hold.get(id(r), {}).get("hold_median_ms", float("nan"))
        per_peer = r.cpu_seconds * 1000 / r.seconds / r.peers
        lines.append(
            f"| {r.peers} | {r.tool} | {r.cpu_per_1000:.4f} | {per_peer:.4f} | {r.achieved:.0f} / "
            f"{r.scheduled:.0f} | {r.rss_mb:.1f} | {r.rtt_median:.3f} | {r.rtt_p99:.3f} "
            f"| {true:.3f} | {render} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    args = parser.parse_args()
    ok, why = can_create_namespaces()
    if not ok:
        sys.exit(f"bench: {why}")
    for tool in ("fping", "curl", "go"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: '{tool}' is not installed")
    sizes = [int(s) for s in args.sizes.split(",")]
    results: list[Result] = []
    hold: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="npe-bench-") as tmp, TargetNetwork("npb") as net:
        work = Path(tmp)
        try:
            responder = ensure_responder()
        except ResponderUnavailable as exc:
            sys.exit(f"bench: {exc}")
        net.hosts.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        runners: list[Callable[..., Result]] = [
            *(partial(run_agent, variant=v) for v in VARIANTS),
            run_fping,
        ]
        for peers in sizes:
            for runner in runners:
                resp = net.hosts.popen(
                    [str(responder), "-delay", f"{args.delay_ms}ms"], stderr=subprocess.PIPE
                )
                time.sleep(0.3)
                try:
                    result = runner(net, peers, args.seconds, work, resp)
                finally:
                    resp.send_signal(signal.SIGTERM)
                    _, err = resp.communicate(timeout=10)
                results.append(result)
                hold[id(result)] = json.loads(err.decode().strip().splitlines()[-1])
                print(f"  {result.tool} at {peers} peers done", file=sys.stderr, flush=True)
    print(
        f"\nOne probe per peer per second, {args.seconds:.0f} s window after "
        f"{WARMUP_SECONDS:.0f} s warm-up, responder delay {args.delay_ms} ms, "
        f"{os.cpu_count()} cores.\n"
    )
    print(table(results, hold))
    for peers in sizes:
        echo, full = (
            next(r for r in results if r.peers == peers and v in r.tool) for v in VARIANTS
        )
        fping = next(r for r in results if r.peers == peers and r.render_ms is None)
        print(
            f"\n{peers} peers: CPU per 1000 echo probes, agent (echo only) / fping = "
            f"{echo.cpu_per_1000 / fping.cpu_per_1000:.2f}; STAMP and size probes cost "
            f"{full.cpu_seconds / echo.cpu_seconds:.2f}x the echo-only agent's CPU",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
