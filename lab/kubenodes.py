"""Node objects for simulated nodes: what a kubelet would register, minus the kubelet.

A Node is created with its labels, then its addresses are set through the
``status`` subresource, as a kubelet reports them (the main resource ignores
status on create and update). Lists are replaced with JSON patches: a strategic
merge patch merges ``finalizers`` and ``addresses`` instead of replacing them.
"""

from __future__ import annotations

from typing import Any

LAB_LABEL = "node-ping-lab"  # which lab made the node: its name


def replace(path: str, value: Any) -> list[dict[str, Any]]:
    """A JSON patch setting ``path`` (``add`` replaces a member that exists)."""
    return [{"op": "add", "path": path, "value": value}]


def create_node(
    api: Any,
    name: str,
    addresses: list[str],
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> None:
    """Register a Node with InternalIP addresses (``api``: a CoreV1Api)."""
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                **(labels or {}),
            },
        },
        "spec": {"taints": taints or []},
    }
    api.create_node(body)
    set_addresses(api, name, addresses)


def set_addresses(api: Any, name: str, addresses: list[str]) -> None:
    entries = [{"type": "InternalIP", "address": a} for a in addresses]
    api.patch_node_status(name, replace("/status/addresses", entries))


def delete_node(api: Any, name: str) -> None:
    """Delete a Node; one that is already gone is fine."""
    from kubernetes.client.exceptions import ApiException

    try:
        api.delete_node(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def set_finalizers(api: Any, name: str, finalizers: list[str]) -> None:
    api.patch_node(name, replace("/metadata/finalizers", finalizers))
