"""The lab in Kubernetes-discovery mode: every agent lists and watches Node objects in a
real API server (lab/controlplane.py), through the lab's hub, with a token issued for
the chart's service account (TokenRequest) — the RBAC a cluster would give it.

Timings asserted are the issue's: a created node is probed within 5 s, a deleted
one's series are gone within 5 s. The outage drill stops the API server for 60 s
and compacts etcd meanwhile, so the agents' resource versions are gone (410) when
it comes back.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest

from lab.agents import listen_address
from lab.cluster import Lab
from lab.controlplane import LAB_ADDRESS, LAB_PORT, ControlPlane
from lab.kubenodes import set_addresses, set_finalizers
from lab.process import kill_all, spawn
from lab.state import LabConfig

from .conftest import (
    NETNS_OK,
    NETNS_WHY,
    ROOT,
    parse_metrics,
    record,
    running_lab,
    select,
    value,
    wait_for,
)

pytestmark = pytest.mark.e2e

NODES = ["node-1", "node-2", "node-3", "node-4"]
FINALIZER = "node-ping.test/hold"
TIMINGS = ROOT / ".cache" / "kube-timing.txt"  # measured figures, read back for the docs


def timed(what: str, seconds: float) -> None:
    record(TIMINGS, f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {what}: {seconds:.2f}s")


@pytest.fixture(scope="module")
def lab(control_plane: ControlPlane) -> Iterator[Lab]:
    if not NETNS_OK:
        pytest.skip(NETNS_WHY)
    config = LabConfig(
        nodes=len(NODES),
        zones=2,
        prometheus=False,
        external_targets=[],
        kubernetes=control_plane.name,
    )
    with running_lab("kube", config) as made:
        yield made


Probes = dict[tuple[str, str], tuple[float, float]]


def probes(lab: Lab, source: str) -> Probes:
    """(destination, address) -> (sent, received), from the source's /metrics."""
    samples = parse_metrics(lab.agents.metrics(source))
    received = select(samples, "kube_node_ping_packets_received_total")
    out: Probes = {}
    for labels, sent in select(samples, "kube_node_ping_packets_sent_total").items():
        peer = dict(labels)
        key = (peer["destination_node"], peer["destination_node_ip_address"])
        out[key] = (sent, received.get(labels, 0.0))
    return out


def others(node: str) -> list[str]:
    return [n for n in NODES if n != node]


def answered(lab: Lab, destination: str, address: str, after: dict[str, Probes]) -> bool:
    """Every other agent has received replies from ``address`` since ``after``."""
    for source in others(destination):
        now = probes(lab, source).get((destination, address))
        before = after.get(source, {}).get((destination, address), (0.0, 0.0))
        if now is None or now[1] <= before[1]:
            return False
    return True


def not_probed(lab: Lab, destination: str, address: str | None = None) -> bool:
    """No other agent has series for ``destination`` (at ``address``, when given)."""
    return all(
        not any(d == destination and address in (None, a) for d, a in probes(lab, source))
        for source in others(destination)
    )


def snapshot(lab: Lab) -> dict[str, Probes]:
    return {source: probes(lab, source) for source in NODES}


def test_agents_follow_node_objects(lab: Lab) -> None:
    api: Any = lab.kubernetes.core_api()
    wait_for(
        lambda: all({d for d, _ in probes(lab, s)} == set(others(s)) for s in NODES),
        15,
        "every agent probing its three peers, found through the API server",
    )

    lab.remove_peer("node-4")  # the Node object is deleted
    took = wait_for(lambda: not_probed(lab, "node-4"), 5, "node-4's series gone within 5 s")
    timed("deleted node's series gone from every agent", took)

    before = snapshot(lab)
    lab.add_peer("node-4")  # created again, InternalIP set through the status subresource
    took = wait_for(lambda: answered(lab, "node-4", "198.18.0.4", before), 5, "node-4 probed")
    timed("created node answered at every agent", took)

    # A new InternalIP moves the probes: the old address's series go, the new one answers.
    lab.network.namespace("node-4").ip("addr", "add", "198.18.0.104/24", "dev", "eth0")
    before = snapshot(lab)
    set_addresses(api, "node-4", ["198.18.0.104"])
    took = wait_for(
        lambda: (
            answered(lab, "node-4", "198.18.0.104", before)
            and not_probed(lab, "node-4", "198.18.0.4")
        ),
        5,
        "probes moved to node-4's new address",
    )
    timed("probes moved to a changed InternalIP at every agent", took)
    set_addresses(api, "node-4", ["198.18.0.4"])
    wait_for(lambda: not_probed(lab, "node-4", "198.18.0.104"), 5, "node-4 back on .4")

    # Deleting a node held by a finalizer leaves it with a deletionTimestamp: dropped.
    set_finalizers(api, "node-3", [FINALIZER])
    lab.remove_peer("node-3")
    assert api.read_node("node-3").metadata.deletion_timestamp is not None
    took = wait_for(lambda: not_probed(lab, "node-3"), 5, "node-3 (being deleted) dropped")
    timed("node with a deletionTimestamp dropped by every agent", took)
    set_finalizers(api, "node-3", [])
    wait_for(lambda: not api.list_node(field_selector="metadata.name=node-3").items, 10, "gone")
    before = snapshot(lab)
    lab.add_peer("node-3")
    wait_for(lambda: answered(lab, "node-3", "198.18.0.3", before), 5, "node-3 back")


