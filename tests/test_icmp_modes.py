"""Socket mode selection with the real kernel: ping_group_range and CAP_NET_RAW.

A namespace of its own (loopback only) so its ping_group_range can be changed;
the agent runs as root with or without CAP_NET_RAW (setpriv drops it from the
bounding set before exec, so the agent really lacks it).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from lab.netns import Namespace, cleanup, run_prefix

from .conftest import ROOT, needs_netns, parse_metrics, value

pytestmark = needs_netns
OPEN, CLOSED = "0 2147483647", "1 0"


@pytest.fixture(scope="module")
def ns() -> Iterator[Namespace]:
    prefix = run_prefix("npm")
    try:
        yield Namespace(f"{prefix}-modes")
    finally:
        cleanup(prefix)


def run_agent(
    ns: Namespace, mode: str, net_raw: bool, answered: dict[str, float] | None = None
) -> tuple[int, str, str]:
    """Run the agent for ~2 s; returns (exit code, build_info icmp_mode or '', stderr).
    With ``answered``, runs until a path-MTU probe and a STAMP packet were answered
    too, and fills it with those counters."""
    drop = [] if net_raw else ["setpriv", "--bounding-set", "-net_raw", "--inh-caps", "-net_raw"]
    port = 19700 + os.getpid() % 200
    proc = subprocess.Popen(
        ns.cmd(
            *drop,
            sys.executable,
            "-m",
            "exporter",
            "--peer",
            "lo=127.0.0.1",
            "--icmp-mode",
            mode,
            "--listen-address",
            f"127.0.0.1:{port}",
            "--interval",
            "0.1",
            "--size-probe-interval",
            "0.2",
            "--log-level",
            "warning",
        ),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    mode_seen = ""
    deadline = time.monotonic() + 10
    wanted = ("large_packets_received_total", "stamp_packets_received_total")
    while proc.poll() is None and time.monotonic() < deadline:
        out = ns.run("curl", "-s", "-m", "2", f"http://127.0.0.1:{port}/metrics", check=False)
        if out:
            samples = parse_metrics(out)
            for chosen in ("unprivileged", "raw"):
                if value(samples, "kube_node_ping_build_info", icmp_mode=chosen):
                    mode_seen = chosen
            if answered is not None:
                for name in wanted:
                    answered[name] = value(samples, f"kube_node_ping_{name}") or 0
        if mode_seen and (answered is None or all(answered.get(n) for n in wanted)):
            break
        time.sleep(0.2)
    if proc.poll() is None:
        proc.terminate()
    _, err = proc.communicate(timeout=5)
    return proc.returncode, mode_seen, err


def test_auto_prefers_unprivileged_when_the_group_is_admitted(ns: Namespace) -> None:
    ns.sysctl("net.ipv4.ping_group_range", OPEN)
    code, mode, err = run_agent(ns, "auto", net_raw=False)
    assert (code, mode) == (0, "unprivileged"), err


def test_auto_falls_back_to_raw_with_cap_net_raw(ns: Namespace) -> None:
    ns.sysctl("net.ipv4.ping_group_range", CLOSED)
    code, mode, err = run_agent(ns, "auto", net_raw=True)
    assert (code, mode) == (0, "raw"), err


def test_forced_modes(ns: Namespace) -> None:
    ns.sysctl("net.ipv4.ping_group_range", OPEN)
    assert run_agent(ns, "raw", net_raw=True)[:2] == (0, "raw")
    assert run_agent(ns, "unprivileged", net_raw=True)[:2] == (0, "unprivileged")


@pytest.mark.parametrize("mode", ["raw", "unprivileged"])
def test_size_probes_and_stamp_work_in_both_modes(ns: Namespace, mode: str) -> None:
    """Path-MTU probes (64 KiB on loopback, never fragmented) go through the ICMP
    socket of either kind; STAMP needs no privilege at all (UDP above 1024). The
    unprivileged agent runs without CAP_NET_RAW."""
    ns.sysctl("net.ipv4.ping_group_range", OPEN)
    answered: dict[str, float] = {}
    code, seen, err = run_agent(ns, mode, net_raw=mode == "raw", answered=answered)
    assert (code, seen) == (0, mode), err
    assert answered["large_packets_received_total"] >= 1, (answered, err)
    assert answered["stamp_packets_received_total"] >= 1, (answered, err)


@pytest.mark.parametrize("mode", ["auto", "raw", "unprivileged"])
def test_no_way_to_ping_is_one_line_naming_both_fixes(ns: Namespace, mode: str) -> None:
    ns.sysctl("net.ipv4.ping_group_range", CLOSED)
    code, _, err = run_agent(ns, mode, net_raw=False)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert "net.ipv4.ping_group_range" in lines[0] and "CAP_NET_RAW" in lines[0]
    assert "'1 0'" in lines[0] and "Traceback" not in err


FRAGMENTS = """
import errno, os, sys, time
from exporter.icmp import open_echo_socket
sock = open_echo_socket(4, raw=False, dont_fragment=sys.argv[1] == "1")
try:
    sock.sendto(sock.request_builder(os.urandom(8), 2000)(1, 1), ("127.0.0.1", 0))
except OSError as exc:
    print(errno.errorcode[exc.errno]); sys.exit()
time.sleep(0.2)
print("answered" if sock.drain() else "lost")
"""


def test_echo_requests_are_never_fragmented_with_size_probes(ns: Namespace) -> None:
    """A 2028-byte echo request over a 1500-byte MTU: sent in fragments (and answered)
    by a socket as before; refused at once (EMSGSIZE) by one that never fragments, as
    the agent's is with path-MTU probes on."""
    ns.sysctl("net.ipv4.ping_group_range", OPEN)
    ns.run("ip", "link", "set", "lo", "mtu", "1500")
    try:
        results = [
            subprocess.run(
                ns.cmd(sys.executable, "-c", FRAGMENTS, flag),
                cwd=ROOT, capture_output=True, text=True, timeout=30, check=True,
            ).stdout.strip()
            for flag in ("0", "1")
        ]  # fmt: skip
    finally:
        ns.run("ip", "link", "set", "lo", "mtu", "65536")
    assert results == ["answered", "EMSGSIZE"]
