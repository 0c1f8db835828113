"""The agents: one real ``node-ping-exporter`` process per node namespace.

Each is started the way the chart starts it, with short intervals so that a fault
shows within seconds. In file-discovery mode they read one peers file (the
ConfigMap's format) that the lab rewrites atomically, as a ConfigMap update
would appear; in Kubernetes mode they list and watch Node objects (lab/kubenodes.py).
Every agent runs in its node's cpu cgroup (lab/cpu.py), where ``starve`` limits it.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .cpu import CpuCgroups
from .network import Network
from .process import alive, kill_all, write_atomically
from .state import LabConfig, LabError, LabState, Workdir

AGENT_PORT = 9798


def listen_address(config: LabConfig, node: str) -> str:
    """Where the node's agent serves /metrics: its first address."""
    return f"{config.addresses(node)[0]}:{AGENT_PORT}"


@dataclass(frozen=True)
class Agents:
    """Start, stop and read the agents of one lab; their pids live in its state."""

    workdir: Workdir
    network: Network
    cpu: CpuCgroups

    def write_peers(self, state: LabState) -> None:
        """Every node not removed, with each of its addresses, and its zone if it has one."""
        config = state.config
        entries: list[dict[str, str]] = []
        for node in config.node_names():
            if node in state.removed:
                continue
            zone = {"zone": config.zone(node)} if config.zones else {}
            entries += [{"name": node, "ipAddress": a, **zone} for a in config.addresses(node)]
        write_atomically(self.workdir.peers_file, json.dumps(entries, indent=1))

    def start_all(self, state: LabState) -> None:
        for node in state.config.node_names():
            state.agents[node] = self._spawn(node, state.config)

    def start(self, node: str) -> None:
        with self.workdir.changing() as state:
            if node in state.agents and alive(state.agents[node]):
                raise LabError(f"{node}'s agent is already running")
            state.agents[node] = self._spawn(node, state.config)

    def stop(self, node: str, kill: bool = True) -> None:
        """Stop a node's agent (SIGKILL by default: a crash, nothing cleaned up)."""
        with self.workdir.changing() as state:
            pid = state.agents.pop(node, None)
            if pid is None:
                raise LabError(f"{node} has no agent running")
            kill_all({pid}, signal.SIGKILL if kill else signal.SIGTERM)

    def restart(self, node: str) -> None:
        self.stop(node)
        self.start(node)

    def ready_urls(self, state: LabState) -> set[str]:
        """Each agent's /readyz; none in textfile-only mode, where agents serve no HTTP."""
        if state.config.output == "textfile":
            return set()
        return {f"http://{listen_address(state.config, node)}/readyz" for node in state.agents}

    def ready_files(self, state: LabState) -> set[Path]:
        """In textfile-only mode, each agent is ready once it wrote its textfile."""
        if state.config.output != "textfile":
            return set()
        return {self.workdir.textfile_dir / f"node-ping_{node}.prom" for node in state.agents}

    def metrics(self, node: str) -> str:
        """The node's agent's /metrics, as Prometheus would scrape it."""
        config = self.workdir.load().config
        status, body = self.network.http_get(f"http://{listen_address(config, node)}/metrics")
        if status != 200:
            raise LabError(f"{node}'s agent answered {status}")
        return body

    def _spawn(self, node: str, config: LabConfig) -> int:
        if config.kubernetes:
            discovery = ["--discovery", "kubernetes", "--kubeconfig", str(self.workdir.kubeconfig)]
        else:
            discovery = ["--discovery", "file", "--peers-file", str(self.workdir.peers_file),
                         "--peers-file-poll-interval", "0.2"]  # fmt: skip
        args = [
            sys.executable, "-m", "exporter", "--node-name", node, *discovery,
            "--interval", str(config.interval), "--timeout", str(config.timeout),
            # path-MTU probes every 10 probe intervals, as the agent's defaults (1 s, 10 s)
            "--size-probe-interval", f"{config.interval * 10:g}",
            "--icmp-mode", "unprivileged", "--listen-address", listen_address(config, node),
            "--output", config.output, "--textfile-dir", str(self.workdir.textfile_dir),
            "--textfile-interval", "1", "--log-format", "json",
        ]  # fmt: skip
        if config.max_peers:
            args += ["--max-peers", str(config.max_peers)]
        for target in config.external_targets:
            args += ["--external-target", target]
        # `ip netns exec` execs the agent in place: the pid is the agent's own
        pid = self.workdir.spawn(self.network.namespace(node).cmd(*args), f"agent-{node}.log")
        self.cpu.place(node, pid)  # so that a starve fault, now or later, holds it
        return pid
