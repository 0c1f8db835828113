"""The agent's own Kubernetes client (exporter.kubeapi) against a real kube-apiserver.

Every way the agent can be given credentials: a token, a token file that is
rotated, a client certificate in files or inline (read from memory: the root
filesystem is read-only), the in-cluster ServiceAccount files, and an exec
plugin (handed to the kubernetes package, imported only then). The client must
list and watch Nodes and say in one line why it cannot.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from exporter import kubeapi
from exporter.kubeapi import ApiError, ApiServer, KubeconfigError, PluginApi

NODES = "/api/v1/nodes"


def admin_token(plane: Any) -> str:
    return str(json.loads((plane.pki / "tokens.json").read_text())["admin"])


def kubeconfig(path: Path, server: str, cluster: dict[str, Any], user: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": server, **cluster}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )
    return path


def ca_data(plane: Any) -> dict[str, str]:
    pem = (plane.pki / "ca.crt").read_bytes()
    return {"certificate-authority-data": base64.b64encode(pem).decode()}


def node_names(api: kubeapi.Api) -> set[str]:
    return {item["metadata"]["name"] for item in api.get_json(NODES, {}, 10)["items"]}


@pytest.fixture(scope="module")
def plane(control_plane: Any) -> Any:
    from kubernetes import client

    from lab.kubenodes import create_node

    core = client.CoreV1Api(control_plane.api_client())
    for name in ("kubeapi-a", "kubeapi-b"):
        create_node(core, name, ["198.18.128.1"])
    return control_plane


def test_token_lists_and_watches_nodes(plane: Any, tmp_path: Path) -> None:
    """A token and inline CA: list, then a watch from the list's version sees a new
    Node; close() from another thread ends a watch that is waiting for events."""
    from kubernetes import client

    from lab.kubenodes import create_node

    api = kubeapi.connect(
        kubeconfig(tmp_path / "kc", plane.server, ca_data(plane), {"token": admin_token(plane)})
    )
    assert isinstance(api, ApiServer)
    listed = api.get_json(NODES, {"labelSelector": "kubernetes.io/hostname=kubeapi-a"}, 10)
    assert [n["metadata"]["name"] for n in listed["items"]] == ["kubeapi-a"]
    version = listed["metadata"]["resourceVersion"]
    query = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "30"}
    stream = api.stream(NODES, query, 10, 60)
    create_node(client.CoreV1Api(plane.api_client()), "kubeapi-c", ["198.18.128.3"])
    events = []
    for line in stream.lines():
        event = json.loads(line)
        events.append((event["type"], event["object"]["metadata"]["name"]))
        if event["object"]["metadata"]["name"] == "kubeapi-c":
            break
    stream.close()
    assert ("ADDED", "kubeapi-c") in events


def test_client_certificate_from_files_and_from_memory(plane: Any, tmp_path: Path) -> None:
    """A kubelet's certificate (the Node authorizer lets it read its own Node), as
    paths relative to the kubeconfig and as inline data (loaded through memfd, no file
    written)."""
    cert, key = plane.node_credentials("kubeapi-a", tmp_path)
    files = kubeconfig(
        tmp_path / "files",
        plane.server,
        {"certificate-authority": str(plane.pki / "ca.crt")},
        {"client-certificate": cert.name, "client-key": key.name},
    )
    inline = kubeconfig(
        tmp_path / "inline",
        plane.server,
        ca_data(plane),
        {
            "client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
            "client-key-data": base64.b64encode(key.read_bytes()).decode(),
        },
    )
    for path in (files, inline):
        node = kubeapi.connect(path).get_json(f"{NODES}/kubeapi-a", {}, 10)
        assert node["metadata"]["name"] == "kubeapi-a"


def test_a_refused_token_is_an_api_error_with_the_servers_reason(
    plane: Any, tmp_path: Path
) -> None:
    api = kubeapi.connect(
        kubeconfig(tmp_path / "kc", plane.server, ca_data(plane), {"token": "made-up"})
    )
    with pytest.raises(ApiError) as caught:
        api.get_json(NODES, {}, 10)
    assert caught.value.status == 401
    wrong_ca = kubeconfig(tmp_path / "ca", plane.server, {}, {"token": admin_token(plane)})
    with pytest.raises(OSError):  # the API server's certificate is not from a public CA
        kubeapi.connect(wrong_ca).get_json(NODES, {}, 10)


def test_in_cluster_service_account_and_token_rotation(
    plane: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KUBERNETES_SERVICE_HOST/PORT and the mounted ca.crt and token, as in a pod. The
    token file is read again once a minute (scripted clock): a rotated token is used."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "ca.crt").write_bytes((plane.pki / "ca.crt").read_bytes())
    (account / "token").write_text("made-up")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(plane.ports.apiserver))
    now = [0.0]
    api = kubeapi.in_cluster_api(account, clock=lambda: now[0])
    with pytest.raises(ApiError):
        api.get_json(NODES, {}, 10)
    (account / "token").write_text(admin_token(plane) + "\n")
    now[0] = 59.0
    with pytest.raises(ApiError):  # not read again yet
        api.get_json(NODES, {}, 10)
    now[0] = 60.0
    assert "kubeapi-a" in node_names(api)
    with pytest.raises(KubeconfigError, match="no ServiceAccount credentials"):
        kubeapi.in_cluster_api(tmp_path / "nowhere")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    with pytest.raises(KubeconfigError, match="not in a pod"):
        kubeapi.in_cluster_api(account)


def test_an_exec_plugin_goes_through_the_kubernetes_package(plane: Any, tmp_path: Path) -> None:
    """Credentials from an exec plugin (as EKS and GKE kubeconfigs have): the request
    goes through the kubernetes package, which runs the plugin."""
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": admin_token(plane)},
    }
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": sys.executable,
            "args": ["-c", f"print({json.dumps(json.dumps(credential))})"],
            "interactiveMode": "Never",
        }
    }
    api = kubeapi.connect(kubeconfig(tmp_path / "kc", plane.server, ca_data(plane), user))
    assert isinstance(api, PluginApi)
    assert {"kubeapi-a", "kubeapi-b"} <= node_names(api)
    stream = api.stream(NODES, {"watch": "true", "timeoutSeconds": "1"}, 10, 30)
    first = json.loads(next(iter(stream.lines())))
    stream.close()
    assert first["type"] == "ADDED"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("[]", "not a kubeconfig"),
        ("users:\n- name: u\n  user: {token: s3cret\n", "not valid YAML at line"),
        (
            '{"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],'
            ' "clusters": [{"name": "k", "cluster": {"server": "https://x:99999"}}]}',
            "not an http(s) URL",
        ),
        ('{"current-context": "x"}', "no context named 'x'"),
        (
            '{"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}]}',
            "no cluster named 'k'",
        ),
        (
            '{"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],'
            ' "clusters": [{"name": "k", "cluster": {"server": "ftp://x"}}]}',
            "not an http(s) URL",
        ),
        (
            '{"current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k"}}],'
            ' "clusters": [{"name": "k", "cluster": {"server": "https://x",'
            ' "certificate-authority": "missing.crt"}}]}',
            "TLS settings",
        ),
    ],
)
def test_a_bad_kubeconfig_is_one_line(text: str, problem: str, tmp_path: Path) -> None:
    path = tmp_path / "kc"
    path.write_text(text)
    with pytest.raises(KubeconfigError) as caught:
        kubeapi.connect(path)
    assert problem in str(caught.value) and "\n" not in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_the_agent_does_not_import_the_kubernetes_package(plane: Any, tmp_path: Path) -> None:
    """What this client is for: the agent's Kubernetes path without the package's
    ~900 modules (33 MB on every node)."""
    path = kubeconfig(tmp_path / "kc", plane.server, ca_data(plane), {"token": admin_token(plane)})
    code = (
        "import sys; from exporter.discovery.kubernetes import kubernetes_api;"
        "from exporter.auth import KubernetesAuthorizer;"
        f"api = kubernetes_api(__import__('pathlib').Path({str(path)!r}));"
        "api.get_json('/api/v1/nodes', {}, 10);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_discovery_lists_nodes_page_by_page(
    plane: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node list comes a page at a time (a 5000-node list in one piece is tens of
    MB at once) and only what makes a node a peer is kept: with pages of one Node, the
    same peers and a version to watch from."""
    from exporter.discovery import DiscoveryState, NodeSink
    from exporter.discovery import kubernetes as discovery
    from exporter.peers import NodeAddress, PeerTable

    path = kubeconfig(tmp_path / "kc", plane.server, ca_data(plane), {"token": admin_token(plane)})
    source = discovery.KubernetesDiscovery(
        NodeSink(PeerTable(window=5, per_peer_histogram=False), "me", False, 0),
        DiscoveryState("kubernetes"),
        ["InternalIP"],
        "",
        path,
    )
    whole, version = source._list()
    monkeypatch.setattr(discovery, "LIST_PAGE", 1)
    paged, paged_version = source._list()
    assert paged == whole and len(paged) >= 2 and version and paged_version
    assert paged["kubeapi-a"] == NodeAddress("kubeapi-a", ("198.18.128.1",), "")
