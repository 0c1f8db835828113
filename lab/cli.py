"""``node-ping-lab``: bring up a simulated cluster, break it, look at it.

    node-ping-lab up --nodes 6                  # namespaces, agents, Prometheus, node-exporter
    node-ping-lab fault inbound node-3 30       # 30 % of echo requests to node-3 dropped
    node-ping-lab fault link node-1 node-2      # node-1 <-> node-2 cut
    node-ping-lab fault latency node-4 20       # node-4 answers 20 ms late
    node-ping-lab fault isolate node-5 --flap 10
    node-ping-lab matrix                        # source x destination loss, from Prometheus
    node-ping-lab clear                         # all faults off
    node-ping-lab down                          # everything removed

Needs root (network namespaces, nftables). ``--name`` runs several labs side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, NoReturn

from exporter.diagnose import DiagnoseError, Prometheus, diagnose, render_text

from .cluster import Lab, all_labs
from .faults import Fault
from .netns import can_create_namespaces
from .prometheus import PROMETHEUS
from .state import LabConfig, LabError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        print(f"node-ping-lab: {message}", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="node-ping-lab",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--name", default="lab", help="lab name (default: lab)")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    up = commands.add_parser("up", help="create the lab (replaces one of the same name)")
    up.add_argument("--nodes", type=int, default=5)
    up.add_argument("--dual-stack", action="store_true", help="IPv6 addresses too")
    up.add_argument("--output", choices=["http", "textfile", "both"], default="both")
    up.add_argument("--interval", type=float, default=0.05, help="agents' probe interval")
    up.add_argument("--no-prometheus", action="store_true")
    up.add_argument(
        "--kubernetes",
        metavar="CONTROL_PLANE",
        nargs="?",
        const="default",
        default="",
        help="discover peers from Node objects in a control plane started with "
        "`node-ping-controlplane up` (its name; default: default)",
    )
    up.add_argument(
        "--fast-alerts",
        action="store_true",
        help="load the alert rules with 30 s windows and 20 s `for`",
    )
    down = commands.add_parser("down", help="remove everything the lab made")
    down.add_argument("--all", action="store_true", help="every lab on this machine")
    commands.add_parser("status")

    fault = commands.add_parser("fault", help="inject a fault")
    fault.add_argument("kind", choices=["isolate", "inbound", "outbound", "link", "latency"])
    fault.add_argument("node")
    fault.add_argument(
        "value",
        nargs="?",
        help="loss %% (inbound, outbound), delay ms (latency) or the other node (link)",
    )
    fault.add_argument("--percent", type=float, default=100.0, help="link loss %% (default 100)")
    fault.add_argument("--one-way", action="store_true", help="link: only node -> other")
    fault.add_argument(
        "--flap", type=float, metavar="SECONDS", help="toggle the fault on and off every SECONDS"
    )
    clear = commands.add_parser("clear", help="remove faults (all, or one node's)")
    clear.add_argument("node", nargs="?")

    peers = commands.add_parser(
        "peers",
        help="take a node out of / back into the peers file (kubernetes mode: delete / "
        "create its Node object)",
    )
    peers.add_argument("action", choices=["remove", "add"])
    peers.add_argument("node")
    agent = commands.add_parser("agent", help="stop (SIGKILL), start or restart an agent")
    agent.add_argument("action", choices=["stop", "start", "restart"])
    agent.add_argument("node")

    query = commands.add_parser("query", help="a PromQL instant query")
    query.add_argument("expr")
    matrix = commands.add_parser("matrix", help="source x destination packet loss")
    matrix.add_argument("--window", default="30s")
    demo = commands.add_parser("demo", help="4 nodes, one fault, the loss matrix, then down")
    demo.add_argument("--seconds", type=float, default=35.0)
    flapper = commands.add_parser("flapper")  # internal: run by `fault … --flap`
    flapper.add_argument("fault_json")
    flapper.add_argument("period", type=float)
    return parser


def parse_fault(args: argparse.Namespace) -> Fault:
    def number(what: str) -> float:
        try:
            return float(args.value)
        except (TypeError, ValueError):
            raise LabError(f"fault {args.kind} needs {what} (got {args.value!r})") from None

    if args.kind == "isolate":
        return Fault("isolate", args.node)
    if args.kind in ("inbound", "outbound"):
        percent = number("a loss percentage")
        if not 0 < percent <= 100:
            raise LabError(f"loss must be in (0, 100] percent (got {percent:g})")
        return Fault(args.kind, args.node, percent=percent)
    if args.kind == "latency":
        return Fault("latency", args.node, delay_ms=number("a delay in ms"))
    if not args.value:
        raise LabError("fault link needs the other node")
    return Fault(
        "link", args.node, percent=args.percent, peer=args.value, both_ways=not args.one_way
    )


class LabPrometheus(Prometheus):
    """diagnose's Prometheus client, querying through the lab's hub namespace."""

    def __init__(self, lab: Lab) -> None:
        super().__init__(f"http://{PROMETHEUS} (in {lab.network.hub.name})")
        self.lab = lab

    def query(self, expr: str) -> list[dict[str, Any]]:
        try:
            return self.lab.prometheus.query(expr)
        except LabError as exc:
            raise DiagnoseError(str(exc)) from None


def loss_matrix(lab: Lab, window: str) -> str:
    """Packet loss per pair from the lab's Prometheus, with diagnose's verdicts."""
    try:
        return render_text(diagnose(LabPrometheus(lab), window))
    except DiagnoseError as exc:
        raise LabError(str(exc)) from None


def run_demo(lab: Lab, seconds: float) -> None:
    print("bringing up a 4-node lab (namespaces, agents, Prometheus)...", flush=True)
    lab.up(LabConfig(nodes=4, output="http"))
    try:
        fault = Fault("inbound", "node-3", percent=30)
        lab.faults.apply(fault)
        print(
            f"fault: {fault.describe()}; waiting {seconds:.0f}s for Prometheus to see it...",
            flush=True,
        )
        time.sleep(seconds)
        print(loss_matrix(lab, "30s"))
        print("\nnode-3's column shows the loss, and the verdict names it.")
    finally:
        lab.down()
        print("lab removed.")


def run(args: argparse.Namespace) -> None:
    lab = Lab(args.name)
    if args.command not in ("down", "status", "query", "matrix", "flapper"):
        ok, why = can_create_namespaces()
        if not ok:
            raise LabError(why)
    if args.command == "up":
        lab.up(
            LabConfig(
                nodes=args.nodes,
                dual_stack=args.dual_stack,
                output=args.output,
                interval=args.interval,
                prometheus=not args.no_prometheus,
                fast_alerts=args.fast_alerts,
                kubernetes=args.kubernetes,
            )
        )
        print(lab.status())
    elif args.command == "down":
        for name in all_labs() if args.all else [args.name]:
            Lab(name).down()
    elif args.command == "status":
        print(lab.status())
    elif args.command == "fault":
        fault = parse_fault(args)
        if args.flap:
            lab.faults.flap(fault, args.flap)
        else:
            lab.faults.apply(fault)
        print(
            f"applied: {fault.describe()}"
            + (f", flapping every {args.flap:g}s" if args.flap else "")
        )
    elif args.command == "clear":
        lab.faults.clear(node=args.node)
    elif args.command == "peers":
        (lab.remove_peer if args.action == "remove" else lab.add_peer)(args.node)
    elif args.command == "agent":
        {"stop": lab.agents.stop, "start": lab.agents.start, "restart": lab.agents.restart}[
            args.action
        ](args.node)
    elif args.command == "query":
        print(json.dumps(lab.prometheus.query(args.expr), indent=1))
    elif args.command == "matrix":
        print(loss_matrix(lab, args.window))
    elif args.command == "demo":
        run_demo(Lab(args.name if args.name != "lab" else "demo"), args.seconds)
    elif args.command == "flapper":
        fault = Fault.from_json(json.loads(args.fault_json))
        while True:
            lab.faults.apply(fault)
            time.sleep(args.period)
            lab.faults.clear(fault=fault)
            time.sleep(args.period)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except LabError as exc:
        print(f"node-ping-lab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
