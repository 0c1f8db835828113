"""A lab's configuration, its saved state and the directory that holds them.

Separate CLI calls (``node-ping-lab fault …``), the timer processes and a pytest
fixture all drive the same lab, so nothing lives only in memory: the
configuration, process ids and active faults are in ``<workdir>/state.json``, and
every change happens under the workdir's file lock, reloading the state first.
Every part of the lab (network, agents, faults, Prometheus, Kubernetes) works
through one :class:`Workdir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import stat
import string
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .faults import Fault, Timer
from .network import HUB_V4, node_addresses, node_index, node_name
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
    # The nodes are Kubernetes nodes (lab/kubelet.py): containerd and a kubelet in
    # each, the chart's DaemonSet runs the agents as pods. Needs `kubernetes`.
    kubelets: bool = False
    # More helm arguments for the chart on Kubernetes nodes (--set icmp.mode=raw, …).
    chart_values: list[str] = field(default_factory=list)
    # Zones (0: none): the nodes split into this many contiguous blocks, zone-a,
    # zone-b, …; the peers file and the Node objects carry each node's zone.
    zones: int = 0
    # The agents' --max-peers (0: every node probes all): a sampled lab.
    max_peers: int = 0

    def node_names(self) -> list[str]:
        return [node_name(i) for i in range(1, self.nodes + 1)]

    def zone_names(self) -> list[str]:
        return [f"zone-{letter}" for letter in string.ascii_lowercase[: self.zones]]

    def zone(self, node: str) -> str:
        """The node's zone; "" in a lab without zones."""
        return self._zone_by_index()[node_index(node) - 1] if self.zones else ""

    def _zone_by_index(self) -> list[str]:
        """Contiguous blocks as even as they can be, the larger ones first: 7 nodes in
        3 zones are 3, 2, 2."""
        size, larger = divmod(self.nodes, self.zones)
        zones: list[str] = []
        for block, name in enumerate(self.zone_names()):
            zones += [name] * (size + (1 if block < larger else 0))
        return zones

    def zone_nodes(self, zone: str) -> list[str]:
        """The nodes in a zone, or a LabError naming the zones there are."""
        if zone not in self.zone_names():
            have = ", ".join(self.zone_names()) or "none: up --zones Z"
            raise LabError(f"no zone '{zone}' in this lab (zones: {have})")
        return [node for node in self.node_names() if self.zone(node) == zone]

    def addresses(self, node: str) -> list[str]:
        """The node's addresses, IPv4 first (the one its agent listens on)."""
        return node_addresses(node, self.dual_stack)

    def check_node(self, node: str) -> None:
        """A node this lab has, or a LabError naming the ones it has."""
        names = self.node_names()
        if node not in names:
            raise LabError(f"no node '{node}' in this lab (nodes: {', '.join(names)})")

    def group(self, names: Iterable[str]) -> tuple[str, ...]:
        """Node and zone names as the nodes they mean, in node order."""
        nodes: set[str] = set()
        for name in names:
            if name.startswith("zone-"):
                nodes.update(self.zone_nodes(name))
            else:
                self.check_node(name)
                nodes.add(name)
        return tuple(n for n in self.node_names() if n in nodes)

    def partition(
        self, group_a: Iterable[str], group_b: Iterable[str]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Both sides of a partition as nodes: each non-empty, no node on both."""
        a, b = self.group(group_a), self.group(group_b)
        if not a or not b:
            raise LabError("a partition needs a node or zone on each side")
        both = [n for n in a if n in b]
        if both:
            raise LabError(f"partition groups overlap: {', '.join(both)} on both sides")
        return a, b


@dataclass
class LabState:
    config: LabConfig
    agents: dict[str, int] = field(default_factory=dict)  # node -> pid
    responders: dict[str, int] = field(default_factory=dict)  # node -> pid (latency)
    services: dict[str, int] = field(default_factory=dict)  # prometheus, node-exporter
    timers: dict[int, Timer] = field(default_factory=dict)  # pid -> what it switches
    faults: list[Fault] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # nodes left out of the peers file

    def pids(self) -> set[int]:
        """Every process the lab recorded starting."""
        return {
            *self.agents.values(),
            *self.responders.values(),
            *self.services.values(),
            *self.timers,
        }

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["faults"] = [f.to_json() for f in self.faults]
        data["timers"] = {pid: t.to_json() for pid, t in self.timers.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabState:
        # Keys this version does not know (a state file from another version) are dropped.
        data = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        known = LabConfig.__dataclass_fields__
        data["config"] = LabConfig(**{k: v for k, v in data["config"].items() if k in known})
        data["faults"] = [Fault.from_json(f) for f in data["faults"]]
        data["timers"] = {int(p): Timer.from_json(t) for p, t in data.get("timers", {}).items()}
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

    def keep_logs(self) -> None:
        """Copy the logs to ``/tmp/node-ping-lab-logs/<name>`` (a failed ``up`` removes
        the workdir), replacing an earlier copy, and say where they are."""
        parent = LABS_DIR.parent / "node-ping-lab-logs"
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o700)
        owner = parent.lstat()
        if not stat.S_ISDIR(owner.st_mode) or owner.st_uid != os.geteuid():
            raise LabError(f"{parent} is not a directory of this user's: logs not kept")
        kept = parent / self.name
        shutil.rmtree(kept, ignore_errors=True)
        if self.logs.is_dir():
            shutil.copytree(self.logs, kept, symlinks=True)
            # Kubernetes nodes: the containers' logs too (lab/kubelet.py's pod-logs).
            for pod_logs in (self.path / "nodes").glob("*/pod-logs"):
                shutil.copytree(pod_logs, kept / "pods" / pod_logs.parent.name, symlinks=True)
            print(
                f"node-ping-lab: '{self.name}' did not come up; its logs: {kept}", file=sys.stderr
            )

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
