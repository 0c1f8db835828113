"""Faults the lab can inject, and what each one becomes in the kernel.

Real faults do not pick packets by type: a bad NIC, cable, switch port or firewall
rule loses *everything* crossing it in that direction — ARP and neighbour
discovery, TCP, UDP, and the replies to the node's own probes as much as the
probes sent to it. The lab's loss faults work the same way: they match frames by
the hub bridge port they come in on or go out of (node *i* is on port ``v<i>``,
lab/network.py), whatever they carry.

- ``node-in``  PCT % of every frame *arriving at* a node (sent out of its port);
- ``node-out`` PCT % of every frame *leaving* a node (received on its port);
- ``link``     PCT % of every frame A → B (and B → A unless one way);
- ``isolate``  everything in and out of a node (``blip``: isolated for a while);
- any of the four above limited to one protocol (``--protocol udp``, or ``icmp``:
  ICMP echo only): what a firewall, network policy or rate limit on it does;
- ``partition`` every path between two groups of nodes, both ways;
- ``size``     IP packets over a size, in and out of a node or on one link: an MTU
  black hole (small pings pass, big ones vanish);
- ``latency``  not a rule: the node's kernel echo replies are turned off and the
  delayed responder answers instead;
- ``starve``   not a rule: a CPU quota on the node agent's cgroup (lab/cpu.py).

With ICMP echo alone, loss into a node and loss out of it look the same from the
outside: the echo crosses both directions, so either fault loses both the node's
row (its probes or their replies) and its column (probes to it or its replies).

The hub's bridge has one nftables table, ``npelab`` (bridge family, forward hook),
which the lab rewrites whole from the list of active faults whenever it changes:
applying and clearing are the same idempotent operation, and any combination of
faults holds at once. :class:`Faults` applies them to a running lab; a
:class:`Timer` process switches one by the clock (``--flap``, ``blip``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from .network import bridge_port
from .process import alive, kill_all
from .responder import ensure_responder

if TYPE_CHECKING:  # lab.state imports Fault from here
    from .cpu import CpuCgroups
    from .network import Network
    from .state import LabConfig, LabState, Workdir

TABLE = "npelab"
FaultKind = Literal[
    "node-in", "node-out", "link", "isolate", "partition", "size", "latency", "starve"
]
LOSS_KINDS = ("node-in", "node-out", "link")  # the kinds with a loss percentage
Protocol = Literal["", "udp", "icmp"]
PROTOCOL_KINDS = (*LOSS_KINDS, "isolate")  # the kinds that can be one protocol only
# nftables' matches per protocol. "icmp" is ICMP echo (v4 and v6) only, as a "no
# ping" policy or an echo rate limit: neighbour discovery and errors still pass.
PROTOCOL_MATCH = {
    "": ("",),
    "udp": ("meta l4proto udp ",),
    "icmp": (
        "icmp type { echo-request, echo-reply } ",
        "icmpv6 type { echo-request, echo-reply } ",
    ),
}
IPV6_HEADER = 40  # ip6 length is the payload's: the packet is 40 bytes more


@dataclass(frozen=True)
class Fault:
    """One fault; which fields count depends on ``kind``."""

    kind: FaultKind
    node: str = ""  # every kind but partition; link and size: one end
    percent: float = 100.0  # node-in, node-out, link: loss %; starve: % of one CPU
    peer: str = ""  # link: the other end; size: the other end, if only on one link
    both_ways: bool = True  # link, size: also the way back
    delay_ms: float = 0.0  # latency
    max_bytes: int = 0  # size: the largest IP packet that passes
    group_a: tuple[str, ...] = ()  # partition (node names once applied)
    group_b: tuple[str, ...] = ()
    protocol: Protocol = ""  # node-in, node-out, link, isolate: only this protocol

    def nodes(self) -> set[str]:
        """Every node the fault touches: `clear NODE` removes it."""
        return {n for n in (self.node, self.peer, *self.group_a, *self.group_b) if n}

    def describe(self) -> str:
        """What the fault does, in plain words."""
        packets = "every packet" if self.percent >= 100 else f"{self.percent:g}% of packets"
        if self.protocol:
            packets = packets.replace("packet", f"{self.protocol.upper()} packet")
        if self.both_ways:
            path = f"between {self.node} and {self.peer}"
        else:
            path = f"from {self.node} to {self.peer}"
        if self.kind == "node-in":
            return f"{packets} arriving at {self.node} dropped"
        if self.kind == "node-out":
            return f"{packets} leaving {self.node} dropped"
        if self.kind == "link":
            return f"{packets} {path} dropped"
        if self.kind == "isolate":
            return f"{self.node} isolated: {packets} in and out dropped"
        if self.kind == "partition":
            return (
                f"partition: no packet between {','.join(self.group_a)} "
                f"and {','.join(self.group_b)}"
            )
        if self.kind == "size":
            if not self.peer:
                path = f"{'in and out of' if self.both_ways else 'leaving'} {self.node}"
            return f"IP packets over {self.max_bytes} bytes dropped {path} (MTU black hole)"
        if self.kind == "latency":
            return f"{self.node} answers pings {self.delay_ms:g} ms late"
        return f"{self.node}'s agent starved: {self.percent:g}% of one CPU"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        data = dict(data)
        for group in ("group_a", "group_b"):
            data[group] = tuple(data.get(group, ()))
        return cls(**data)


@dataclass(frozen=True)
class Timer:
    """A lab process that switches one fault by the clock: on and off every
    ``seconds`` (a flap), or on once for ``seconds``, then cleared (``once``: a blip)."""

    fault: Fault
    seconds: float
    once: bool = False

    def describe(self) -> str:
        if self.once:
            return f"{self.fault.describe()}, cleared {self.seconds:g}s after it started"
        return f"{self.fault.describe()}, flapping every {self.seconds:g}s"

    def to_json(self) -> dict[str, Any]:
        return {"fault": self.fault.to_json(), "seconds": self.seconds, "once": self.once}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Timer:
        return cls(Fault.from_json(data["fault"]), float(data["seconds"]), bool(data["once"]))


def check_fault(fault: Fault, config: LabConfig) -> Fault:
    """The fault as this lab applies it: zone names in a partition's groups replaced
    by their nodes, every node checked (a LabError says what is wrong)."""
    if fault.kind == "partition":
        group_a, group_b = config.partition(fault.group_a, fault.group_b)
        fault = dataclasses.replace(fault, group_a=group_a, group_b=group_b)
    for node in sorted(fault.nodes()):
        config.check_node(node)
    return fault


# -- the nftables table -----------------------------------------------------------

Direction = tuple[tuple[str, ...], tuple[str, ...]]  # from these nodes, to these; () = any


def directions(fault: Fault) -> list[Direction]:
    """Where the fault acts, as (from, to) pairs of node groups: the bridge's rules
    here, the sizing benchmark's simulated network (benchmarks/prom_sizing.py)."""
    node, peer = (fault.node,), (fault.peer,)
    if fault.kind == "node-in":
        return [((), node)]
    if fault.kind == "node-out":
        return [(node, ())]
    if fault.kind == "isolate":
        return [(node, ()), ((), node)]
    if fault.kind == "partition":
        return [(fault.group_a, fault.group_b), (fault.group_b, fault.group_a)]
    if fault.kind in ("link", "size") and fault.peer:
        return [(node, peer), *([(peer, node)] if fault.both_ways else [])]
    if fault.kind == "size":
        return [(node, ()), *([((), node)] if fault.both_ways else [])]
    return []  # latency, starve: not on the bridge


