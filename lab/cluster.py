"""The cluster lab: N simulated nodes on one machine, each running the real agent.

All of it lives inside network namespaces the lab creates and removes
(lab/network.py). :class:`Lab` only composes the parts, one per concern:

- ``network``     the hub and node namespaces (lab/network.py)
- ``agents``      one agent per node and the peers file (lab/agents.py)
- ``faults``      nftables loss, delayed replies, CPU starvation (lab/faults.py)
- ``cpu``         a cpu cgroup per agent, where ``starve`` limits it (lab/cpu.py)
- ``prometheus``  Prometheus and node-exporter in the hub (lab/prometheus.py)
- ``kubernetes``  the chart, a token and Node objects in a control plane
                  (lab/kubenodes.py), when the agents discover peers that way

and brings them up and down in order. Its state lives in ``<workdir>/state.json``
(lab/state.py), so that separate CLI calls and a pytest fixture drive the same lab.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable

from .agents import Agents
from .cpu import CpuCgroups, labs_with_cgroups
from .faults import Faults
from .kubenodes import CHART_NAMESPACE, KubernetesDiscovery, delete_node
from .netns import can_create_namespaces
from .network import Network, labs_with_namespaces
from .operator import Operator
from .process import alive
from .prometheus import PROMETHEUS, HubPrometheus
from .state import LABS_DIR, LabConfig, LabError, LabState, Workdir


class Lab:
    """A handle on one lab, by name; every part works on its saved state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.workdir = Workdir(name)
        self.network = Network(name)
        self.cpu = CpuCgroups(name)
        self.agents = Agents(self.workdir, self.network, self.cpu)
        self.faults = Faults(self.workdir, self.network, self.cpu)
        self.prometheus = HubPrometheus(self.workdir, self.network)
        self.kubernetes = KubernetesDiscovery(self.workdir, self.network)
        self.operator = Operator(self.workdir, self.kubernetes)

    @property
    def config(self) -> LabConfig:
        return self.workdir.load().config

    # -- up and down -------------------------------------------------------------

    def up(self, config: LabConfig) -> None:
        ok, why = can_create_namespaces()
        if not ok:
            raise LabError(why)
        if config.kubelets and not config.kubernetes:
            raise LabError("--kubelets needs a control plane (--kubernetes)")
        if config.nodes < 2 or config.nodes > 200:
            raise LabError(f"--nodes must be between 2 and 200 (got {config.nodes})")
        if config.max_peers < 0:
            raise LabError(f"--max-peers must be 0 or more (got {config.max_peers})")
        if not 0 <= config.zones <= min(config.nodes, 26):
            raise LabError(
                f"--zones must be between 0 and {min(config.nodes, 26)} (got {config.zones})"
            )
        self.down()  # a leftover of the same name is replaced, never merged
        self.workdir.create()
        state = LabState(config)
        self.workdir.save(state)
        try:
            self.network.build(config.node_names(), config.dual_stack)
            if config.kubelets:
                self._up_on_kubelets(state)
                return
            self.agents.write_peers(state)
            if config.kubernetes:
                self.kubernetes.setup(state)
                self.workdir.save(state)
            self.agents.start_all(state)
            self.workdir.save(state)
            if config.prometheus:
                self.prometheus.start(state)
                self.workdir.save(state)
            self.wait_ready()
        except BaseException:
            try:
                self.workdir.keep_logs()
            except Exception as exc:  # the logs are a help; the teardown is a must
                _say(f"keeping the logs failed: {type(exc).__name__}: {exc}")
            self.down()
            raise

    def _up_on_kubelets(self, state: LabState) -> None:
        """Kubernetes nodes; prometheus-operator and its Prometheus on the first node (if
        the lab has Prometheus); the chart, with no word about monitors: it finds that
        Prometheus itself."""
        port = self.kubernetes.setup_kubelets(state)
        self.workdir.save(state)
        plane = self.kubernetes.control_plane(state)
        if state.config.prometheus:
            node = state.config.node_names()[0]
            pid = self.operator.start(state, port, node, state.config.scrape_interval)
            state.services["prometheus-operator"] = pid
            self.workdir.save(state)
        self.kubernetes.install_chart(plane, *self.kubernetes.chart_values(state))
        self.kubernetes.wait_pods_ready(state)
        if state.config.prometheus:
            self.operator.wait_ready(state)

    def down(self) -> None:
        """Remove everything this lab made: processes, namespaces, files. Idempotent."""
        pids: set[int] = set()
        state = None
        if self.workdir.exists():
            with contextlib.suppress(LabError, ValueError, TypeError, KeyError):
                state = self.workdir.load()
        if state is not None:
            # Each step whatever the one before did: a failed one is one line, and the
            # processes, namespaces and files below still go.
            if state.config.kubelets and state.config.prometheus:
                _step("the operator", self.operator.teardown, state)
            if state.config.kubernetes:
                _step("the Kubernetes nodes and objects", self.kubernetes.teardown, state)
            pids = state.pids()
        self.network.remove(pids)
        self.cpu.remove()  # after the agents in them are gone
        self.workdir.remove()

    def wait_ready(self, timeout: float = 60) -> None:
        """Every agent answers /readyz (or, textfile-only, has written its file);
        Prometheus and node-exporter answer."""
        state = self.workdir.load()
        pending = self.agents.ready_urls(state)
        files = self.agents.ready_files(state)
        if state.config.prometheus:
            pending |= self.prometheus.ready_urls()
        deadline = time.monotonic() + timeout
        while (pending or files) and time.monotonic() < deadline:
            pending = {url for url in pending if self.network.http_get(url)[0] != 200}
            files = {path for path in files if not path.exists()}
            if pending or files:
                time.sleep(0.2)
        pending |= {str(path) for path in files}
        if pending:
            raise LabError(
                f"not ready after {timeout}s: {', '.join(sorted(pending))} "
                f"(logs in {self.workdir.logs})"
            )

    # -- peers: the peers file, and in Kubernetes mode the Node objects -------------

    def remove_peer(self, node: str) -> None:
        """Take a node out of the peers and of Prometheus's targets (as if it were deleted
        from the cluster, its agent's pod with it)."""
        with self.workdir.changing() as state:
            state.config.check_node(node)
            if node not in state.removed:
                state.removed.append(node)
            self.agents.write_peers(state)
            if state.config.prometheus:
                self.prometheus.write_targets(state)
            if state.config.kubernetes:
                delete_node(self.kubernetes.core_api(state), node)

    def add_peer(self, node: str) -> None:
        with self.workdir.changing() as state:
            state.config.check_node(node)
            if node in state.removed:
                state.removed.remove(node)
                if state.config.kubernetes:
                    self.kubernetes.register(self.kubernetes.core_api(state), node, state.config)
            self.agents.write_peers(state)
            if state.config.prometheus:
                self.prometheus.write_targets(state)

    # -- reading ----------------------------------------------------------------

    def status(self) -> str:
        state = self.workdir.load()
        config = state.config
        lines = [
            f"lab '{self.name}': {config.nodes} nodes, namespaces {self.network.prefix}-*, "
            f"workdir {self.workdir.path}"
        ]
        for node in config.node_names():
            pid = state.agents.get(node)
            agent = f"agent pid {pid}" if pid and alive(pid) else "agent stopped"
            peers = " (not in the peers file)" if node in state.removed else ""
            zone = f"{config.zone(node):8} " if config.zones else ""
            lines.append(f"  {node:10} {zone}{', '.join(config.addresses(node)):32} {agent}{peers}")
        for name, pid in state.services.items():
            lines.append(f"  {name}: pid {pid} {'running' if alive(pid) else 'stopped'}")
        if config.kubernetes:
            lines.append(
                f"  peers: Node objects in control plane '{config.kubernetes}' "
                f"(node-ping-controlplane status), chart release {self.kubernetes.release} in "
                f"{CHART_NAMESPACE}; the agents' kubeconfig: {self.workdir.kubeconfig}"
            )
        lines.append("  faults: " + ("; ".join(f.describe() for f in state.faults) or "none"))
        for pid, timer in state.timers.items():
            lines.append(f"  timer pid {pid}: {timer.describe()}")
        if config.prometheus:
            lines.append(
                f"  Prometheus: ip netns exec {self.network.hub.name} curl "
                f"'http://{PROMETHEUS}/api/v1/query?query=up'"
            )
        return "\n".join(lines)


def all_labs() -> list[str]:
    """Names of every lab on this machine: namespaces, a workdir or cgroups left, up or
    half-gone."""
    names = {p.name for p in LABS_DIR.iterdir()} if LABS_DIR.is_dir() else set()
    return sorted(names | labs_with_namespaces() | labs_with_cgroups())


def _say(line: str) -> None:
    print(f"node-ping-lab: {line}", file=sys.stderr)


def _step(what: str, teardown: Callable[[LabState], None], state: LabState) -> None:
    try:
        teardown(state)
    except Exception as exc:
        _say(f"cleaning up {what} failed: {type(exc).__name__}: {exc}")
