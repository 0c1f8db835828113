"""Benchmark: this agent vs fping in loop mode, same targets, same rate, one run.

    sudo python3 -m benchmarks.bench [--sizes 0,10,100,1000,5000] [--seconds 20]
        [--delay-ms 1] [--discovery kubernetes|file]

For each size N, in private network namespaces (lab.targets): N target
addresses answered by a user-space responder after a fixed delay (kernel echo
replies off), probed once per second each, by the agent with echo only
(``--stamp-port 0 --size-probe-interval 0``), by the agent as shipped (echo, a
STAMP packet per echo to a reflector answering on every target address, a
path-MTU probe per peer every 10 s, and its own reflector answering one STAMP
packet per peer per second from the peers' addresses, benchmarks/stamp_load.py,
as in a cluster), and by ``fping -l -p 1000`` (not at 0).

The agent finds its peers as in a cluster: Kubernetes discovery (list/watch of
Node objects) against a real API server (lab/controlplane.py: etcd and
kube-apiserver), which holds N+1 Nodes whose InternalIPs are the targets and the
agent's own address; so the kubernetes client's memory and its watch thread are
in the figures. ``--discovery file`` uses a peers file instead.

Over a window of ``--seconds`` after a warm-up it measures CPU per second and per
1000 probes, wake-ups per second, probes/s achieved vs scheduled, peak RSS,
median and p99 RTT against the responder's measured hold time, and for the
agent the ``/metrics`` render time and its CPU (a scrape every 30 s is added to
the per-second cost), and where the agent's CPU goes: each thread's user and
kernel time and wake-ups, and threads that started and ended within the window.
Prints Markdown tables (docs/benchmarks.md keeps the last ones).
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
from lab.targets import AGENT_V4, TargetNetwork, target_v4

ROOT = Path(__file__).resolve().parent.parent
WARMUP_SECONDS = 6.0  # and 2 s more per 1000 peers for the agent (its first list of Nodes)


def warmup(peers: int) -> float:
    return WARMUP_SECONDS + 2.0 * peers / 1000


CLK_TCK = os.sysconf("SC_CLK_TCK")
PORT = 19798
SCRAPE_INTERVAL = 30.0  # the chart's default: what a scrape adds per second
SCRAPES = 20  # measured after the window, in clock ticks: enough of them to resolve one


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
    wakes: float = float("nan")  # voluntary context switches in the window, all threads
    scrape_cpu_ms: float = 0.0  # CPU of one /metrics scrape
    # where the agent's CPU went: thread -> (user s, kernel s, wake-ups) in the window
    threads: dict[str, list[float]] | None = None
    # STAMP packets its reflector answered / received from the load (as shipped only)
    reflected: str = ""

    @property
    def cpu_ms_per_second(self) -> float:
        """CPU per second of probing, with a scrape every SCRAPE_INTERVAL."""
        return self.cpu_seconds * 1000 / self.seconds + self.scrape_cpu_ms / SCRAPE_INTERVAL


def cpu_seconds(pid: int) -> float:
    """Every thread's CPU, ended ones included, in clock ticks (10 ms)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def thread_cpu_seconds(pid: int) -> float:
    """A single-threaded process's CPU, to the ns (schedstat)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9


def voluntary_switches(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("voluntary_ctxt_switches:")[1].split()[0])


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


# The agent's variants: echo only; STAMP and path-MTU probes on (as shipped) with its
# reflector idle; and as shipped with its reflector answering its peers (as in a cluster).
ECHO_ONLY = ["--stamp-port", "0", "--size-probe-interval", "0"]
REFLECTING = "as shipped, reflecting peers' STAMP"
VARIANTS = {"echo only": ECHO_ONLY, "echo + STAMP + size": [], REFLECTING: []}
STAMP_PORT = 8762
# A STAMP reflector for every target address (the agent's own, answering any source).
REFLECTOR = """
import asyncio, sys
from exporter.reflector import Reflector, open_reflector_socket
asyncio.run(Reflector({4: open_reflector_socket(4, int(sys.argv[1]))}, "targets").run())
"""


class FilePeers:
    """Peers from a peers file (--discovery file)."""

    def __init__(self, work: Path) -> None:
        self.path = work / "nodes.json"

    def flags(self, peers: int) -> list[str]:
        nodes = [{"name": f"t{i}", "ipAddress": target_v4(i)} for i in range(1, peers + 1)]
        self.path.write_text(json.dumps(nodes))
        return ["--discovery", "file", "--peers-file", str(self.path)]

    def close(self) -> None:
        pass


class ApiServerPeers:
    """Peers from a real API server: Node objects named t1..tN, added as sizes grow,
    and the agent's own Node. The agent reaches it from its namespace at the address
    the API server's certificate names, through lab.forward."""

    def __init__(self, net: TargetNetwork, work: Path) -> None:
        from lab.controlplane import LAB_ADDRESS, LAB_PORT, ControlPlane
        from lab.kubenodes import create_node

        self.plane = ControlPlane(f"bench{os.getpid()}")
        self.plane.up(controller_manager=False)
        self._create_node = create_node
        self.forwarder: subprocess.Popen[bytes] | None = None
        try:
            net.agent.run("ip", "addr", "add", f"{LAB_ADDRESS}/32", "dev", "lo")
            self.forwarder = subprocess.Popen(
                [sys.executable, "-m", "lab.forward", net.agent.name, LAB_ADDRESS,
                 str(LAB_PORT), "127.0.0.1", str(self.plane.ports.apiserver)],
                cwd=ROOT, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            self.kubeconfig = self.plane.admin_kubeconfig_at(
                work / "kubeconfig", f"https://{LAB_ADDRESS}:{LAB_PORT}"
            )
            from kubernetes import client

            self.api = client.CoreV1Api(self.plane.api_client())
            create_node(self.api, "bench", [AGENT_V4])
            self.nodes = 0
        except BaseException:
            self.close()
            raise

    def flags(self, peers: int) -> list[str]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(
                lambda i: self._create_node(self.api, f"t{i}", [target_v4(i)]),
                range(self.nodes + 1, peers + 1),
            ))  # fmt: skip
        self.nodes = max(self.nodes, peers)
        if self.nodes != peers:
            raise ValueError("--sizes must grow: Nodes are only added")
        return ["--discovery", "kubernetes", "--kubeconfig", str(self.kubeconfig)]

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.kill()
            self.forwarder.wait(timeout=10)
        self.plane.down()


