"""`node-ping-exporter diagnose`: verdicts from a loss matrix, and its error paths
against a real Prometheus (the lab e2e checks it on injected faults)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exporter.diagnose import verdicts

from .conftest import ROOT

NODES = ["n1", "n2", "n3", "n4", "n5"]


def matrix(**faults: float) -> dict[tuple[str, str], float]:
    """All pairs clean except the ones named like n1__n2=0.3."""
    loss = {(s, d): 0.0 for s in NODES for d in NODES if s != d}
    for name, value in faults.items():
        source, destination = name.split("__")
        loss[(source, destination)] = value
    return loss


def texts(
    loss: dict[tuple[str, str], float],
    rtt: dict[tuple[str, str], float] | None = None,
) -> list[str]:
    return [v.text for v in verdicts(loss, rtt or {}, 0.05, 0.95, 0.5, 10.0)]


def test_clean() -> None:
    assert texts(matrix()) == []


def test_unreachable_node() -> None:
    faults = {f"{s}__n3": 1.0 for s in NODES if s != "n3"} | {
        f"n3__{d}": 1.0 for d in NODES if d != "n3"
    }
    assert texts(matrix(**faults)) == ["n3: unreachable from 4/4 sources (inbound problem at n3)"]


def test_inbound_outbound_and_link_together() -> None:
    faults = {f"{s}__n2": 0.3 for s in NODES if s != "n2"}
    faults |= {f"n5__{d}": 0.3 for d in NODES if d != "n5"}
    faults |= {"n3__n4": 0.5}
    assert texts(matrix(**faults)) == [
        "n2: 30% loss from 4/4 sources (inbound problem at n2 or its link)",
        "n5: loses packets to 3/3 destinations (outbound problem at n5)",
        "n3 → n4: 50% loss, other paths clean (link)",
    ]


def test_slow_node() -> None:
    rtt = {(s, d): (20.0 if d == "n1" else 0.4) for s in NODES for d in NODES if s != d}
    assert texts(matrix(), rtt) == ["n1: slow, mean RTT 20.0 ms from 4/4 sources"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "diagnose", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_prometheus_is_one_line_exit_2() -> None:
    result = run("--prometheus", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert result.stderr.startswith("node-ping-exporter diagnose: cannot reach Prometheus at")
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_window() -> None:
    result = run("--prometheus", "http://127.0.0.1:1", "--window", "ten minutes")
    assert result.returncode == 2 and "not a Prometheus duration" in result.stderr


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus is not installed")
def test_prometheus_without_ping_series(tmp_path: Path) -> None:
    """A real, empty Prometheus on loopback: the error says what is missing."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1m}\nscrape_configs: []\n")
    server = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        result = run("--prometheus", f"http://127.0.0.1:{port}")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "has no kube_node_ping_* series over the last 10m" in result.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
