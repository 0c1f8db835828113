"""A lab's configuration, its saved state and the directory that holds them.

Separate CLI calls (``node-ping-lab fault …``), the flapper processes and a pytest
fixture all drive the same lab, so nothing lives only in memory: the
configuration, process ids and active faults are in ``<workdir>/state.json``, and
every change happens under the workdir's file lock, reloading the state first.
Every part of the lab (network, agents, faults, Prometheus, Kubernetes) works
through one :class:`Workdir`.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .faults import Fault
from .network import HUB_V4, node_addresses, node_name
from .process import ROOT, spawn, write_atomically

LABS_DIR = Path("/tmp/node-ping-lab")
RULES_FILE = ROOT / "rules" / "node-ping.rules.yml"  # loaded when it exists


class LabError(Exception):
    """A lab operation that cannot be done; the message says why."""


@dataclass
class LabConfig:
    nodes: int = 5
    dual_stack: bool = False
    interval: float = 0.05  # short, so that a fault shows within seconds
    timeout: float = 0.5
    output: str = "http"  # the agents' --output: http, textfile or both
    prometheus: bool = True
    scrape_interval: str = "5s"
    # Rules the lab's Prometheus loads; the repository's rules file by default.
    rules_file: str = str(RULES_FILE)
    # Load a copy of the rules with 30 s windows and 20 s `for`, so alerts fire
    # within a minute (the lab's alert tests; production keeps 5 m windows).
    fast_alerts: bool = False
    # External targets every agent probes ("name=address"); the hub answers pings.
    external_targets: list[str] = field(default_factory=lambda: [f"hub={HUB_V4}"])
    # Kubernetes discovery: the name of a running control plane (lab/controlplane.py).
    # The lab installs the chart there, registers a Node per node and the agents
    # list/watch them with the chart's service account. Empty: a peers file.
    kubernetes: str = ""

    def node_names(self) -> list[str]:
        return [node_name(i) for i in range(1, self.nodes + 1)]

    def addresses(self, node: str) -> list[str]:
        """The node's addresses, IPv4 first (the one its agent listens on)."""
        return node_addresses(node, self.dual_stack)

    def check_node(self, node: str) -> None:
        """A node this lab has, or a LabError naming the ones it has."""
        names = self.node_names()
        if node not in names:
            raise LabError(f"no node '{node}' in this lab (nodes: {', '.join(names)})")


@dataclass
class LabState:
    config: LabConfig
    agents: dict[str, int] = field(default_factory=dict)  # node -> pid
    responders: dict[str, int] = field(default_factory=dict)  # node -> pid (latency)
    services: dict[str, int] = field(default_factory=dict)  # prometheus, node-exporter
    flappers: dict[int, list[str]] = field(default_factory=dict)  # pid -> the nodes it flaps
    faults: list[Fault] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # nodes left out of the peers file

    def pids(self) -> set[int]:
        """Every process the lab recorded starting."""
        return {
            *self.agents.values(),
            *self.responders.values(),
            *self.services.values(),
            *self.flappers,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = [f.to_json() for f in self.faults]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        data = dict(data)
        # Keys this version does not know (a state file from another version) are dropped.
        known = LabConfig.__dataclass_fields__
        data["config"] = LabConfig(**{k: v for k, v in data["config"].items() if k in known})
        data["faults"] = [Fault.from_json(f) for f in data["faults"]]
        data["flappers"] = {int(pid): nodes for pid, nodes in data["flappers"].items()}
        return cls(**data)


class Workdir:
    """``/tmp/node-ping-lab/<name>``: the state file, the peers file, logs, textfiles."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = LABS_DIR / name
        self.state_file = self.path / "state.json"
        self.peers_file = self.path / "nodes.json"
        self.textfile_dir = self.path / "textfile"
        self.logs = self.path / "logs"
        self.kubeconfig = self.path / "agent.kubeconfig"  # kubernetes mode

    def create(self) -> None:
        for directory in (self.path, self.textfile_dir, self.logs):
            directory.mkdir(parents=True, exist_ok=True)

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def exists(self) -> bool:
        return self.state_file.exists()

    def load(self) -> LabState:
        try:
            return LabState.from_json(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab named '{self.name}' is up (node-ping-lab up)") from None

    def save(self, state: LabState) -> None:
        write_atomically(self.state_file, json.dumps(state.to_json(), indent=2))

    @contextmanager
    def changing(self) -> Iterator[LabState]:
        """Load the state under the lab's lock, let the caller change it, save it."""
        with open(self.path / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self.save(state)

    def spawn(self, command: list[str], log_name: str) -> int:
        """Start a process of the lab's, logging to ``logs/<log_name>``; its pid."""
        return spawn(command, self.logs / log_name)
