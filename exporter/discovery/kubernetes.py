"""Kubernetes discovery: list + watch Node objects.

Requests are blocking (exporter.kubeapi), so list/watch runs in a thread of its own
(started by ``run()``, ended by cancelling it: the open watch is closed so
the thread stops at once) and hands every change to the asyncio loop as a
complete node snapshot (``loop.call_soon_threadsafe``). Any error resumes the watch from the last
resource version after a capped exponential backoff; ``410 Gone`` (that
version was compacted away) relists at once.
Until then the peer table keeps the last known peers, so probing goes on while
the API server is away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, normalise_ip
from ..kubeapi import Api, KubeconfigError, Stream, connect, in_cluster
from ..peers import NodeAddress
from ..supervisor import in_thread
from . import DiscoverySource, DiscoveryState, NodeSink

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # server-side timeout of one watch request
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
ZONE_LABEL = "topology.kubernetes.io/zone"
LEGACY_ZONE_LABEL = "failure-domain.beta.kubernetes.io/zone"  # before Kubernetes 1.17


def node_addresses(node: dict[str, Any], address_types: list[str]) -> NodeAddress | None:
    """A Node object as a peer, or None when it is being deleted or has no usable address."""
    metadata = node.get("metadata") or {}
    if metadata.get("deletionTimestamp"):
        return None
    addresses: list[str] = []
    for entry in (node.get("status") or {}).get("addresses") or []:
        if entry.get("type") in address_types:
            try:
                address = normalise_ip(str(entry.get("address", "")))
            except ValueError:
                continue
            if address not in addresses:
                addresses.append(address)
    if not addresses or not metadata.get("name"):
        return None
    labels = metadata.get("labels") or {}
    zone = labels.get(ZONE_LABEL) or labels.get(LEGACY_ZONE_LABEL) or ""
    return NodeAddress(str(metadata["name"]), tuple(addresses), str(zone))


# Node name -> what makes it a peer (None: no usable address, or being deleted).
Nodes = dict[str, NodeAddress | None]
LIST_PAGE = 500


class ResourceExpired(Exception):
    """410 Gone: the watch's resource version is too old; relist."""


class KubernetesDiscovery(DiscoverySource):
    name = "discovery-kubernetes"

    def __init__(
        self,
        sink: NodeSink,
        state: DiscoveryState,
        address_types: list[str],
        label_selector: str,
        kubeconfig: Path | None,
        api: Api | None = None,
    ) -> None:
        self.sink = sink
        self.state = state
        self.address_types = address_types
        self.label_selector = label_selector
        self._api = api or kubernetes_api(kubeconfig)
        self._stopped = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stream: Stream | None = None  # the open watch, closed by stop()

    def stop(self) -> None:
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.close()  # unblocks the thread's read

    async def run(self) -> None:
        """List and watch in a thread of its own until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._stopped.clear()
        await in_thread(self._run, self.stop)

    # -- worker thread --------------------------------------------------------

    def _to_loop(self, func: Callable[..., None], *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(func, *args)

    def _as_peer(self, node: dict[str, Any] | None) -> NodeAddress | None:
        return node_addresses(node, self.address_types) if node is not None else None

    def _publish(self, nodes: Nodes) -> None:
        snapshot = [n for n in nodes.values() if n]
        self._to_loop(self.sink.update, snapshot)
        self._to_loop(self.state.succeeded)

    def _run(self) -> None:
        """List once, then watch from the last resource version seen, across errors too
        (as client-go's reflector does): after an API server restart thousands of agents
        resume their watches instead of all listing every node at once. Relist only when
        the version is gone (410)."""
        backoff = BACKOFF_FIRST
        nodes: Nodes | None = None  # the last list, kept current by events
        version = ""
        while not self._stopped.is_set():
            try:
                if nodes is None:
                    nodes, version = self._list()
                    self._publish(nodes)
                    backoff = BACKOFF_FIRST
                version = self._watch(nodes, version)
                backoff = BACKOFF_FIRST
            except Exception as exc:  # any API or network error: back off, retry
                if self._stopped.is_set():
                    break  # stop() closed the watch under us
                if isinstance(exc, ResourceExpired) or getattr(exc, "status", None) == 410:
                    log.info("node watch expired (410 Gone), relisting")
                    nodes = None
                    continue
                self._to_loop(self.state.failed, describe_api_error(exc))
                self._stopped.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _query(self, **extra: str) -> dict[str, str]:
        selector = {"labelSelector": self.label_selector} if self.label_selector else {}
        return selector | extra

    def _list(self) -> tuple[Nodes, str]:
        """Every Node, a page of LIST_PAGE at a time (one snapshot: the continue token
        keeps the first page's version), kept only as what makes it a peer: a 5000-node
        list in one piece is tens of MB of JSON and objects at once."""
        nodes: Nodes = {}
        query = self._query(limit=str(LIST_PAGE))
        while True:
            body = self._api.get_json("/api/v1/nodes", query, 30)
            for item in body.get("items") or []:
                nodes[item["metadata"]["name"]] = self._as_peer(item)
            metadata = body.get("metadata") or {}
            if not metadata.get("continue"):
                return nodes, str(metadata.get("resourceVersion", ""))
            query = self._query(limit=str(LIST_PAGE), **{"continue": metadata["continue"]})

    def _watch(self, nodes: Nodes, version: str) -> str:
        """One watch request; applies events to ``nodes``; returns the version to resume from."""
        query = self._query(
            watch="true",
            allowWatchBookmarks="true",
            resourceVersion=version,
            timeoutSeconds=str(WATCH_SECONDS),
        )
        stream = self._api.stream("/api/v1/nodes", query, 10, WATCH_SECONDS + 30)
        self._to_loop(self.state.succeeded)  # the API server answers again
        self._stream = stream
        try:
            for line in stream.lines():
                if self._stopped.is_set():
                    break
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise ResourceExpired()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                name = obj.get("metadata", {}).get("name")
                if kind == "BOOKMARK" or not name:
                    self._to_loop(self.state.succeeded)
                    continue
                before = nodes.get(name)
                if kind == "DELETED":
                    nodes.pop(name, None)
                else:
                    nodes[name] = self._as_peer(obj)
                if nodes.get(name) != before:
                    self._publish(nodes)  # most MODIFIED events are status churn: no change
                else:
                    self._to_loop(self.state.succeeded)
        finally:
            self._stream = None
            stream.close()
        return version


def describe_api_error(exc: Exception) -> str:
    """One line for an API or network error (no kubernetes client dump)."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status:
        return f"API error {status}: {reason}"
    return f"{type(exc).__name__}: {exc}"


def kubernetes_api(kubeconfig: Path | None) -> Api:
    """The API server from the in-cluster ServiceAccount or a kubeconfig."""
    try:
        return connect(kubeconfig)
    except KubeconfigError as exc:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        if kubeconfig is None and in_cluster():
            where = "the in-cluster ServiceAccount"
        raise ConfigError(
            f"invalid setting 'kubeconfig' (--kubeconfig): cannot load {where}: {exc}"
        ) from None
