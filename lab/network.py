"""The lab's network: a hub namespace with a bridge, one namespace per node on it.

    <prefix>-hub     bridge br0 198.18.0.254/24 (fd00:198:18::fe/64); Prometheus,
                     node-exporter and the API server's forwarder listen here
    <prefix>-node-i  eth0 198.18.0.i/24 (fd00:198:18::i/64), one agent; its veth's
                     other end is the hub's bridge port v<i>

Nothing routes out of it: every address is in 198.18.0.0/15 or fd00:198:18::/48
and the namespaces have no default route. The hub sees every node, so whatever
the lab reads over HTTP it reads from there.
"""

from __future__ import annotations

from .netns import Namespace, cleanup, link, namespaces, sh
from .process import kill_all

HUB_V4, HUB_V6 = "198.18.0.254", "fd00:198:18::fe"
PREFIX = "npl-"  # every lab namespace's name starts so: npl-<lab>-hub, npl-<lab>-node-i


def node_name(index: int) -> str:
    return f"node-{index}"


def node_index(node: str) -> int:
    """``node-i``'s *i*: its place on the bridge and in its addresses."""
    return int(node.rsplit("-", 1)[1])


def bridge_port(node: str) -> str:
    """The hub's end of the node's veth, ``v<i>``: the bridge port every frame to or
    from the node crosses, which is where the faults act."""
    return f"v{node_index(node)}"


def node_addresses(node: str, dual_stack: bool) -> list[str]:
    """``node-i``'s addresses: 198.18.0.i, and fd00:198:18::i in a dual-stack lab."""
    index = node_index(node)
    return [f"198.18.0.{index}", *([f"fd00:198:18::{index:x}"] if dual_stack else [])]


def labs_with_namespaces() -> set[str]:
    """Names of the labs whose hub namespace exists, up or half-gone."""
    return {
        name[len(PREFIX) :].rsplit("-", 1)[0]
        for name in namespaces(PREFIX)
        if name.endswith("-hub")
    }


class Network:
    """A lab's namespaces, by name prefix; handles on them work from any process."""

    def __init__(self, name: str) -> None:
        self.prefix = f"{PREFIX}{name}"

    @property
    def hub(self) -> Namespace:
        return Namespace.existing(f"{self.prefix}-hub")

    def namespace(self, node: str) -> Namespace:
        return Namespace.existing(f"{self.prefix}-{node}")

    def build(self, nodes: list[str], dual_stack: bool) -> None:
        """The hub with its bridge, and each node on a veth to it."""
        hub = Namespace(f"{self.prefix}-hub")
        hub.ip("link", "add", "br0", "type", "bridge")
        hub.ip("link", "set", "br0", "up")
        hub.ip("addr", "add", f"{HUB_V4}/24", "dev", "br0")
        if dual_stack:
            hub.ip("-6", "addr", "add", f"{HUB_V6}/64", "dev", "br0", "nodad")
        for node in nodes:
            ns = Namespace(f"{self.prefix}-{node}")
            link(ns, "eth0", hub, bridge_port(node))
            hub.ip("link", "set", bridge_port(node), "master", "br0")
            for address in node_addresses(node, dual_stack):
                if ":" in address:
                    ns.ip("-6", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
                else:
                    ns.ip("addr", "add", f"{address}/24", "dev", "eth0")
            ns.sysctl("net.ipv4.ping_group_range", "0 2147483647")

    def remove(self, pids: set[int]) -> None:
        """Stop ``pids`` and whatever else runs in the namespaces (recorded or not),
        then delete the namespaces. Idempotent."""
        made = namespaces(self.prefix + "-")
        for name in made:
            pids = pids | {int(p) for p in sh(["ip", "netns", "pids", name], check=False).split()}
        kill_all(pids)
        cleanup(self.prefix + "-")

    def http_get(self, url: str) -> tuple[int, str]:
        """GET from inside the hub namespace (where every lab address is reachable)."""
        out = self.hub.run("curl", "-s", "-m", "5", "-w", "\n%{http_code}", url, check=False)
        body, _, code = out.rpartition("\n")
        return int(code or 0), body