def _ports(nodes: Iterable[str]) -> str:
    names = [f'"{bridge_port(n)}"' for n in nodes]
    return names[0] if len(names) == 1 else "{ " + ", ".join(names) + " }"


def _drop(percent: float) -> str:
    if percent >= 100:
        return "drop"
    # numgen draws 0..9999 per packet: loss in steps of 0.01 %
    return f"numgen random mod 10000 < {round(percent * 100)} drop"


def fault_rules(fault: Fault) -> list[str]:
    """The fault's rules for the bridge's forward chain (empty: not a network fault).

    ``iifname`` is the port a frame came in on (the node that sent it), ``oifname``
    the port it leaves by (the node it is going to); flooded frames (ARP, neighbour
    solicitations) pass the forward hook once per port they go out of."""
    rules = []
    for source, destination in directions(fault):
        where = " ".join(
            [*([f"iifname {_ports(source)}"] if source else []),
             *([f"oifname {_ports(destination)}"] if destination else [])]
        )  # fmt: skip
        if fault.kind == "size":
            rules.append(f"{where} ip length > {fault.max_bytes} drop")
            rules.append(f"{where} ip6 length > {max(fault.max_bytes - IPV6_HEADER, 0)} drop")
        else:
            drop = _drop(fault.percent) if fault.kind in LOSS_KINDS else "drop"
            rules += [f"{where} {match}{drop}" for match in PROTOCOL_MATCH[fault.protocol]]
    return rules