Peers = FilePeers | ApiServerPeers


def run_agent(
    net: TargetNetwork,
    peers: int,
    seconds: float,
    work: Path,
    responder: subprocess.Popen[bytes],
    source: Peers,
    variant: str = "echo only",
) -> Result:
    out = work / f"agent-{peers}.json"
    start = time.monotonic() + warmup(peers)
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
            *source.flags(peers),
            "--icmp-mode",
            "unprivileged",
            "--listen-address",
            f"127.0.0.1:{PORT}",
            "--log-level",
            "warning",
            "--max-pairs",
            "0",  # every peer: the cost of probing N, not of a sampled cluster
            *VARIANTS[variant],
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    reflector = load = None
    if variant != "echo only":
        reflector = net.hosts.popen(
            [sys.executable, "-c", REFLECTOR, str(STAMP_PORT)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if peers and variant == REFLECTING:  # the agent's reflector answers its peers
            load = net.hosts.popen(
                [sys.executable, "-m", "benchmarks.stamp_load", AGENT_V4, str(STAMP_PORT),
                 str(peers), str(warmup(peers) + seconds + 30)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
            )  # fmt: skip
    try:
        sleep_until(start)
        responder.send_signal(signal.SIGUSR1)
        sleep_until(end)
        responder.send_signal(signal.SIGUSR2)
        renders = []
        scrape_cpu = cpu_seconds(proc.pid)
        for _ in range(SCRAPES):
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
        scrape_cpu = (cpu_seconds(proc.pid) - scrape_cpu) / SCRAPES
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        if reflector is not None:
            reflector.kill()
            reflector.wait(timeout=10)
        reflected = ""
        if load is not None:
            load.send_signal(signal.SIGTERM)
            out_text, _ = load.communicate(timeout=10)
            counts = json.loads(out_text.decode() or "{}")
            reflected = f"{counts.get('answered', 0)} / {counts.get('sent', 0)}"
    data = json.loads(out.read_text())
    rtts = data["rtts"]
    cpu = data["total"][0] + data["total"][1]  # the agent's own getrusage, to the µs
    return Result(
        f"node-ping-exporter ({variant})",
        peers,
        seconds,
        cpu,
        cpu / data["resolved"] * 1000 if data["resolved"] else float("nan"),
        data["resolved"] / seconds,
        peers,
        rss,
        statistics.median(rtts) if rtts else float("nan"),
        percentile(rtts, 0.99),
        statistics.median(renders),
        wakes=data["total"][2],
        reflected=reflected,
        scrape_cpu_ms=scrape_cpu * 1000,
        threads=data["threads"] | {"total": data["total"]},
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
            cpu_start, wakes = thread_cpu_seconds(proc.pid), voluntary_switches(proc.pid)
            responder.send_signal(signal.SIGUSR1)
            sleep_until(start + seconds)
            cpu = thread_cpu_seconds(proc.pid) - cpu_start
            wakes = voluntary_switches(proc.pid) - wakes
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
        wakes=wakes,
    )


def table(results: list[Result], hold: dict[int, dict[str, float]]) -> str:
    lines = [
        "| peers | tool | CPU ms / s | CPU-s / 1000 echo probes | wake-ups / s "
        "| echo probes/s achieved / scheduled | peak RSS MB "
        "| RTT median ms | RTT p99 ms | true delay (responder hold, median) ms "
        "| /metrics render ms | CPU ms per scrape | STAMP packets answered / received |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        render = f"{r.render_ms:.0f}" if r.render_ms is not None else "—"
        scrape = f"{r.scrape_cpu_ms:.1f}" if r.render_ms is not None else "—"
        true = hold.get(id(r), {}).get("hold_median_ms", float("nan"))
        lines.append(
            f"| {r.peers} | {r.tool} | {r.cpu_ms_per_second:.2f} | {r.cpu_per_1000:.4f} "
            f"| {r.wakes / r.seconds:.1f} | {r.achieved:.0f} / {r.scheduled:.0f} "
            f"| {r.rss_mb:.1f} | {r.rtt_median:.3f} | {r.rtt_p99:.3f} | {true:.3f} "
            f"| {render} | {scrape} | {r.reflected or '—'} |"
        )
    return "\n".join(lines)


def breakdown(results: list[Result]) -> str:
    """Where each agent run's CPU went: user and kernel for the process, then each
    thread (threads of one kind summed), and threads that ended within the window."""
    lines = [
        "| peers | agent | part | CPU ms / s | wake-ups / s |",
        "|---:|---|---|---:|---:|",
    ]
    for r in results:
        if r.threads is None:
            continue
        agent = r.tool.split("(")[1].rstrip(")")
        user, kernel, wakes = r.threads["total"]
        parts: dict[str, list[float]] = {
            "process: user": [user, float("nan")],
            "process: kernel": [kernel, float("nan")],
        }
        live: dict[str, list[float]] = {}
        for name, counts in r.threads.items():
            if name != "total":
                kind = re.sub(r"^Thread-\d+ ", "", name.rsplit(" [", 1)[0])
                live[kind] = [a + b for a, b in zip(live.get(kind, [0, 0]), counts, strict=True)]
        ended = [user + kernel - sum(c[0] for c in live.values()),
                 wakes - sum(c[1] for c in live.values())]  # fmt: skip
        parts |= dict(sorted(live.items())) | {"threads ended in the window": ended}
        for part, (cpu, switches) in parts.items():
            lines.append(
                f"| {r.peers} | {agent} | {part} | {cpu * 1000 / r.seconds:.2f} "
                f"| {switches / r.seconds:.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0,10,100,1000,5000")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--discovery", choices=("kubernetes", "file"), default="kubernetes")
    args = parser.parse_args()
    ok, why = can_create_namespaces()
    if not ok:
        sys.exit(f"bench: {why}")
    for tool in ("fping", "curl", "go"):
        if shutil.which(tool) is None:
            sys.exit(f"bench: '{tool}' is not installed")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    results: list[Result] = []
    hold: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="npe-bench-") as tmp, TargetNetwork("npb") as net:
        work = Path(tmp)
        try:
            responder = ensure_responder()
        except ResponderUnavailable as exc:
            sys.exit(f"bench: {exc}")
        net.hosts.sysctl("net.ipv4.icmp_echo_ignore_all", "1")
        source: Peers = (
            ApiServerPeers(net, work) if args.discovery == "kubernetes" else (FilePeers(work))
        )
        try:
            for peers in sizes:
                runners: list[Callable[..., Result]] = [
                    *(partial(run_agent, source=source, variant=v) for v in VARIANTS),
                    *([run_fping] if peers else []),  # fping needs a target
                ]
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
        finally:
            source.close()
    print(
        f"\nOne probe per peer per second, {args.seconds:.0f} s window after "
        f"{WARMUP_SECONDS:.0f} s warm-up (the agent's: 2 s more per 1000 peers), "
        f"responder delay {args.delay_ms} ms, "
        f"{args.discovery} discovery, a scrape every {SCRAPE_INTERVAL:.0f} s counted in "
        f"CPU ms / s, {os.cpu_count()} cores.\n"
    )
    print(table(results, hold))
    print("\nWhere the agent's CPU goes:\n")
    print(breakdown(results))
    for peers in sizes:
        echo, full, reflecting = (
            next(r for r in results if r.peers == peers and r.tool.endswith(f"({v})"))
            for v in VARIANTS
        )
        if not peers:
            print(
                f"\n0 peers (idle): {echo.cpu_ms_per_second:.2f} ms of CPU per second echo "
                f"only, {full.cpu_ms_per_second:.2f} as shipped",
                end="",
            )
            continue
        fping = next(r for r in results if r.peers == peers and r.render_ms is None)
        print(
            f"\n{peers} peers: CPU per s / fping's: echo only "
            f"{echo.cpu_ms_per_second / fping.cpu_ms_per_second:.2f}, STAMP and size probes on "
            f"{full.cpu_ms_per_second / fping.cpu_ms_per_second:.2f}, also reflecting "
            f"{reflecting.cpu_ms_per_second / fping.cpu_ms_per_second:.2f}",
            end="",
        )
    print()


if __name__ == "__main__":
    main()
