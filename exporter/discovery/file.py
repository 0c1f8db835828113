"""File discovery: the original implementation's ConfigMap, ``[{"name", "ipAddress"}]``,
each entry optionally with a ``"zone"`` (the node's topology.kubernetes.io/zone).

A ConfigMap volume updates by swapping a symlink, so the file is re-read by
polling its content, not by inotify on the path. A malformed file at start is a
configuration error; a malformed file later is logged and counted, and the last
good peer list stays exactly in force — whatever is wrong with it (bad JSON,
nesting deep enough to exhaust the parser, names that are not node names).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from ..config import ConfigError, check_node_name, check_zone, normalise_ip
from ..peers import NodeAddress
from ..supervisor import call_in_thread
from . import DiscoverySource, DiscoveryState, NodeSink

MAX_FILE_BYTES = 16 * 1024 * 1024  # ~100,000 nodes; larger is a mistake, not a cluster


class PeersFileError(ValueError):
    """The peers file is unreadable or malformed; the message says where."""


def parse_peers(text: bytes, path: Path) -> list[NodeAddress]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError too
        problem = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise PeersFileError(f"{path} is not valid JSON: {problem}") from None
    if not isinstance(data, list):
        raise PeersFileError(f"{path} must hold a JSON list of {{name, ipAddress}} objects")
    nodes: list[NodeAddress] = []
    for index, entry in enumerate(data, start=1):
        if not isinstance(entry, dict):
            raise PeersFileError(f"{path} entry {index} is not an object")
        name, address, zone = entry.get("name"), entry.get("ipAddress"), entry.get("zone", "")
        if not isinstance(name, str) or not name:
            raise PeersFileError(f"{path} entry {index} has no 'name'")
        if not isinstance(address, str):
            raise PeersFileError(f"{path} entry {index} has no 'ipAddress'")
        if not isinstance(zone, str):
            raise PeersFileError(f"{path} entry {index} ({name}): 'zone' is not a string")
        try:
            check_node_name(name)
            check_zone(zone)
        except ValueError as exc:
            raise PeersFileError(f"{path} entry {index}: {exc}") from None
        try:
            nodes.append(NodeAddress(name, (normalise_ip(address),), zone))
        except ValueError as exc:
            raise PeersFileError(f"{path} entry {index} ({name}): {exc}") from None
    return nodes


def read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            text = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise PeersFileError(f"cannot read {path}: {exc.strerror}") from None
    if len(text) > MAX_FILE_BYTES:
        raise PeersFileError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return text


def read_peers_file(path: Path) -> tuple[bytes, list[NodeAddress]]:
    text = read_bytes(path)
    return text, parse_peers(text, path)


def load_initial(path: Path) -> tuple[bytes, list[NodeAddress]]:
    """The first read, at start: any problem is a configuration error (exit 2)."""
    try:
        return read_peers_file(path)
    except PeersFileError as exc:
        raise ConfigError(f"invalid setting 'peers_file' (--peers-file): {exc}") from None


class PeersFileDiscovery(DiscoverySource):
    """Polls the peers file; every good new content replaces the peer list."""

    name = "discovery-file"

    def __init__(
        self,
        path: Path,
        poll_seconds: float,
        sink: NodeSink,
        state: DiscoveryState,
        initial: tuple[bytes, list[NodeAddress]],
    ) -> None:
        self.path = path
        self.poll_seconds = poll_seconds
        self.sink = sink
        self.state = state
        # Kept on the object, not in run(): a restarted run() goes on from the last
        # good content, never from the start-up file.
        self.last_good, nodes = initial
        self._last_bad, self._last_problem = b"", ""
        sink.update(nodes)
        state.succeeded()

    def check(
        self, text: bytes | None, problem: str = "", nodes: list[NodeAddress] | None = None
    ) -> None:
        """Apply one read of the file: its bytes and the nodes parsed from them, or None
        and the ``problem`` (unreadable or malformed).

        A failure is logged and counted once per episode (until the file is good
        again); meanwhile the last good peer list stays in force.
        """
        if text is None:
            if self.state.up:
                self.state.failed(problem)
            return
        if nodes is not None:
            self.sink.update(nodes)
            self.last_good = text
        self.state.succeeded()

    def _read(self) -> tuple[bytes, list[NodeAddress] | None]:
        """Read and, when the content is new, parse (in a thread: a large file must not
        stall the prober). A content already found bad is not parsed again."""
        text = read_bytes(self.path)
        if text == self.last_good:
            return text, None
        digest = hashlib.sha256(text).digest()
        if digest == self._last_bad:
            raise PeersFileError(self._last_problem)
        try:
            return text, parse_peers(text, self.path)
        except PeersFileError as exc:
            self._last_bad, self._last_problem = digest, str(exc)
            raise

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                text, nodes = await call_in_thread(self._read)
            except PeersFileError as exc:
                self.check(None, str(exc))
                continue
            self.check(text, nodes=nodes)