def test_each_agent_reports_its_zone_from_its_node_object(lab: Lab) -> None:
    """The lab labels each Node topology.kubernetes.io/zone; every agent reads its own
    from the API server and reports it (kube_node_ping_node_info), for the rules'
    partition verdict."""
    api: Any = lab.kubernetes.core_api()
    for node in NODES:
        zone = api.read_node(node).metadata.labels["topology.kubernetes.io/zone"]
        assert zone == lab.config.zone(node) != ""

        def reported(node: str = node, zone: str = zone) -> bool:
            info = select(parse_metrics(lab.agents.metrics(node)), "kube_node_ping_node_info")
            return list(info) == [frozenset({("source_node", node), ("zone", zone)})]

        wait_for(reported, 10, f"{node} reporting zone {zone}")


def discovery(lab: Lab, node: str, name: str) -> float | None:
    samples = parse_metrics(lab.agents.metrics(node))
    return value(samples, f"kube_node_ping_discovery_{name}", source="kubernetes")


def test_quiet_watch_gets_bookmarks(lab: Lab) -> None:
    """With nothing changing, the API server still sends a BOOKMARK about every minute
    (the watch cache's bookmark frequency); the agent takes it as a sign of life and
    moves its resource version on, so a later resume needs no relist."""
    wait_for(lambda: all(discovery(lab, n, "up") == 1 for n in NODES), 15, "discovery up")
    quiet_since = time.time()
    took = wait_for(
        lambda: all(
            (discovery(lab, n, "last_success_timestamp_seconds") or 0) > quiet_since for n in NODES
        ),
        75,
        "a bookmark at every agent",
        step=1,
    )
    timed("quiet watch: a bookmark reached every agent", took)


def test_api_server_outage_then_compaction(lab: Lab, control_plane: ControlPlane) -> None:
    wait_for(lambda: all(discovery(lab, n, "up") == 1 for n in NODES), 15, "discovery up")
    errors = {n: discovery(lab, n, "errors_total") or 0.0 for n in NODES}
    logs = {n: (lab.workdir.logs / f"agent-{n}.log").stat().st_size for n in NODES}

    control_plane.stop("kube-apiserver")
    stopped = time.monotonic()
    try:
        took = wait_for(
            lambda: all(discovery(lab, n, "up") == 0 for n in NODES),
            15,
            "every agent reporting discovery down",
        )
        timed("API server stopped: every agent reports discovery down", took)
        for node in NODES:
            assert (discovery(lab, node, "errors_total") or 0) > errors[node]
        during = snapshot(lab)
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped) - 10))
        # Still probing every last known peer, still ready (an API server outage must
        # not take every agent out of its Service).
        for source in NODES:
            for key, (sent, received) in probes(lab, source).items():
                assert sent > during[source][key][0] and received > during[source][key][1], (
                    f"{source} stopped probing {key} during the outage"
                )
            ready = f"http://{listen_address(lab.config, source)}/readyz"
            assert lab.network.http_get(ready)[0] == 200
        assert {d for d, _ in probes(lab, "node-1")} == set(others("node-1"))
        time.sleep(max(0.0, 60 - (time.monotonic() - stopped)))
        # Meanwhile etcd moves on and forgets: every version the agents hold is compacted.
        control_plane.compact()
    finally:
        control_plane.start("kube-apiserver")
        control_plane.wait_ready()

    # Backoff is capped at 30 s (±20 %): each agent is back within that, without a restart.
    took = wait_for(
        lambda: all(discovery(lab, n, "up") == 1 for n in NODES), 45, "discovery back", step=0.5
    )
    timed("API server back after 60 s + compaction: every agent resynced", took)
    for node in NODES:
        with open(lab.workdir.logs / f"agent-{node}.log") as log:
            log.seek(logs[node])
            assert "410 Gone" in log.read(), f"{node} did not take the 410 relist path"

    # And the watch works again: a deletion shows within 5 s, a re-creation too.
    lab.remove_peer("node-2")
    wait_for(lambda: not_probed(lab, "node-2"), 5, "node-2 dropped after the resync")
    before = snapshot(lab)
    lab.add_peer("node-2")
    wait_for(lambda: answered(lab, "node-2", "198.18.0.2", before), 5, "node-2 back")


