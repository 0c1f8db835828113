"""Shared fixtures: the two-namespace target network and a real agent process in it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab.netns import can_create_namespaces
from lab.process import write_atomically
from lab.targets import TargetNetwork

ROOT = Path(__file__).resolve().parent.parent

NETNS_OK, NETNS_WHY = can_create_namespaces()
needs_netns = pytest.mark.skipif(not NETNS_OK, reason=NETNS_WHY)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    """Every sample as {(name, labels): value}."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def select(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    wanted = set(labels.items())
    return {k[1]: v for k, v in samples.items() if k[0] == name and wanted <= k[1]}


def value(samples: Samples, name: str, **labels: str) -> float | None:
    found = select(samples, name, **labels)
    assert len(found) <= 1, f"{name} {labels} matches {len(found)} series"
    return next(iter(found.values()), None)


def wait_for(check: Callable[[], object], timeout: float, what: str, step: float = 0.1) -> float:
    """Poll ``check`` until it holds; the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic() - started
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def record(path: Path, line: str) -> None:
    """Append a measured figure to a file under .cache that the docs are written from."""
    path.parent.mkdir(exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")


@pytest.fixture(scope="session")
def net() -> Iterator[TargetNetwork]:
    if not NETNS_OK:
        pytest.skip(NETNS_WHY)
    with TargetNetwork("npt") as network:
        yield network


class AgentProcess:
    """``node-ping-exporter`` running in the agent namespace, scraped through curl there."""

    def __init__(self, net: TargetNetwork, args: list[str], port: int, env: dict[str, str]) -> None:
        self.net = net
        self.port = port
        self.log_path = Path(f"/tmp/npe-agent-{os.getpid()}-{port}.log")
        self.log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = net.agent.popen(
            [sys.executable, "-m", "exporter", "--listen-address", f"127.0.0.1:{port}", *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str, accept: str = "") -> tuple[int, str]:
        headers = ["-H", f"Accept: {accept}"] if accept else []
        out = self.net.agent.run(
            "curl",
            "-s",
            "-m",
            "5",
            *headers,
            "-w",
            "\n%{http_code}",
            f"http://127.0.0.1:{self.port}{path}",
            check=False,
        )
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def metrics(self) -> Samples:
        status, body = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}: {self.output()}"
        return parse_metrics(body)

    def wait_ready(self, timeout: float = 15) -> None:
        wait_for(
            lambda: self.alive() and self.get("/readyz")[0] == 200,
            timeout,
            f"agent ready; its output: {self.output()}",
        )

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}: {self.output()}")
        return True

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-3000:]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def agent_factory(net: TargetNetwork) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []
    ports = iter(range(19800 + os.getpid() % 100 * 10, 20900))

    def start(*args: str, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(
            net, ["--node-name", "agent", "--log-level", "debug", *args], next(ports), env or {}
        )
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop()


@contextmanager
def running_lab(name: str, config: Any) -> Iterator[Any]:
    """A cluster lab for a test module: skipped without Go (latency faults need the
    responder), always taken down, also after a failure."""
    from lab.cluster import Lab
    from lab.responder import ResponderUnavailable, ensure_responder

    try:
        ensure_responder()
    except ResponderUnavailable as exc:
        pytest.skip(str(exc))
    lab = Lab(f"{name}{os.getpid()}")
    lab.up(config)
    try:
        yield lab
    finally:
        lab.down()


def write_peers(path: Path, peers: dict[str, str]) -> None:
    """Write a peers file atomically, as a ConfigMap update would appear."""
    write_atomically(path, json.dumps([{"name": n, "ipAddress": ip} for n, ip in peers.items()]))


@pytest.fixture(scope="session")
def control_plane() -> Iterator[Any]:
    """etcd + kube-apiserver + kube-controller-manager (lab/controlplane.py), one per run.

    Skipped, with the reason, only where this machine cannot run one (no etcd, no
    Go to build the API server); a failed build or start on a machine that can is
    an error, not a skip."""
    from lab.controlplane import ControlPlane, unavailable

    why = unavailable()
    if why:
        pytest.skip(f"no Kubernetes control plane: {why}")
    plane = ControlPlane(f"t{os.getpid()}")
    plane.up()
    try:
        yield plane
    finally:
        plane.down()
