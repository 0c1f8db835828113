"""The cluster lab: N simulated nodes on one machine, each running the real agent.

Layout (all of it inside network namespaces the lab creates and removes):

    <prefix>-hub     bridge br0 198.18.0.254/24 (fd00:198:18::fe/64); Prometheus on
                     127.0.0.1:9090 and node-exporter on 127.0.0.1:9100 run here
    <prefix>-node-i  eth0 198.18.0.i/24 (fd00:198:18::i/64), one agent, nftables
                     table ``npelab`` for faults

Peers come from one peers file (the original ConfigMap format) that every
agent reads with file discovery or, with ``kubernetes`` set, from Node objects
in a real API server (lab/controlplane.py) that the agents list and watch with
a token of the chart's service account. The lab's state (configuration, process ids,
active faults) lives in ``<workdir>/state.json`` so that separate CLI calls
(``node-ping-lab fault …``) and a pytest fixture drive the same lab; every
change happens under a file lock, reloading the state first.
"""

from __future__ import annotations

import fcntl
import json
import re
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .controlplane import LAB_ADDRESS, LAB_PORT, ControlPlane, ControlPlaneError
from .faults import TABLE, Fault, network_ruleset
from .kubenodes import LAB_LABEL, create_node, delete_node
from .netns import NETNS_DIR, Namespace, can_create_namespaces, sh
from .process import alive, kill_all, spawn, write_atomically
from .responder import ensure_responder

ROOT = Path(__file__).resolve().parent.parent
LABS_DIR = Path("/tmp/node-ping-lab")
AGENT_PORT = 9798
PROMETHEUS = "127.0.0.1:9090"
NODE_EXPORTER = "127.0.0.1:9100"
HUB_V4, HUB_V6 = "198.18.0.254", "fd00:198:18::fe"
RULES_FILE = ROOT / "rules" / "node-ping.rules.yml"  # loaded when it exists
CHART_NAMESPACE = "kube-prometheus"  # kubernetes mode: where the lab installs the chart


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


@dataclass
class LabState:
    config: LabConfig
    agents: dict[str, int] = field(default_factory=dict)  # node -> pid
    responders: dict[str, int] = field(default_factory=dict)  # node -> pid (latency)
    services: dict[str, int] = field(default_factory=dict)  # prometheus, node-exporter
    flappers: dict[int, list[str]] = field(default_factory=dict)  # pid -> the nodes it flaps
    faults: list[Fault] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # nodes left out of the peers file

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


def node_name(index: int) -> str:
    return f"node-{index}"


