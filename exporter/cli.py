"""Command-line entry point: ``node-ping-exporter [flags]`` runs the agent,
``node-ping-exporter diagnose …`` reads Prometheus and names the culprit,
``node-ping-exporter rules …`` prints the alert and recording rules,
``node-ping-exporter setup …`` prepares the node (the chart's init containers)."""

from __future__ import annotations

import asyncio
import os
import sys

from . import __version__
from .config import ConfigError, load_settings
from .icmp import IcmpUnavailable
from .logs import one_line, setup_logging
from .supervisor import AgentFailed

PROG = "node-ping-exporter"


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["diagnose"]:
        from .diagnose import main as diagnose

        return diagnose(args[1:])
    if args[:1] == ["setup"]:
        from .nodesetup import main as setup

        return setup(args[1:])
    if args[:1] == ["rules"]:
        from .rules import main as rules

        return rules(args[1:])
    if "--version" in args:
        print(f"{PROG} {__version__}")
        return 0
    try:
        settings = load_settings(args, dict(os.environ))
        from .preflight import preflight  # heavy imports only once the settings are good

        plan = preflight(settings)
        if "--check-config" in args:
            print(plan.describe())
            return 0
        setup_logging(settings.log_format.value, settings.log_level)
        from .app import Agent

        async def run() -> None:
            await Agent(plan).run()

        _run(run())
    except ConfigError as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except (IcmpUnavailable, AgentFailed) as exc:
        print(f"{PROG}: {one_line(str(exc))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
