"""Command-line entry point: ``node-ping-exporter [flags]`` runs the agent,
``node-ping-exporter diagnose …`` reads Prometheus and names the culprit."""

from __future__ import annotations

import asyncio
import os
import sys

from . import __version__
from .config import ConfigError, Settings, load_settings
from .icmp import IcmpUnavailable
from .logs import setup_logging

PROG = "node-ping-exporter"


def _run(coro: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]
    else:
        uvloop.run(coro)  # type: ignore[arg-type]


def check_config(settings: Settings) -> str:
    """Validate without running: the settings, the textfile directory when writing one,
    and the peers file in file discovery."""
    from .app import choose_discovery
    from .config import DiscoveryMode
    from .discovery.file import load_initial
    from .textfile import check_directory

    mode = choose_discovery(settings)
    if settings.wants_textfile:
        check_directory(settings.textfile_dir)
    detail = ""
    if mode is DiscoveryMode.FILE:
        _, nodes = load_initial(settings.peers_file)
        detail = f", {len(nodes)} peer addresses in {settings.peers_file}"
    elif mode is DiscoveryMode.STATIC:
        detail = f", {len(settings.peers)} static peers"
    return f"configuration OK: node {settings.node_name}, discovery {mode.value}{detail}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["diagnose"]:
        from .diagnose import main as diagnose

        return diagnose(args[1:])
    if "--version" in args:
        print(f"{PROG} {__version__}")
        return 0
    try:
        settings = load_settings(args, dict(os.environ))
        if "--check-config" in args:
            print(check_config(settings))
            return 0
        setup_logging(settings.log_format.value, settings.log_level)
        from .app import Agent  # heavy imports only once the settings are good

        async def run() -> None:
            await Agent(settings).run()

        _run(run())
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except IcmpUnavailable as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