def network_ruleset(faults: list[Fault]) -> str:
    """The complete ``npelab`` table of the hub's bridge (recreated from scratch).

    Loss is injected in the network, on the bridge between the nodes, not in the
    nodes' own firewalls: a node's dropped packet then simply gets no answer, as on
    a lossy link, instead of failing its sendto with EPERM. Each rule draws its own
    random number, so two partial faults on one path combine as independent losses.
    """
    lines = [
        f"table bridge {TABLE} {{",
        "chain forward {",
        "type filter hook forward priority 0; policy accept;",
        *[rule for fault in faults for rule in fault_rules(fault)],
        "}",
        "}",
    ]
    return "\n".join(lines) + "\n"


# -- applying them to a running lab -------------------------------------------------


@dataclass(frozen=True)
class Faults:
    """The active faults of one lab: applied, cleared and switched under its lock."""

    workdir: Workdir
    network: Network
    cpu: CpuCgroups

    def apply(self, fault: Fault) -> Fault:
        """Add a fault (a no-op if it is active); returns it as applied (zones resolved)."""
        with self.workdir.changing() as state:
            fault = self._checked(fault, state.config)
            if fault not in state.faults:
                state.faults.append(fault)
            self._sync(state)
        return fault

    def clear(self, fault: Fault | None = None, node: str | None = None) -> None:
        """Remove one fault, every fault touching a node, or (neither given) all
        faults; the last two also stop the timers (flaps, blips) of those faults."""
        with self.workdir.changing() as state:
            if fault is None:
                stopping = {
                    pid
                    for pid, timer in state.timers.items()
                    if node is None or node in timer.fault.nodes()
                }
                kill_all(stopping)
                for pid in stopping:
                    del state.timers[pid]
            if fault is not None:
                state.faults = [f for f in state.faults if f != fault]
            elif node is not None:
                state.faults = [f for f in state.faults if node not in f.nodes()]
            else:
                state.faults = []
            self._sync(state)

    def flap(self, fault: Fault, period: float) -> Fault:
        """Toggle a fault on and off every ``period`` seconds until ``clear()``."""
        return self._start_timer(Timer(fault, period))

    def pulse(self, fault: Fault, seconds: float) -> Fault:
        """Apply a fault now and clear it after ``seconds`` (``blip``), unless
        ``clear()`` comes first."""
        return self._start_timer(Timer(fault, seconds, once=True))

    def _start_timer(self, timer: Timer) -> Fault:
        """A process of its own (``node-ping-lab timer``), so it outlives this call."""
        with self.workdir.changing() as state:
            timer = dataclasses.replace(timer, fault=self._checked(timer.fault, state.config))
            if timer.once:  # in force when this returns; the timer only ends it
                if timer.fault not in state.faults:
                    state.faults.append(timer.fault)
                self._sync(state)
            args = [sys.executable, "-m", "lab.cli", "--name", self.workdir.name, "timer",
                    json.dumps(timer.to_json())]  # fmt: skip
            state.timers[self.workdir.spawn(args, "timer.log")] = timer
        return timer.fault

    def run_timer(self, timer: Timer) -> None:
        """The body of a timer process: returns when its work is done, or as soon as
        the lab no longer lists it (cleared, or the lab replaced)."""
        if timer.once:
            time.sleep(timer.seconds)
            self._switch(timer, on=False, done=True)
            return
        while self._switch(timer, on=True):
            time.sleep(timer.seconds)
            if not self._switch(timer, on=False):
                return
            time.sleep(timer.seconds)

    def _switch(self, timer: Timer, on: bool, done: bool = False) -> bool:
        """Turn the timer's fault on or off; False (and nothing changed) if this
        process is no longer one of the lab's timers."""
        with self.workdir.changing() as state:
            if os.getpid() not in state.timers:
                return False
            state.faults = [f for f in state.faults if f != timer.fault]
            if on:
                state.faults.append(timer.fault)
            if done:
                del state.timers[os.getpid()]
            self._sync(state)
        return True

    def _checked(self, fault: Fault, config: LabConfig) -> Fault:
        fault = check_fault(fault, config)
        if fault.kind == "starve":
            self.cpu.check()  # here, before a timer process is started for it
        if fault.kind == "latency":
            ensure_responder()  # built now, or ResponderUnavailable says why
        return fault

    def _sync(self, state: LabState) -> None:
        """The hub's table rewritten from ``state.faults``; a delayed responder running
        in exactly the nodes with a latency fault; a CPU quota on exactly the agents
        with a starve fault (the tightest, if several)."""
        config = state.config
        self.network.hub.nft(
            f"table bridge {TABLE} {{}}\ndelete table bridge {TABLE}\n"
            + network_ruleset(state.faults)
        )
        for node in config.node_names():
            shares = [f.percent for f in state.faults if f.kind == "starve" and f.node == node]
            self.cpu.limit(node, min(shares) if shares else None)
        # Kernel echo replies off (both families in a dual-stack lab) while the
        # delayed responder answers instead. A node that turns slow never stops
        # answering: the responder listens before the kernel stops, and the kernel
        # answers again before the responder goes (a duplicate reply is ignored).
        echo_off = [("net.ipv4.icmp_echo_ignore_all", "1")]
        if config.dual_stack:
            echo_off.append(("net.ipv6.icmp.echo_ignore_all", "1"))
        for node in config.node_names():
            ns = self.network.namespace(node)
            delays = [f.delay_ms for f in state.faults if f.kind == "latency" and f.node == node]
            running = state.responders.get(node)
            if running is not None and not delays:
                for key, _ in echo_off:
                    ns.sysctl(key, "0")
                kill_all({running})
                del state.responders[node]
            elif delays and running is None:
                command = [str(ensure_responder()), "-delay", f"{max(delays)}ms"]
                if config.dual_stack:
                    command.append("-ipv6")
                pid = self.workdir.spawn(ns.cmd(*command), f"responder-{node}.log")
                state.responders[node] = pid
                _wait_listening(pid, command[0], sockets=2 if config.dual_stack else 1)
                for key, off in echo_off:
                    ns.sysctl(key, off)


def _wait_listening(pid: int, binary: str, sockets: int, timeout: float = 10) -> None:
    """Until the responder ``pid`` (running ``binary``) holds its raw sockets (it reads
    requests from then on, whether the kernel answers them or not); a LabError if it
    exits or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # the responder's own descriptors: `ip netns exec` has exec'd it
            exe = os.readlink(f"/proc/{pid}/exe")
            fds = os.listdir(f"/proc/{pid}/fd")
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
        except OSError:
            exe, links = "", []  # not started yet, or a descriptor closed meanwhile
        if exe == binary and sum(x.startswith("socket:") for x in links) >= sockets:
            return
        if not alive(pid):
            break
        time.sleep(0.02)
    from .state import LabError  # lab.state imports this module

    raise LabError(f"the delayed responder (pid {pid}) is not listening; see its log")
