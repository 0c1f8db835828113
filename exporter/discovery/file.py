"""File discovery: the original implementation's ConfigMap, ``[{"name", "ipAddress"}]``.

A ConfigMap volume updates by swapping a symlink, so the file is re-read by
polling its content, not by inotify on the path. A malformed file at start is a
configuration error; a malformed file later is logged and counted, and the last
good peer list stays in force.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from ..config import ConfigError, normalise_ip
from ..peers import NodeAddress
from . import DiscoveryState, NodeSink


class PeersFileError(ValueError):
    """The peers file is unreadable or malformed; the message says where."""


def parse_peers(text: bytes, path: Path) -> list[NodeAddress]:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PeersFileError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, list):
        raise PeersFileError(f"{path} must hold a JSON list of {{name, ipAddress}} objects")
    nodes: list[NodeAddress] = []
    for index, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise PeersFileError(f"{path} entry {index} is not an object")
        name, address = entry.get("name"), entry.get("ipAddress")
        if not isinstance(name, str) or not name:
            raise PeersFileError(f"{path} entry {index} has no 'name'")
        if not isinstance(address, str):
            raise PeersFileError(f"{path} entry {index} ({name}) has no 'ipAddress'")
        try:
            nodes.append(NodeAddress(name, (normalise_ip(address),)))
        except ValueError as exc:
            raise PeersFileError(f"{path} entry {index} ({name}): {exc}") from None
    return nodes


def read_peers_file(path: Path) -> tuple[bytes, list[NodeAddress]]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise PeersFileError(f"cannot read {path}: {exc.strerror}") from None
    return text, parse_peers(text, path)


def load_initial(path: Path) -> tuple[bytes, list[NodeAddress]]:
    """The first read, at start: any problem is a configuration error (exit 2)."""
    try:
        return read_peers_file(path)
    except PeersFileError as exc:
        raise ConfigError(f"invalid setting 'peers_file' (--peers-file): {exc}") from None


async def watch_peers_file(
    path: Path, poll_seconds: float, initial: bytes, sink: NodeSink, state: DiscoveryState
) -> None:
    """Re-read the file whenever its content changes; never raises.

    A failure is logged and counted once per episode (until the file is good
    again); meanwhile the last good peer list stays in force.
    """
    last_good = initial
    while True:
        await asyncio.sleep(poll_seconds)
        try:
            text = await asyncio.to_thread(path.read_bytes)
            nodes = None if text == last_good else parse_peers(text, path)
        except OSError as exc:
            if state.up:
                state.failed(f"cannot read {path}: {exc.strerror}")
            continue
        except PeersFileError as exc:
            if state.up:
                state.failed(str(exc))
            continue
        if nodes is not None:
            sink.update(nodes)
            last_good = text
        state.succeeded()