# Inside its own mount namespace the agent sees a pod's service-account files at the
# path every Kubernetes client reads (/var/run/secrets/…), pointing at a directory of
# the test's: nothing changes on the host.
POD_FILES = (
    "mount -t tmpfs tmpfs /run && mkdir -p /run/secrets/kubernetes.io && "
    'ln -s "$0" /run/secrets/kubernetes.io/serviceaccount && exec "$@"'
)


def test_in_cluster_agent_follows_token_rotation(
    lab: Lab, control_plane: ControlPlane, tmp_path: Path
) -> None:
    """The agent as a pod runs it: in-cluster config (KUBERNETES_SERVICE_HOST/PORT, the
    mounted token and CA), no kubeconfig. The kubelet rotates that token; once the old
    one is revoked the agent must pick up the new file by itself, without a restart."""
    from kubernetes import client

    api: Any = lab.kubernetes.core_api()
    account = lab.kubernetes.service_account()
    for name in ("token-a", "token-b"):  # each token lives only as long as its Secret
        api.create_namespaced_secret(
            "kube-prometheus", {"metadata": {"name": name}, "type": "Opaque"}
        )
    first, second = (
        control_plane.service_account_token("kube-prometheus", account, 3600, bound_secret=s)
        for s in ("token-a", "token-b")
    )
    mounted = tmp_path / "serviceaccount"
    mounted.mkdir()
    (mounted / "ca.crt").write_text((control_plane.pki / "ca.crt").read_text())
    (mounted / "namespace").write_text("kube-prometheus")
    (mounted / "token").write_text(first)
    port, address = 9799, lab.config.addresses("node-1")[0]
    agent = spawn(
        lab.network.namespace("node-1").cmd(
            "unshare", "--mount", "--propagation", "private", "sh", "-c", POD_FILES,
            str(mounted), sys.executable, "-m", "exporter", "--node-name", "node-1",
            "--listen-address", f"{address}:{port}", "--interval", "0.1", "--log-format", "json",
            "--stamp-port", "0",  # the lab's own agent on node-1 holds the STAMP port
        ),
        tmp_path / "agent.log",
        env={"KUBERNETES_SERVICE_HOST": LAB_ADDRESS, "KUBERNETES_SERVICE_PORT": str(LAB_PORT)},
    )  # fmt: skip

    def pod_agent() -> set[str]:
        """Peers answering this agent while its discovery is up; empty otherwise."""
        status, text = lab.network.http_get(f"http://{address}:{port}/metrics")
        if status != 200:
            return set()
        samples = parse_metrics(text)
        if value(samples, "kube_node_ping_discovery_up", source="kubernetes") != 1:
            return set()
        received = select(samples, "kube_node_ping_packets_received_total")
        return {dict(labels)["destination_node"] for labels, v in received.items() if v > 0}

    try:
        wait_for(lambda: pod_agent() == set(others("node-1")), 15, "in-cluster discovery")
        (mounted / "token.new").write_text(second)  # the kubelet's atomic rotation
        (mounted / "token.new").replace(mounted / "token")
        api.delete_namespaced_secret("token-a", "kube-prometheus")  # the old token is dead
        control_plane.stop("kube-apiserver")  # every agent reconnects, authenticating anew
        control_plane.start("kube-apiserver")
        control_plane.wait_ready()
        with pytest.raises(client.exceptions.ApiException) as refused:
            client.CoreV1Api(_token_client(control_plane, first)).list_node()
        assert refused.value.status == 401
        # The client re-reads the token file every minute; plus the discovery backoff.
        took = wait_for(lambda: bool(pod_agent()), 120, "discovery with the new token", step=1)
        timed("token rotated, old one revoked: in-cluster agent syncing again", took)
        lab.remove_peer("node-3")
        wait_for(lambda: pod_agent() == {"node-2", "node-4"}, 5, "watching again")
        lab.add_peer("node-3")
    finally:
        kill_all({agent})
        for name in ("token-a", "token-b"):
            with suppress(client.exceptions.ApiException):
                api.delete_namespaced_secret(name, "kube-prometheus")
    log = (tmp_path / "agent.log").read_text()
    assert "401" in log, "the revoked token was never refused: the rotation was not exercised"


def _token_client(plane: ControlPlane, token: str) -> Any:
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = plane.server
    configuration.ssl_ca_cert = str(plane.pki / "ca.crt")
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)
