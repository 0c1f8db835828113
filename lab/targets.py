"""A two-namespace test network: an agent host and a host answering for many addresses.

``agent`` (198.18.0.1, fd00:198:18::1) reaches ``hosts`` over a veth. ``hosts``
answers for every address in 198.18.128.0/17 and fd00:198:18:1::/64 through
local routes (AnyIP), so a test or benchmark can have thousands of peers
without creating thousands of interfaces. The agent namespace has no default
route: nothing it sends can leave the machine.
"""

from __future__ import annotations

import ipaddress

from .netns import Namespace, cleanup, link, run_prefix

V4_TARGETS = ipaddress.ip_network("198.18.128.0/17")
V6_TARGETS = ipaddress.ip_network("fd00:198:18:1::/64")
AGENT_V4 = "198.18.0.1"
HOSTS_V4 = "198.18.0.2"
AGENT_V6 = "fd00:198:18::1"
HOSTS_V6 = "fd00:198:18::2"


def target_v4(index: int) -> str:
    """The index-th answering IPv4 address (index from 1)."""
    return str(V4_TARGETS.network_address + index)


def target_v6(index: int) -> str:
    return str(V6_TARGETS.network_address + index)


class TargetNetwork:
    """The two namespaces; use as a context manager so they are always removed."""

    def __init__(self, tag: str = "npe") -> None:
        self.prefix = run_prefix(tag)
        cleanup(self.prefix)
        try:
            self.agent = Namespace(f"{self.prefix}-agent")
            self.hosts = Namespace(f"{self.prefix}-hosts")
            link(self.agent, "a0", self.hosts, "h0")
            self.agent.ip("addr", "add", f"{AGENT_V4}/24", "dev", "a0")
            self.hosts.ip("addr", "add", f"{HOSTS_V4}/24", "dev", "h0")
            self.agent.ip("-6", "addr", "add", f"{AGENT_V6}/64", "dev", "a0", "nodad")
            self.hosts.ip("-6", "addr", "add", f"{HOSTS_V6}/64", "dev", "h0", "nodad")
            self.agent.ip("route", "add", str(V4_TARGETS), "via", HOSTS_V4)
            self.agent.ip("-6", "route", "add", str(V6_TARGETS), "via", HOSTS_V6)
            self.hosts.ip("route", "add", "local", str(V4_TARGETS), "dev", "lo")
            self.hosts.ip("-6", "route", "add", "local", str(V6_TARGETS), "dev", "lo")
            # Everyone may open unprivileged ping sockets here unless a test says otherwise.
            self.agent.sysctl("net.ipv4.ping_group_range", "0 2147483647")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        cleanup(self.prefix)

    def __enter__(self) -> TargetNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
