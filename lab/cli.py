"""``node-ping-lab``: bring up a simulated cluster, break it, look at it.

    node-ping-lab up --nodes 6 --zones 3        # namespaces, agents, Prometheus, node-exporter
    node-ping-lab fault node-in node-3 30       # 30 % of every packet arriving at node-3 lost
    node-ping-lab fault link node-1 node-2      # node-1 <-> node-2 cut
    node-ping-lab fault partition zone-a zone-b,node-6
    node-ping-lab fault size node-4 1400        # IP packets over 1400 bytes vanish at node-4
    node-ping-lab fault latency node-4 20       # node-4 answers 20 ms late
    node-ping-lab fault starve node-2           # node-2's agent gets 1 % of one CPU
    node-ping-lab fault isolate node-5 --flap 10
    node-ping-lab fault blip node-6 5           # node-6 cut off for 5 s, once
    node-ping-lab matrix                        # source x destination loss, from Prometheus
    node-ping-lab clear                         # all faults off
    node-ping-lab down                          # everything removed

Needs root (network namespaces, nftables, cgroups). ``--name`` runs several labs
side by side. ``node-ping-lab fault KIND -h`` says what each fault takes.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from exporter.diagnose import DiagnoseError, Prometheus, diagnose, render_text

from .cluster import Lab, all_labs
from .cpu import STARVE_PERCENT
from .faults import Fault, Timer
from .netns import can_create_namespaces
from .prometheus import FAST_CONFIG, PROMETHEUS, rules_config
from .responder import ResponderUnavailable
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
    up.add_argument(
        "--zones", type=int, default=0, help="split the nodes into zone-a, zone-b, … (0: none)"
    )
    up.add_argument("--max-peers", type=int, default=0, help="each agent probes K nodes (0: all)")
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
        "--kubelets",
        action="store_true",
        help="make the nodes Kubernetes nodes (containerd and a kubelet each) and run "
        "the agents as the chart's DaemonSet pods; needs --kubernetes",
    )
    up.add_argument(
        "--fast-alerts",
        action="store_true",
        help="load the alert rules with 30 s windows and 20 s `for`",
    )
    down = commands.add_parser("down", help="remove everything the lab made")
    down.add_argument("--all", action="store_true", help="every lab on this machine")
    commands.add_parser("status")

    add_fault_parser(commands)
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
    publish = commands.add_parser(
        "publish", help="images, chart, signatures and SBOMs to a registry on loopback"
    )
    publish.add_argument("directory", help="where the registry, packages and keys are kept")
    timer = commands.add_parser("timer")  # internal: run by `fault … --flap` and `fault blip`
    timer.add_argument("timer_json")
    return parser


METAVARS = {"percent": "PCT", "max_bytes": "BYTES"}  # the rest: the name in capitals


def add_fault_parser(commands: Any) -> None:
    """``fault KIND …``: one subcommand per kind, each with the arguments it takes.
    Values stay strings here: parse_fault checks them, with one-line errors."""
    fault = commands.add_parser("fault", help="inject a fault (fault KIND -h: its arguments)")
    kinds = fault.add_subparsers(dest="kind", required=True, metavar="KIND", parser_class=_Parser)
    flap = argparse.ArgumentParser(add_help=False)
    flap.add_argument("--flap", metavar="SECONDS", help="toggle the fault on and off every SECONDS")

    def kind(name: str, help: str, *args: str, flaps: bool = True) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = kinds.add_parser(
            name, help=help, parents=[flap] if flaps else []
        )
        for arg in args:
            parser.add_argument(arg, metavar=METAVARS.get(arg, arg.upper()))
        return parser

    node_in = kind("node-in", "drop PCT %% of every packet arriving at NODE", "node", "percent")
    node_out = kind("node-out", "drop PCT %% of every packet leaving NODE", "node", "percent")
    link = kind("link", "drop PCT %% (default 100) of every packet A -> B and B -> A")
    link.add_argument("node", metavar="A")
    link.add_argument("peer", metavar="B")
    link.add_argument("percent", metavar="PCT", nargs="?", default="100")
    link.add_argument("--one-way", action="store_true", help="only A -> B")
    isolate = kind("isolate", "drop every packet in and out of NODE", "node")
    for parser in (node_in, node_out, link, isolate):
        parser.add_argument(
            "--protocol",
            choices=["udp", "icmp"],
            default="",
            help="only this protocol's packets (a firewall or policy on one protocol)",
        )
    kind(
        "partition",
        "cut every path between two groups (comma-separated node and zone names)",
        "group_a",
        "group_b",
    )
    kind("blip", "isolate NODE once, for SECONDS", "node", "seconds", flaps=False)
    size = kind("size", "drop IP packets over BYTES in and out of NODE", "node", "max_bytes")
    size.add_argument(
        "--peer", default="", metavar="OTHER", help="only on the link between NODE and OTHER"
    )
    size.add_argument("--one-way", action="store_true", help="only packets NODE sends")
    kind("latency", "NODE answers pings MS later", "node", "ms")
    starve = kind(
        "starve", f"give NODE's agent PCT %% of one CPU (default {STARVE_PERCENT:g})", "node"
    )
    starve.add_argument("percent", metavar="PCT", nargs="?")


def _number(text: str, what: str) -> float:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise LabError(f"{what} must be a number (got {text!r})")
    return number


def _percent(text: str, what: str) -> float:
    percent = _number(text, what)
    if not 0 < percent <= 100:
        raise LabError(f"{what} must be in (0, 100] percent (got {percent:g})")
    return percent


def _group(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise LabError(f"a partition group is a comma-separated list of names (got {text!r})")
    return names


def parse_fault(args: argparse.Namespace) -> Fault:
    """The fault the ``fault`` command names, or a one-line LabError. Node and zone
    names are checked against the lab when it is applied."""
    kind = args.kind
    if kind in ("node-in", "node-out"):
        percent = _percent(args.percent, f"{kind} loss")
        return Fault(kind, args.node, percent=percent, protocol=args.protocol)
    if kind == "link":
        if args.peer == args.node:
            raise LabError(f"a link needs two different nodes (got {args.node} twice)")
        percent = _percent(args.percent, "link loss")
        return Fault(
            "link",
            args.node,
            peer=args.peer,
            percent=percent,
            both_ways=not args.one_way,
            protocol=args.protocol,
        )
    if kind == "blip":
        return Fault("isolate", args.node)
    if kind == "isolate":
        return Fault("isolate", args.node, protocol=args.protocol)
    if kind == "partition":
        group_a, group_b = _group(args.group_a), _group(args.group_b)
        both = [name for name in group_a if name in group_b]
        if both:
            raise LabError(f"partition groups overlap: {', '.join(both)} on both sides")
        return Fault("partition", group_a=group_a, group_b=group_b)
    if kind == "size":
        if args.peer == args.node:
            raise LabError(f"size --peer must be another node than {args.node}")
        size = _number(args.max_bytes, "size BYTES")
        if size != int(size) or not 68 <= size <= 65535:
            raise LabError(f"size BYTES must be a whole number from 68 to 65535 (got {size:g})")
        return Fault(
            "size", args.node, peer=args.peer, both_ways=not args.one_way, max_bytes=int(size)
        )
    if kind == "latency":
        delay = _number(args.ms, "latency MS")
        if not 0 < delay <= 10_000:
            raise LabError(f"latency must be in (0, 10000] ms (got {delay:g})")
        return Fault("latency", args.node, delay_ms=delay)
    percent = STARVE_PERCENT if args.percent is None else _percent(args.percent, "starve CPU")
    return Fault("starve", args.node, percent=percent)


def parse_timer(args: argparse.Namespace, fault: Fault) -> Timer | None:
    """``blip``'s SECONDS or a fault's ``--flap SECONDS`` as a Timer; None for neither."""
    if args.kind == "blip":
        text, what, once = args.seconds, "blip SECONDS", True
    elif args.flap is not None:
        text, what, once = args.flap, "--flap SECONDS", False
    else:
        return None
    seconds = _number(text, what)
    if not 0.1 <= seconds <= 86_400:
        raise LabError(f"{what} must be from 0.1 to 86400 (got {seconds:g})")
    return Timer(fault, seconds, once)


AGENTS_JOB = 'job="node-ping-exporter"'  # the lab's Prometheus names it as the chart does


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
    """Packet loss per pair from the lab's Prometheus, with diagnose's verdicts: the
    rules evaluated over ``window`` with lab-sized settings, on the series the lab's
    rules read, and a pair counted once probed for 10 s (a lab is minutes old)."""
    selector = rules_config(lab.config.output).get("seriesSelector", AGENTS_JOB)
    settings = FAST_CONFIG | {"establishedAfter": "10s"}
    try:
        return render_text(diagnose(LabPrometheus(lab), window, selector, config=settings))
    except DiagnoseError as exc:
        raise LabError(str(exc)) from None


def run_demo(lab: Lab, seconds: float) -> None:
    print("bringing up a 4-node lab (namespaces, agents, Prometheus)...", flush=True)
    lab.up(LabConfig(nodes=4, output="http"))
    try:
        fault = lab.faults.apply(Fault("node-in", "node-3", percent=30))
        print(
            f"fault: {fault.describe()}; waiting {seconds:.0f}s for Prometheus to see it...",
            flush=True,
        )
        time.sleep(seconds)
        print(loss_matrix(lab, "30s"))
        print(
            "\nnode-3's column and its row show the loss (probes to it, and the replies to "
            "its own probes, are lost on the way in), and the verdict names node-3."
        )
    finally:
        lab.down()
        print("lab removed.")


def run(args: argparse.Namespace) -> None:
    lab = Lab(args.name)
    if args.command == "publish":
        serve_release(Path(args.directory))
        return
    if args.command not in ("down", "status", "query", "matrix", "timer"):
        ok, why = can_create_namespaces()
        if not ok:
            raise LabError(why)
    if args.command == "up":
        lab.up(
            LabConfig(
                nodes=args.nodes,
                zones=args.zones,
                max_peers=args.max_peers,
                dual_stack=args.dual_stack,
                output=args.output,
                interval=args.interval,
                prometheus=not args.no_prometheus,
                fast_alerts=args.fast_alerts,
                kubernetes=args.kubernetes,
                kubelets=args.kubelets,
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
        timer = parse_timer(args, fault)
        if timer is None:
            print(f"applied: {lab.faults.apply(fault).describe()}")
        elif timer.once:
            fault = lab.faults.pulse(fault, timer.seconds)
            print(f"applied: {fault.describe()}, cleared after {timer.seconds:g}s")
        else:
            fault = lab.faults.flap(fault, timer.seconds)
            print(f"applied: {fault.describe()}, flapping every {timer.seconds:g}s")
    elif args.command == "clear":
        lab.faults.clear(node=args.node)
    elif args.command in ("peers", "agent") and lab.workdir.load().config.kubelets:
        raise LabError(
            f"'{args.command}' is for the lab's own agents; on Kubernetes nodes the kubelets "
            "run them and the Node objects are the nodes' own (use kubectl or helm)"
        )
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
    elif args.command == "timer":
        lab.faults.run_timer(Timer.from_json(json.loads(args.timer_json)))


def serve_release(directory: Path) -> None:
    """Publish, say where and how to install and verify, serve until interrupted."""
    from .release import publish

    release = publish(directory.resolve())
    try:
        lines = [
            f"image       {release.image} (amd64, arm64; {release.image_digest})",
            f"chart (OCI) {release.chart_ref} --version {release.chart_version} --plain-http",
            f"chart repo  {release.repo_url} (helm repo add …)",
            f"public key  {release.public_key}",
            f"SBOMs       {', '.join(str(p) for p in release.sboms.values())}",
            "",
            f"helm install node-ping {release.chart_ref} --version {release.chart_version} "
            "--plain-http",
            f"cosign verify --key {release.public_key} --insecure-ignore-tlog "
            f"--allow-http-registry {release.image}",
            "serving until interrupted (Ctrl-C)",
        ]
        print("\n".join(lines), flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        release.stop()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (LabError, ResponderUnavailable) as exc:
        print(f"node-ping-lab: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
