"""Faults the lab can inject, and the nftables rules each one becomes.

Every node namespace has one nftables table, ``npelab``; whenever the faults
change, the lab rewrites the whole table of each node from the list of active
faults, so applying and clearing are the same idempotent operation. Latency is
not an nftables rule: the node's kernel echo replies are turned off and the
delayed responder answers instead (see Lab).

Loss shapes, chosen so that each points at one culprit:

- ``inbound`` loss at a node drops echo requests *arriving* at it: only the
  pairs towards that node lose packets (the node or its downlink is at fault);
- ``outbound`` loss drops the echo requests the node *sends*: only the pairs
  from that node lose packets (the node or its uplink is at fault);
- a ``link`` drops echo requests from one node to another (one or both ways);
- ``isolate`` drops all ICMP in and out of the node.
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


def _echo_rules(percent: float, match: str = "") -> list[str]:
    """Drop rules for IPv4 and IPv6 echo requests (one rule per family)."""
    prefix = f"{match} " if match else ""
    return [f"{prefix}{echo} {_drop(percent)}" for echo in ECHO_REQUESTS]


def node_ruleset(node: str, faults: list[Fault], addresses: dict[str, list[str]]) -> str:
    """The complete ``npelab`` table for one node (recreated from scratch)."""
    inbound: list[str] = []
    outbound: list[str] = []
    for fault in faults:
        if fault.kind == "isolate" and fault.node == node:
            inbound.append("meta l4proto { icmp, ipv6-icmp } drop")
            outbound.append("meta l4proto { icmp, ipv6-icmp } drop")
        elif fault.kind == "inbound" and fault.node == node:
            inbound += _echo_rules(fault.percent)
        elif fault.kind == "outbound" and fault.node == node:
            outbound += _echo_rules(fault.percent)
        elif fault.kind == "link":
            directions = [(fault.node, fault.peer)]
            if fault.both_ways:
                directions.append((fault.peer, fault.node))
            for source, destination in directions:
                if source != node:
                    continue
                for address in addresses[destination]:
                    family = "ip6" if ":" in address else "ip"
                    echo = ECHO_REQUESTS[family == "ip6"]
                    outbound.append(f"{family} daddr {address} {echo} {_drop(fault.percent)}")
    lines = [
        f"table inet {TABLE} {{",
        "chain input {",
        "type filter hook input priority 0; policy accept;",
        *inbound,
        "}",
        "chain output {",
        "type filter hook output priority 0; policy accept;",
        *outbound,
        "}",
        "}",
    ]
    return "\n".join(lines) + "\n"
