"""The chart on real nodes: its DaemonSet run by kubelets, scraped through
prometheus-operator, alerting end to end.

Nothing here is simulated. Each of three lab nodes is a Kubernetes node: a
kubelet v1.37.1 and containerd 2.4 in the node's network namespace
(lab/kubelet.py), pulling the pause and agent images from the lab's registry
(Debian's docker-registry). ``helm install`` puts the chart into
``kube-prometheus``; prometheus-operator turns its ServiceMonitor and
PrometheusRule into a scrape configuration and rule files for a ``Prometheus``
object shaped like kube-prometheus-stack's (selectors on ``release``), and runs
that Prometheus as a pod on node-1. Faults are the lab's (nftables on the hub's
bridge), so an isolated node also loses its kubelet's connection, as it would.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.diagnose import diagnose
from lab.cli import LabPrometheus
from lab.cluster import Lab
from lab.controlplane import ControlPlane
from lab.controlplane import unavailable as no_control_plane
from lab.faults import Fault
from lab.kubelet import unavailable as no_kubelets
from lab.kubenodes import CHART_NAMESPACE
from lab.netns import sh
from lab.process import kill_all, spawn
from lab.prometheus import FAST_CONFIG
from lab.scenarios import firing
from lab.state import LabConfig

from .conftest import NETNS_OK, NETNS_WHY, ROOT, record, running_lab, wait_for
from .test_dashboards import without_data
from .test_lab_e2e import lab_substitute

pytestmark = pytest.mark.e2e

NODES = ["node-1", "node-2", "node-3"]  # node-1 also runs Prometheus
TIMINGS = ROOT / ".cache" / "kubelet-timing.txt"  # measured figures, read back for the docs
CAP_NET_RAW = 1 << 13


def timed(what: str, seconds: float) -> None:
    record(TIMINGS, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what}: {seconds:.1f}s")


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    """A control plane of this module's own: its kubelets and scheduler touch no other test."""
    why = no_control_plane() or no_kubelets()
    if why:
        pytest.skip(f"no Kubernetes nodes here: {why}")
    made = ControlPlane(f"k{os.getpid()}")
    made.up()
    try:
        yield made
    finally:
        made.down()


@pytest.fixture(scope="module")
def lab(plane: ControlPlane) -> Iterator[Lab]:
    if not NETNS_OK:
        pytest.skip(NETNS_WHY)
    config = LabConfig(
        nodes=len(NODES),
        kubernetes=plane.name,
        kubelets=True,
        fast_alerts=True,
        external_targets=[],
    )
    started = time.monotonic()
    with running_lab("kubelet", config) as made:
        timed(
            "3 kubelet nodes, chart installed, agents and Prometheus Ready",
            time.monotonic() - started,
        )
        yield made


def agent_processes(lab: Lab) -> dict[str, int]:
    """node -> pid of the agent container's process, found in the node's namespace."""
    out = {}
    for node in NODES:
        namespace = lab.network.namespace(node).name
        for pid in sh(["ip", "netns", "pids", namespace]).split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # python3.11 -IBu /opt/node-ping-exporter/bin/node-ping-exporter …
            if any(part.endswith(b"/node-ping-exporter") for part in cmdline[:3]):
                out[node] = int(pid)
    return out