class Lab:
    """A handle on one lab, by name; every method works on its saved state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.prefix = f"npl-{name}"
        self.workdir = LABS_DIR / name
        self.state_file = self.workdir / "state.json"
        self.peers_file = self.workdir / "nodes.json"
        self.textfile_dir = self.workdir / "textfile"
        self.logs = self.workdir / "logs"
        self.kubeconfig = self.workdir / "agent.kubeconfig"  # kubernetes mode
        self.release = f"npl-{name}"  # the chart's release, kubernetes mode

    # -- naming -----------------------------------------------------------------

    def nodes(self, state: LabState | None = None) -> list[str]:
        config = (state or self.load()).config
        return [node_name(i) for i in range(1, config.nodes + 1)]

    def namespace(self, node: str) -> Namespace:
        return Namespace.existing(f"{self.prefix}-{node}")

    @property
    def hub(self) -> Namespace:
        return Namespace.existing(f"{self.prefix}-hub")

    def addresses(self, node: str, state: LabState | None = None) -> list[str]:
        index = int(node.rsplit("-", 1)[1])
        config = (state or self.load()).config
        return [f"198.18.0.{index}", *([f"fd00:198:18::{index:x}"] if config.dual_stack else [])]

    # -- state ------------------------------------------------------------------

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
        with open(self.workdir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.load()
            yield state
            self.save(state)

    # -- up and down -------------------------------------------------------------

    def up(self, config: LabConfig) -> None:
        ok, why = can_create_namespaces()
        if not ok:
            raise LabError(why)
        if config.nodes < 2 or config.nodes > 200:
            raise LabError(f"--nodes must be between 2 and 200 (got {config.nodes})")
        self.down()  # a leftover of the same name is replaced, never merged
        for directory in (self.workdir, self.textfile_dir, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        state = LabState(config)
        self.save(state)
        try:
            self._build_network(state)
            self._write_peers(state)
            if config.kubernetes:
                self._kube_setup(state)
                self.save(state)
            for node in self.nodes(state):
                state.agents[node] = self._start_agent(node, state)
            self.save(state)
            if config.prometheus:
                self._start_services(state)
                self.save(state)
            self.wait_ready()
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Remove everything this lab made: processes, namespaces, files. Idempotent."""
        pids: set[int] = set()
        if self.state_file.exists():
            try:
                state = self.load()
                if state.config.kubernetes:
                    self._kube_teardown(state)
                pids |= set(state.agents.values()) | set(state.responders.values())
                pids |= set(state.services.values()) | set(state.flappers)
            except (LabError, ValueError, TypeError, KeyError):
                pass
        namespaces = (
            [p.name for p in NETNS_DIR.iterdir() if p.name.startswith(self.prefix + "-")]
            if NETNS_DIR.is_dir()
            else []
        )
        for namespace in namespaces:  # whatever runs inside, recorded or not
            pids |= {int(p) for p in sh(["ip", "netns", "pids", namespace], check=False).split()}
        kill_all(pids)
        for namespace in namespaces:
            sh(["ip", "netns", "delete", namespace], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _build_network(self, state: LabState) -> None:
        hub = Namespace(f"{self.prefix}-hub")
        hub.ip("link", "add", "br0", "type", "bridge")
        hub.ip("link", "set", "br0", "up")
        hub.ip("addr", "add", f"{HUB_V4}/24", "dev", "br0")
        if state.config.dual_stack:
            hub.ip("-6", "addr", "add", f"{HUB_V6}/64", "dev", "br0", "nodad")
        for index, node in enumerate(self.nodes(state), start=1):
            ns = Namespace(f"{self.prefix}-{node}")
            sh(
                [
                    "ip",
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    ns.name,
                    "type",
                    "veth",
                    "peer",
                    f"v{index}",
                    "netns",
                    hub.name,
                ]
            )
            hub.ip("link", "set", f"v{index}", "master", "br0", "up")
            ns.ip("link", "set", "eth0", "up")
            for address in self.addresses(node, state):
                if ":" in address:
                    ns.ip("-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
                else:
                    ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
            ns.sysctl("net.ipv4.ping_group_range", "0 2147483647")

    # -- agents -----------------------------------------------------------------

    def _write_peers(self, state: LabState) -> None:
        entries = [
            {"name": node, "ipAddress": address}
            for node in self.nodes(state)
            if node not in state.removed
            for address in self.addresses(node, state)
        ]
        write_atomically(self.peers_file, json.dumps(entries, indent=1))  # as a ConfigMap update

    def _start_agent(self, node: str, state: LabState) -> int:
        config = state.config
        args = [
            sys.executable,
            "-m",
            "exporter",
            "--node-name",
            node,
            *(
                ["--discovery", "kubernetes", "--kubeconfig", str(self.kubeconfig)]
                if config.kubernetes
                else [
                    "--discovery",
                    "file",
                    "--peers-file",
                    str(self.peers_file),
                    "--peers-file-poll-interval",
                    "0.2",
                ]
            ),
            "--interval",
            str(config.interval),
            "--timeout",
            str(config.timeout),
            "--icmp-mode",
            "unprivileged",
            "--listen-address",
            f"{self.addresses(node, state)[0]}:{AGENT_PORT}",
            "--output",
            config.output,
            "--textfile-dir",
            str(self.textfile_dir),
            "--textfile-interval",
            "1",
            "--log-format",
            "json",
        ]
        for target in config.external_targets:
            args += ["--external-target", target]
        return self._spawn(self.namespace(node), args, f"agent-{node}.log")

    def _spawn(self, ns: Namespace, args: list[str], log_name: str) -> int:
        return spawn(ns.cmd(*args), self.logs / log_name)

    def stop_agent(self, node: str, kill: bool = True) -> None:
        """Stop a node's agent (SIGKILL by default: a crash, nothing cleaned up)."""
        with self.changing() as state:
            pid = state.agents.pop(node, None)
            if pid is None:
                raise LabError(f"{node} has no agent running")
            kill_all({pid}, signal.SIGKILL if kill else signal.SIGTERM)

    def start_agent(self, node: str) -> None:
        with self.changing() as state:
            if node in state.agents and alive(state.agents[node]):
                raise LabError(f"{node}'s agent is already running")
            state.agents[node] = self._start_agent(node, state)

    def restart_agent(self, node: str) -> None:
        self.stop_agent(node)
        self.start_agent(node)

    def remove_peer(self, node: str) -> None:
        """Take a node out of the peers file (as if it were deleted from the cluster)."""
        with self.changing() as state:
            self._check_node(node, state)
            if node not in state.removed:
                state.removed.append(node)
            self._write_peers(state)
            if state.config.kubernetes:
                delete_node(self.core_api(state), node)

    def add_peer(self, node: str) -> None:
        with self.changing() as state:
            self._check_node(node, state)
            if node in state.removed:
                state.removed.remove(node)
                if state.config.kubernetes:
                    self._register_node(self.core_api(state), node, state)
            self._write_peers(state)

    def _check_node(self, node: str, state: LabState) -> None:
        if node not in self.nodes(state):
            raise LabError(f"no node '{node}' in this lab (nodes: {', '.join(self.nodes(state))})")

    # -- Kubernetes discovery mode ----------------------------------------------

    def control_plane(self, state: LabState | None = None) -> ControlPlane:
        return ControlPlane((state or self.load()).config.kubernetes)

    def core_api(self, state: LabState | None = None) -> Any:
        """A CoreV1Api on the lab's control plane, with admin credentials."""
        from kubernetes import client

        return client.CoreV1Api(self.control_plane(state).api_client())

    def _kube_setup(self, state: LabState) -> None:
        """Chart installed, API server reachable from the hub, a token for the chart's
        service account, one Node per lab node."""
        plane = self.control_plane(state)
        if not plane.running():
            raise LabError(
                f"control plane '{plane.name}' is not running (node-ping-controlplane up)"
            )
        state.services["apiserver-forwarder"] = spawn(
            [sys.executable, "-m", "lab.forward", self.hub.name, LAB_ADDRESS, str(LAB_PORT),
             "127.0.0.1", str(plane.ports.apiserver)],
            self.logs / "forwarder.log",
        )  # fmt: skip
        try:
            plane.helm("install", self.release, str(ROOT / "chart"), "--namespace",
                       CHART_NAMESPACE, "--create-namespace")  # fmt: skip
        except ControlPlaneError as exc:
            raise LabError(str(exc)) from None
        plane.service_account_kubeconfig(
            CHART_NAMESPACE,
            self.service_account(state),
            self.kubeconfig,
            server=f"https://{LAB_ADDRESS}:{LAB_PORT}",
        )
        api = self.core_api(state)
        for node in self.nodes(state):
            if node not in state.removed:
                self._register_node(api, node, state)

    def service_account(self, state: LabState | None = None) -> str:
        """The name of the ServiceAccount the lab's chart release created."""
        accounts = (
            self.core_api(state)
            .list_namespaced_service_account(
                CHART_NAMESPACE, label_selector=f"app.kubernetes.io/instance={self.release}"
            )
            .items
        )
        if len(accounts) != 1:
            raise LabError(f"the chart created {len(accounts)} service accounts, expected 1")
        return str(accounts[0].metadata.name)

    def _register_node(self, api: Any, node: str, state: LabState) -> None:
        create_node(api, node, self.addresses(node, state), labels={LAB_LABEL: self.name})

    def _kube_teardown(self, state: LabState) -> None:
        """The lab's Node objects and chart release removed, when the control plane runs.
        Best effort: an API server that is half gone must not keep ``down`` from
        removing the namespaces."""
        plane = self.control_plane(state)
        if not plane.running():
            return
        try:
            api = self.core_api(state)
            for node in api.list_node(label_selector=f"{LAB_LABEL}={self.name}").items:
                delete_node(api, node.metadata.name)
            plane.helm("uninstall", self.release, "--namespace", CHART_NAMESPACE)
        except Exception as exc:  # any API, network or helm error
            print(
                f"node-ping-lab: cleaning up in control plane '{plane.name}': {exc}",
                file=sys.stderr,
            )

    # -- faults -----------------------------------------------------------------

    def apply(self, fault: Fault) -> None:
        with self.changing() as state:
            self._check_node(fault.node, state)
            if fault.peer:
                self._check_node(fault.peer, state)
            if fault not in state.faults:
                state.faults.append(fault)
            self._sync_faults(state)

    def clear(self, fault: Fault | None = None, node: str | None = None) -> None:
        """Remove one fault, every fault of a node, or (neither given) all faults; the
        last two also stop the flappers of those faults."""
        with self.changing() as state:
            if fault is None:
                stopping = {p for p, nodes in state.flappers.items() if node in (None, *nodes)}
                kill_all(stopping)
                for pid in stopping:
                    del state.flappers[pid]
            if fault is not None:
                state.faults = [f for f in state.faults if f != fault]
            elif node is not None:
                state.faults = [f for f in state.faults if node not in (f.node, f.peer)]
            else:
                state.faults = []
            self._sync_faults(state)

    def flap(self, fault: Fault, period: float) -> None:
        """Toggle a fault on and off every ``period`` seconds, until ``clear()``."""
        with self.changing() as state:
            self._check_node(fault.node, state)
            args = [
                sys.executable,
                "-m",
                "lab.cli",
                "--name",
                self.name,
                "flapper",
                json.dumps(fault.to_json()),
                str(period),
            ]
            pid = spawn(args, self.logs / "flapper.log")
            state.flappers[pid] = [fault.node, *([fault.peer] if fault.peer else [])]

    def _sync_faults(self, state: LabState) -> None:
        addresses = {node: self.addresses(node, state) for node in self.nodes(state)}
        self.hub.nft(
            f"table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n"
            + network_ruleset(state.faults, addresses)
        )
        for node in self.nodes(state):
            ns = self.namespace(node)
            delays = [f.delay_ms for f in state.faults if f.kind == "latency" and f.node == node]
            running = state.responders.get(node)
            # Kernel echo replies off (both families in a dual-stack lab) while the
            # delayed responder answers instead.
            echo_off = [("net.ipv4.icmp_echo_ignore_all", "1")]
            if state.config.dual_stack:
                echo_off.append(("net.ipv6.icmp.echo_ignore_all", "1"))
            if running is not None and not delays:
                kill_all({running})
                del state.responders[node]
                for key, _ in echo_off:
                    ns.sysctl(key, "0")
            elif delays and running is None:
                for key, off in echo_off:
                    ns.sysctl(key, off)
                command = [str(ensure_responder()), "-delay", f"{max(delays)}ms"]
                if state.config.dual_stack:
                    command.append("-ipv6")
                state.responders[node] = self._spawn(ns, command, f"responder-{node}.log")

    # -- Prometheus and node-exporter --------------------------------------------

    def _start_services(self, state: LabState) -> None:
        targets = [
            {
                "targets": [f"{self.addresses(node, state)[0]}:{AGENT_PORT}"],
                "labels": {"node": node},
            }
            for node in self.nodes(state)
        ]
        (self.workdir / "targets.json").write_text(json.dumps(targets, indent=1))
        rules_file = Path(state.config.rules_file)
        if state.config.fast_alerts and rules_file.exists():
            fast = self.workdir / "fast.rules.yml"
            fast.write_text(fast_rules(rules_file.read_text()))
            rules_file = fast
        rules = [str(rules_file)] if rules_file.exists() else []
        config = {
            "global": {
                "scrape_interval": state.config.scrape_interval,
                "evaluation_interval": state.config.scrape_interval,
            },
            "rule_files": rules,
            "scrape_configs": [
                {
                    "job_name": "node-ping-exporter",  # as the chart relabels it
                    "file_sd_configs": [
                        {"files": [str(self.workdir / "targets.json")], "refresh_interval": "5s"}
                    ],
                    "relabel_configs": [{"source_labels": ["node"], "target_label": "instance"}],
                },
                {"job_name": "node-exporter", "static_configs": [{"targets": [NODE_EXPORTER]}]},
            ],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config, indent=1))
        for tool in ("prometheus", "prometheus-node-exporter"):
            if shutil.which(tool) is None:
                raise LabError(f"'{tool}' is not installed (apt-get install {tool})")
        state.services["node-exporter"] = self._spawn(
            self.hub,
            [
                "prometheus-node-exporter",
                f"--web.listen-address={NODE_EXPORTER}",
                "--collector.disable-defaults",
                "--collector.textfile",
                f"--collector.textfile.directory={self.textfile_dir}",
            ],
            "node-exporter.log",
        )
        state.services["prometheus"] = self._spawn(
            self.hub,
            [
                "prometheus",
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'prometheus'}",
                f"--web.listen-address={PROMETHEUS}",
                "--log.level=warn",
            ],
            "prometheus.log",
        )

    def wait_ready(self, timeout: float = 60) -> None:
        """Every agent answers /readyz; Prometheus and node-exporter answer."""
        state = self.load()
        pending = {
            f"http://{self.addresses(n, state)[0]}:{AGENT_PORT}/readyz" for n in state.agents
        }
        if state.config.prometheus:
            pending |= {f"http://{PROMETHEUS}/-/ready", f"http://{NODE_EXPORTER}/metrics"}
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            pending = {url for url in pending if self.http_get(url)[0] != 200}
            if pending:
                time.sleep(0.2)
        if pending:
            raise LabError(
                f"not ready after {timeout}s: {', '.join(sorted(pending))} (logs in {self.logs})"
            )

    # -- reading ----------------------------------------------------------------

    def http_get(self, url: str) -> tuple[int, str]:
        """GET from inside the hub namespace (where every lab address is reachable)."""
        out = self.hub.run("curl", "-s", "-m", "5", "-w", "\n%{http_code}", url, check=False)
        body, _, code = out.rpartition("\n")
        return int(code or 0), body

    def agent_metrics(self, node: str) -> str:
        status, body = self.http_get(f"http://{self.addresses(node)[0]}:{AGENT_PORT}/metrics")
        if status != 200:
            raise LabError(f"{node}'s agent answered {status}")
        return body

    def node_exporter_metrics(self) -> str:
        return self.http_get(f"http://{NODE_EXPORTER}/metrics")[1]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """A PromQL instant query against the lab's Prometheus; the result vector."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        status, body = self.http_get(f"http://{PROMETHEUS}/api/v1/query?{urlencode(params)}")
        data = json.loads(body) if body else {}
        if status != 200 or data.get("status") != "success":
            raise LabError(f"query failed ({status}): {data.get('error', body[:200])}: {expr}")
        return list(data["data"]["result"])

    def status(self) -> str:
        state = self.load()
        lines = [
            f"lab '{self.name}': {state.config.nodes} nodes, namespaces {self.prefix}-*, "
            f"workdir {self.workdir}"
        ]
        for node in self.nodes(state):
            pid = state.agents.get(node)
            agent = f"agent pid {pid}" if pid and alive(pid) else "agent stopped"
            peers = " (not in the peers file)" if node in state.removed else ""
            lines.append(f"  {node:10} {', '.join(self.addresses(node, state)):32} {agent}{peers}")
        for name, pid in state.services.items():
            lines.append(f"  {name}: pid {pid} {'running' if alive(pid) else 'stopped'}")
        if state.config.kubernetes:
            lines.append(
                f"  peers: Node objects in control plane '{state.config.kubernetes}' "
                f"(node-ping-controlplane status), chart release {self.release} in "
                f"{CHART_NAMESPACE}; the agents' kubeconfig: {self.kubeconfig}"
            )
        lines.append(
            "  faults: "
            + ("; ".join(f.describe() for f in state.faults) or "none")
            + (f" (+{len(state.flappers)} flapping)" if state.flappers else "")
        )
        if state.config.prometheus:
            lines.append(
                f"  Prometheus: ip netns exec {self.prefix}-hub curl "
                f"'http://{PROMETHEUS}/api/v1/query?query=up'"
            )
        return "\n".join(lines)


def fast_rules(text: str) -> str:
    """The rules with lab-sized windows: rates over 30 s, pairs established after 1 min,
    every `for` 20 s. Recorded series keep their names."""
    text = text.replace("[5m]", "[30s]").replace("offset 10m", "offset 1m")
    return re.sub(r"^(\s+)for: \S+$", r"\1for: 20s", text, flags=re.M)


def all_labs() -> list[str]:
    """Names of every lab on this machine: namespaces or a workdir left, up or half-gone."""
    names = {p.name for p in LABS_DIR.iterdir()} if LABS_DIR.is_dir() else set()
    if NETNS_DIR.is_dir():
        names |= {
            p.name[len("npl-") :].rsplit("-", 1)[0]
            for p in NETNS_DIR.iterdir()
            if p.name.startswith("npl-") and p.name.endswith("-hub")
        }
    return sorted(names)
