"""/metrics behind real Kubernetes authorization: the agent checks each scraper's
bearer token with a real kube-apiserver (TokenReview, then SubjectAccessReview for
``get /metrics``), over HTTPS, as kube-rbac-proxy would. The agent's own credentials
are a ServiceAccount token bound to ``system:auth-delegator``, as the chart binds it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.controlplane import ControlPlane

from .certs import make_ca, make_cert
from .conftest import ROOT, wait_for
from .test_tls_auth import get

pytestmark = pytest.mark.e2e
NAMESPACE = "npe-auth"
READER = "npe-auth-metrics-reader"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def accounts(control_plane: ControlPlane) -> Iterator[dict[str, str]]:
    """ServiceAccounts agent (auth-delegator), prometheus (may get /metrics), stranger."""
    from kubernetes import client

    api = control_plane.api_client()
    core: Any = client.CoreV1Api(api)
    rbac: Any = client.RbacAuthorizationV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    for name in ("agent", "prometheus", "stranger"):
        core.create_namespaced_service_account(
            NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
        )
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name=READER),
            rules=[client.V1PolicyRule(non_resource_urls=["/metrics"], verbs=["get"])],
        )
    )

    def bind(name: str, role: str, account: str) -> None:
        subject = client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=NAMESPACE)
        rbac.create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=name),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role
                ),
                subjects=[subject],
            )
        )

    bind("npe-auth-agent", "system:auth-delegator", "agent")
    bind("npe-auth-prometheus", READER, "prometheus")
    tokens = {
        name: control_plane.service_account_token(NAMESPACE, name, 600)
        for name in ("prometheus", "stranger", "agent")
    }
    try:
        yield tokens
    finally:
        for binding in ("npe-auth-agent", "npe-auth-prometheus"):
            rbac.delete_cluster_role_binding(binding)
        rbac.delete_cluster_role(READER)
        core.delete_namespace(NAMESPACE)


def test_only_a_token_allowed_to_get_metrics_reads_them(
    control_plane: ControlPlane, accounts: dict[str, str], tmp_path: Path
) -> None:
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, "agent", ca)
    kubeconfig = control_plane.service_account_kubeconfig(
        NAMESPACE, "agent", tmp_path / "agent.kubeconfig", server=control_plane.server
    )
    port = free_port()
    log = (tmp_path / "agent.log").open("w")
    agent = subprocess.Popen(
        [
            sys.executable, "-m", "exporter", "--node-name", "auth-test",
            "--discovery", "static", "--peer", "self=127.0.0.1", "--interval", "0.5",
            "--stamp-port", "0",  # the host's namespace: leave its UDP ports alone
            "--listen-address", f"127.0.0.1:{port}", "--kubeconfig", str(kubeconfig),
            "--metrics-auth", "kubernetes", "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip

    def output() -> str:
        return (tmp_path / "agent.log").read_text()[-2000:]

    try:

        def serving() -> bool:
            assert agent.poll() is None, output()
            try:
                return get(port, "/healthz", ca=ca[0])[0] == 200
            except OSError:
                return False

        wait_for(serving, 15, "the agent serving HTTPS")
        bearer = {name: f"Bearer {token}" for name, token in accounts.items()}
        status, body, _ = get(port, "/metrics", ca=ca[0], Authorization=bearer["prometheus"])
        assert status == 200 and b"kube_node_ping_packets_sent_total" in body, output()
        for who, expected in (("stranger", 403), ("agent", 403)):
            status, body, _ = get(port, "/metrics", ca=ca[0], Authorization=bearer[who])
            assert status == expected and b"kube_node_ping" not in body, (who, body)
        assert b"may not get /metrics" in body
        assert get(port, "/metrics", ca=ca[0])[0] == 401
        assert get(port, "/metrics", ca=ca[0], Authorization="Bearer not-a-token")[0] == 401
        # Scrapes every few seconds are answered from the cache: all fast and allowed.
        began = time.monotonic()
        for _ in range(20):
            assert get(port, "/metrics", ca=ca[0], Authorization=bearer["prometheus"])[0] == 200
        assert time.monotonic() - began < 10
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
