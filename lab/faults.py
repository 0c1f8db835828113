"""Faults the lab can inject, and the nftables rules each one becomes.

The hub's bridge has one nftables table, ``npelab`` (bridge family, forward
hook): the "network" between the nodes. Whenever the faults change, the lab
rewrites the whole table from the list of active faults, so applying and
clearing are the same idempotent operation. Latency is
not an nftables rule: the node's kernel echo replies are turned off and the
delayed responder answers instead (see Lab).

Loss shapes, chosen so that each points at one culprit:

- ``inbound`` loss at a node drops echo requests *arriving* at it: only the
  pairs towards that node lose packets (the node or its downlink is at fault);
- ``outbound`` loss drops the echo requests the node *sends*: only the pairs
  from that node lose packets (the node or its uplink is at fault);
- a ``link`` drops echo requests from one node to another (one or both ways);
- ``isolate`` drops all ICMP in and out of the node (its link is down for ICMP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

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
