"""Faults the lab can inject, and the nftables rules each one becomes.

The hub's bridge has one nftables table, ``npelab`` (bridge family, forward
hook): the "network" between the nodes. Whenever the faults change, the lab
rewrites the whole table from the list of active faults, so applying and
clearing are the same idempotent operation. Latency is
not an nftables rule: the node's kernel echo replies are turned off and the
delayed responder answers instead. :class:`Faults` applies them to a running lab.

Loss shapes, chosen so that each points at one culprit:

- ``inbound`` loss at a node drops echo requests *arriving* at it: only the
  pairs towards that node lose packets (the node or its downlink is at fault);
- ``outbound`` loss drops the echo requests the node *sends*: only the pairs
  from that node lose packets (the node or its uplink is at fault);
- a ``link`` drops echo requests from one node to another (one or both ways);
- ``isolate`` drops all ICMP in and out of the node (its link is down for ICMP).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from .process import kill_all
from .responder import ensure_responder

if TYPE_CHECKING:  # lab.state imports Fault from here
    from .network import Network
    from .state import LabState, Workdir

TABLE = "npelab"
FaultKind = Literal["isolate", "inbound", "outbound", "link", "latency"]


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    node: str
    percent: float = 100.0  # loss kinds
    peer: str = ""  # link: the other end
    both_ways: bool = True  # link
    delay_ms: float = 0.0  # latency

    def describe(self) -> str:
        if self.kind == "isolate":
            return f"{self.node} isolated"
        if self.kind == "latency":
            return f"{self.delay_ms:g} ms latency at {self.node}"
        if self.kind == "link":
            arrow = "<->" if self.both_ways else "->"
            return f"{self.percent:g}% loss {self.node} {arrow} {self.peer}"
        return f"{self.percent:g}% {self.kind} loss at {self.node}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(**data)


def _drop(percent: float) -> str:
    if percent >= 100:
        return "drop"
    # numgen draws 0..9999 per packet: loss in steps of 0.01 %
    return f"numgen random mod 10000 < {round(percent * 100)} drop"


ECHO_REQUESTS = ("icmp type echo-request", "icmpv6 type echo-request")


def network_ruleset(faults: list[Fault], addresses: dict[str, list[str]]) -> str:
    """The complete ``npelab`` table of the hub's bridge (recreated from scratch).

    Loss is injected in the network, on the bridge between the nodes, not in the
    nodes' own firewalls: a node's dropped request then simply gets no reply, as
    on a lossy link, instead of failing its sendto with EPERM.
    """
    rules: list[str] = []

    def drop(percent: float, source: str | None = None, destination: str | None = None) -> None:
        for family, echo in (("ip", "icmp type echo-request"), ("ip6", "icmpv6 type echo-request")):
            matches = []
            for direction, node in (("saddr", source), ("daddr", destination)):
                if node is not None:
                    wanted = [a for a in addresses[node] if (":" in a) == (family == "ip6")]
                    if not wanted:
                        break
                    matches.append(f"{family} {direction} {{ {', '.join(wanted)} }}")
            else:
                rules.append(" ".join([*matches, echo, _drop(percent)]))

    for fault in faults:
        if fault.kind == "isolate":
            for address in addresses[fault.node]:
                family = "ip6" if ":" in address else "ip"
                protocol = "ipv6-icmp" if family == "ip6" else "icmp"
                rules.append(f"{family} saddr {address} meta l4proto {protocol} drop")
                rules.append(f"{family} daddr {address} meta l4proto {protocol} drop")
        elif fault.kind == "inbound":
            drop(fault.percent, destination=fault.node)
        elif fault.kind == "outbound":
            drop(fault.percent, source=fault.node)
        elif fault.kind == "link":
            drop(fault.percent, source=fault.node, destination=fault.peer)
            if fault.both_ways:
                drop(fault.percent, source=fault.peer, destination=fault.node)
    lines = [
        f"table bridge {TABLE} {{",
        "chain forward {",
        "type filter hook forward priority 0; policy accept;",
        *rules,
        "}",
        "}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Faults:
    """The active faults of one lab: applied, cleared and flapped under its lock."""

    workdir: Workdir
    network: Network

    def apply(self, fault: Fault) -> None:
        with self.workdir.changing() as state:
            state.config.check_node(fault.node)
            if fault.peer:
                state.config.check_node(fault.peer)
            if fault not in state.faults:
                state.faults.append(fault)
            self._sync(state)

    def clear(self, fault: Fault | None = None, node: str | None = None) -> None:
        """Remove one fault, every fault of a node, or (neither given) all faults; the
        last two also stop the flappers of those faults."""
        with self.workdir.changing() as state:
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
            self._sync(state)

    def flap(self, fault: Fault, period: float) -> None:
        """Toggle a fault on and off every ``period`` seconds, until ``clear()``: a
        process of its own (``node-ping-lab flapper``), so it outlives this call."""
        with self.workdir.changing() as state:
            state.config.check_node(fault.node)
            args = [sys.executable, "-m", "lab.cli", "--name", self.workdir.name, "flapper",
                    json.dumps(fault.to_json()), str(period)]  # fmt: skip
            pid = self.workdir.spawn(args, "flapper.log")
            state.flappers[pid] = [fault.node, *([fault.peer] if fault.peer else [])]

    def _sync(self, state: LabState) -> None:
        """The hub's table rewritten from ``state.faults``; a delayed responder running
        in exactly the nodes with a latency fault."""
        config = state.config
        addresses = {node: config.addresses(node) for node in config.node_names()}
        self.network.hub.nft(
            f"table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n"
            + network_ruleset(state.faults, addresses)
        )
        # Kernel echo replies off (both families in a dual-stack lab) while the
        # delayed responder answers instead.
        echo_off = [("net.ipv4.icmp_echo_ignore_all", "1")]
        if config.dual_stack:
            echo_off.append(("net.ipv6.icmp.echo_ignore_all", "1"))
        for node in config.node_names():
            ns = self.network.namespace(node)
            delays = [f.delay_ms for f in state.faults if f.kind == "latency" and f.node == node]
            running = state.responders.get(node)
            if running is not None and not delays:
                kill_all({running})
                del state.responders[node]
                for key, _ in echo_off:
                    ns.sysctl(key, "0")
            elif delays and running is None:
                for key, off in echo_off:
                    ns.sysctl(key, off)
                command = [str(ensure_responder()), "-delay", f"{max(delays)}ms"]
                if config.dual_stack:
                    command.append("-ipv6")
                state.responders[node] = self.workdir.spawn(
                    ns.cmd(*command), f"responder-{node}.log"
                )