def status_fields(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def pods(lab: Lab) -> list[Any]:
    from kubernetes import client

    api: Any = client.CoreV1Api(lab.kubernetes.control_plane().api_client())
    selector = f"app.kubernetes.io/instance={lab.kubernetes.release}"
    return list(api.list_namespaced_pod(CHART_NAMESPACE, label_selector=selector).items)


def test_every_agent_runs_as_the_chart_says(lab: Lab) -> None:
    """One pod per node, Running and Ready through the real readiness probe; its process
    runs as 65534 with no capability and no way to gain one, on a read-only root."""
    running = pods(lab)
    assert sorted(p.spec.node_name for p in running) == NODES
    for pod in running:
        assert pod.status.phase == "Running"
        assert all(c.ready for c in pod.status.container_statuses)
    processes = agent_processes(lab)
    assert sorted(processes) == NODES
    for pid in processes.values():
        fields = status_fields(pid)
        assert fields["Uid"].split()[:2] == ["65534", "65534"]
        assert fields["Gid"].split()[:2] == ["65534", "65534"]
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
        assert fields["NoNewPrivs"] == "1"
        assert fields["Seccomp"] == "2"  # RuntimeDefault
        root = next(
            line.split()
            for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
            if line.split()[4] == "/"
        )
        assert "ro" in root[5].split(","), root


def test_the_operator_scrapes_every_agent_and_they_ping_each_other(lab: Lab) -> None:
    """The scrape configuration is the operator's, made from the chart's ServiceMonitor;
    through it Prometheus sees every agent up and every pair answering. The install
    said nothing about monitors, rules or labels: the chart found the Prometheus."""
    state = lab.workdir.load()
    given = lab.kubernetes.control_plane(state).helm(
        "get", "values", lab.kubernetes.release, "-n", CHART_NAMESPACE, "-o", "json"
    )
    values = json.loads(given)  # the lab's scrape interval and windows, no more
    for part in ("serviceMonitor", "podMonitor", "prometheusRule"):
        assert not {"enabled", "labels", "namespace"} & values.get(part, {}).keys(), given
    config = lab.operator.generated_config(state)
    assert re.search(r"job_name: serviceMonitor/kube-prometheus/npl-\S+/0", config), config[:2000]
    query = lab.prometheus.query

    def all_pairs() -> bool:
        up = query(f'up{{namespace="{CHART_NAMESPACE}"}} == 1')
        pairs = query("rate(kube_node_ping_packets_received_total[30s]) > 0")
        return len(up) == len(NODES) and len(pairs) == len(NODES) * (len(NODES) - 1)

    timed("agents scraped and every pair answering", wait_for(all_pairs, 120, "every pair", 2))
    rules = query("node_ping:threshold:pair_loss_ratio")
    assert rules, "the operator did not load the chart's PrometheusRule"


def test_an_isolated_node_fires_the_alert_and_diagnose_names_it(lab: Lab) -> None:
    lab.faults.apply(Fault("isolate", "node-3"))
    try:
        expected = ("NodePingNodeUnreachable", "node-3")
        took = wait_for(lambda: expected in firing(lab.prometheus.query), 150, "the alert", 2)
        timed("node-3 isolated: NodePingNodeUnreachable fired", took)
        found = diagnose(LabPrometheus(lab), config=FAST_CONFIG)
        assert ("node_unreachable", "node-3") in {(v.kind, v.subject) for v in found.verdicts}
        # The "Node connectivity" dashboard has data here (the external-targets one
        # needs targets outside the cluster, which this lab does not probe).
        dashboard = ["node-connectivity.json"]
        assert without_data(lab.prometheus.query, lab_substitute, dashboard) == []
    finally:
        lab.faults.clear()


def test_a_hung_agent_is_restarted_by_its_liveness_probe(lab: Lab) -> None:
    """SIGSTOP the agent on node-2: its /healthz stops answering, the kubelet's liveness
    probe fails three times and the kubelet restarts the container; the new one is Ready."""
    import signal

    pid = agent_processes(lab)["node-2"]
    (before,) = [p for p in pods(lab) if p.spec.node_name == "node-2"]
    restarts = before.status.container_statuses[0].restart_count
    os.kill(pid, signal.SIGSTOP)

    def restarted() -> bool:
        (pod,) = [p for p in pods(lab) if p.spec.node_name == "node-2"]
        (container,) = pod.status.container_statuses
        return bool(container.restart_count > restarts and container.ready)

    took = wait_for(restarted, 120, "the hung agent's restart", 1)
    timed("hung agent (SIGSTOP) restarted and Ready again", took)
    assert agent_processes(lab)["node-2"] != pid


def upgrade(lab: Lab, *values: str) -> float:
    """``helm upgrade`` of the lab's release with ``values`` on top of the lab's; waits
    until a new pod is Ready on every node and one loss window more, checking on the
    way that the DaemonSet replaces one node's pod at a time and that no network alert
    fires. Pending ones are recorded with the seconds they were seen: between a
    node's agent stopping and Prometheus's next scrape of it failing, its peers' UDP
    loss is there and nothing yet says why (docs/cluster.md). The rollout's seconds."""
    state = lab.workdir.load()
    plane = lab.kubernetes.control_plane(state)
    old = {p.metadata.name for p in pods(lab)}
    started = time.monotonic()
    plane.helm("upgrade", lab.kubernetes.release, str(ROOT / "chart"), "--namespace",
               CHART_NAMESPACE, *lab.kubernetes.chart_values(state), *values)  # fmt: skip
    most_down, took, pending = 0, 0.0, dict[tuple[str, str], int]()
    # what the rules hold a restart for (FAST_CONFIG's windows are in seconds)
    settle = sum(float(FAST_CONFIG[w].removesuffix("s")) for w in ("lossWindow", "latestWindow"))
    while not took or time.monotonic() - started < took + settle:
        query = lab.prometheus.query
        network = {a for a in firing(query) if a[0] != "NodePingAgentDown"}
        assert network == set(), f"network alerts fired during the rollout: {network}"
        for alert in firing(query, "pending"):
            pending[alert] = pending.get(alert, 0) + 1
        if not took:
            now = pods(lab)
            new_ready = [p for p in now if p.metadata.name not in old and _ready(p)]
            most_down = max(most_down, len(NODES) - sum(_ready(p) for p in now))
            if len(new_ready) == len(NODES):
                took = time.monotonic() - started
            assert time.monotonic() - started < 300, "the rollout did not finish in 5 minutes"
        time.sleep(1)
    assert most_down <= 1, f"{most_down} agents down at once: not node by node"
    for (name, node), seconds in sorted(pending.items()):
        if name != "NodePingAgentDown":
            timed(f"pending during the rollout (never fired): {name} {node}", seconds)
    return took


def _ready(pod: Any) -> bool:
    statuses = pod.status.container_statuses or []
    return bool(statuses) and all(c.ready for c in statuses) and not pod.metadata.deletion_timestamp


def test_an_upgrade_rolls_node_by_node_and_raw_mode_holds_only_net_raw(lab: Lab) -> None:
    """``helm upgrade`` to icmp.mode=raw rolls the DaemonSet one node at a time without
    a network alert; each new agent runs as root with NET_RAW its only capability."""
    took = upgrade(lab, "--set", "icmp.mode=raw")
    timed(f"helm upgrade to raw mode rolled {len(NODES)} nodes", took)
    for pid in agent_processes(lab).values():
        fields = status_fields(pid)
        assert fields["Uid"].split()[0] == "0"
        for capabilities in ("CapEff", "CapPrm", "CapBnd"):
            assert int(fields[capabilities], 16) == CAP_NET_RAW, (capabilities, fields)


def textfile_dir(lab: Lab) -> Path:
    """The chart's textfile hostPath in this lab: the three nodes share the host, so they
    share the directory (each agent writes its own file, named by its node)."""
    return Path(f"/run/npl/{lab.workdir.name}/node-exporter-textfile")


def test_textfile_output_reaches_a_node_exporter_through_the_host_path(lab: Lab) -> None:
    """output=both, unprivileged again: the init container hands the host directory to
    the agents' group, each agent writes its file there, and Debian's node-exporter in
    node-1's namespace, reading that directory as a node-exporter DaemonSet with the
    same hostPath would, serves node-1's series."""
    directory = textfile_dir(lab)
    took = upgrade(lab, "--set", "output=both", "--set", f"textfile.hostPath={directory}")
    timed("helm upgrade to textfile output rolled 3 nodes", took)
    files = {f"node-ping_{node}.prom" for node in NODES}
    wait_for(lambda: files <= {p.name for p in directory.iterdir()}, 30, "every textfile")
    assert directory.stat().st_gid == 65534 and directory.stat().st_mode & 0o777 == 0o775
    namespace = f"/run/netns/{lab.network.namespace('node-1').name}"
    exporter = spawn(["nsenter", f"--net={namespace}", "prometheus-node-exporter",
                      "--web.listen-address=198.18.0.1:9100", "--collector.disable-defaults",
                      "--collector.textfile", f"--collector.textfile.directory={directory}"],
                     lab.workdir.logs / "node-exporter-node-1.log")  # fmt: skip
    try:
        pattern = re.compile(r'^kube_node_ping_packets_sent_total\{[^}]*source_node="node-1"', re.M)

        def served() -> bool:
            return bool(pattern.search(lab.network.http_get("http://198.18.0.1:9100/metrics")[1]))

        wait_for(served, 30, "node-1's series through node-exporter", 1)
    finally:
        kill_all({exporter})


def test_uninstall_leaves_no_agent_and_no_textfile(lab: Lab) -> None:
    """``helm uninstall``: every agent stops (gracefully: each takes its textfile with it),
    no agent process is left in any node, nothing of the agents in the host directory."""
    state = lab.workdir.load()
    plane = lab.kubernetes.control_plane(state)
    plane.helm("uninstall", lab.kubernetes.release, "--namespace", CHART_NAMESPACE)
    took = wait_for(lambda: not pods(lab) and not agent_processes(lab), 60, "no agents", 0.5)
    timed("helm uninstall: every agent pod and process gone", took)
    assert [p.name for p in textfile_dir(lab).iterdir()] == []
