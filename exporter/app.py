"""Wires the agent together and runs it until SIGTERM/SIGINT.

discovery -> peer table -> prober (ICMP engine) -> statistics -> exposition
(HTTP thread, textfile task). Start-up problems raise ConfigError (exit 2) or
IcmpUnavailable; once running, nothing but a signal stops the agent.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from .config import ConfigError, DiscoveryMode, Settings, split_listen_address
from .discovery import DiscoveryState, NodeSink
from .discovery.external import ExternalTargets
from .discovery.file import load_initial, watch_peers_file
from .discovery.kubernetes import KubernetesDiscovery, in_cluster
from .discovery.static import apply_static_peers
from .engine import MAX_TICK_SECONDS, Prober
from .exposition import Exposition
from .icmp import EchoSocket, IcmpMode, open_echo_socket, resolve_mode
from .metrics import AgentCollector, AgentState
from .peers import PeerTable
from .server import make_server, serve_in_thread
from .textfile import TextfileWriter, check_directory

log = logging.getLogger(__name__)

HEALTHY_HEARTBEAT_SECONDS = 10.0
SHUTDOWN_SECONDS = 1.5  # SIGTERM to exit, well inside the 2 s promise


def choose_discovery(settings: Settings) -> DiscoveryMode:
    if settings.discovery is not DiscoveryMode.AUTO:
        return settings.discovery
    if in_cluster() or settings.kubeconfig:
        return DiscoveryMode.KUBERNETES
    if settings.peers:
        return DiscoveryMode.STATIC
    return DiscoveryMode.FILE


def open_sockets(mode: IcmpMode) -> dict[int, EchoSocket]:
    sockets: dict[int, EchoSocket] = {4: open_echo_socket(4, raw=mode is IcmpMode.RAW)}
    try:
        sockets[6] = open_echo_socket(6, raw=mode is IcmpMode.RAW)
    except Exception as exc:  # IPv6 disabled on the node: IPv6 peers count send errors
        log.warning(
            "no IPv6 ICMP socket; IPv6 peers will not be probed", extra={"problem": str(exc)}
        )
    return sockets


class Agent:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.shutting_down = False
        self.mode = resolve_mode(settings.icmp_mode)
        self.sockets = open_sockets(self.mode)
        self.table = PeerTable(
            settings.window, settings.per_peer_histogram, on_change=self._peers_changed
        )
        self.prober = Prober(
            self.table, self.sockets, settings.interval, settings.timeout, settings.payload_size
        )
        self.state = AgentState(settings.node_name, self.mode.value, self.table, self.prober.stats)
        self.collector = AgentCollector(self.state, settings.per_peer_histogram)
        self.sink = NodeSink(self.table, settings.node_name, settings.ping_self, settings.max_peers)
        self.discovery_mode = choose_discovery(settings)
        self.discovery_state = DiscoveryState(self.discovery_mode.value)
        self.state.discovery.append(self.discovery_state)
        self.external = ExternalTargets(settings.external_targets, self.table)
        self.state.resolve_errors = self.external.resolve_errors
        self.state.external_addresses = self.external.addresses
        self.state.external_hosts = {t.name: t.host for t in settings.external_targets}
        self.textfile: TextfileWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- health ---------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self.prober.stats.heartbeat
        if age > HEALTHY_HEARTBEAT_SECONDS:
            return False, f"prober stalled for {age:.1f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "shutting down"
        if not self.discovery_state.synced_once:
            return False, f"waiting for {self.discovery_state.source} discovery"
        if len(self.table) and not self.prober.stats.probes_resolved:
            return False, "waiting for the first probe results"
        return True, f"ok: {len(self.table)} peers"

    # -- wiring ---------------------------------------------------------------

    def _peers_changed(self) -> None:
        self.prober.peers_changed()
        if self.textfile is not None:
            self.textfile.request_write()

    def _start_discovery(self) -> None:
        s = self.settings
        mode = self.discovery_mode
        if mode is DiscoveryMode.STATIC:
            if not s.peers:
                raise ConfigError(
                    "invalid setting 'peers' (--peer): static discovery needs "
                    "at least one --peer NAME=IP"
                )
            apply_static_peers(s.peers, self.sink, self.discovery_state)
        elif mode is DiscoveryMode.FILE:
            text, nodes = load_initial(s.peers_file)
            self.sink.update(nodes)
            self.discovery_state.succeeded()
            self._spawn(
                "peers-file",
                lambda: watch_peers_file(
                    s.peers_file, s.peers_file_poll_interval, text, self.sink, self.discovery_state
                ),
            )
        else:
            kube = KubernetesDiscovery(
                self.sink, self.discovery_state, s.address_types, s.node_selector, s.kubeconfig
            )
            kube.start(asyncio.get_running_loop())

    def _spawn(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(name, factory), name=name))

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run a part; an unexpected exception is counted, logged, and the part restarted."""
        while True:
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.state.exceptions += 1
                log.exception("task failed, restarting", extra={"task": name})
                await asyncio.sleep(1.0)

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.state.exceptions += 1
        loop.default_exception_handler(context)

    # -- run ------------------------------------------------------------------

    async def run(self) -> None:
        s = self.settings
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        self._start_discovery()
        if s.external_targets:
            await self.external.resolve_all()
            self._spawn("external-targets", lambda: self.external.run(s.resolve_interval))

        server = None
        if s.wants_http:
            registry = CollectorRegistry()
            registry.register(self.collector)
            registry.register(ProcessCollector(registry=None))
            http = Exposition(self.table, s.node_name, registry)
            host, port = split_listen_address(s.listen_address)
            try:
                server = make_server(host, port, http.render, self.healthy, self.ready)
            except OSError as exc:
                raise ConfigError(
                    f"invalid setting 'listen_address' (--listen-address): "
                    f"cannot listen on {s.listen_address}: "
                    f"{exc.strerror or errno.errorcode.get(exc.errno or 0)}"
                ) from None
            serve_in_thread(server)
        textfile_task = None
        if s.wants_textfile:
            check_directory(s.textfile_dir)
            text_registry = CollectorRegistry()  # our metrics only: node-exporter has its own
            text_registry.register(self.collector)
            text = Exposition(self.table, s.node_name, text_registry)
            self.textfile = TextfileWriter(s.textfile_path, text.render)
            self.state.textfile = self.textfile
            self.textfile.remove_stale()
            textfile_task = asyncio.create_task(self.textfile.run(s.textfile_interval))

        stopped = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        log.info(
            "started",
            extra={
                "node": s.node_name,
                "icmp_mode": self.mode.value,
                "discovery": self.discovery_mode.value,
                "peers": len(self.table),
                "output": s.output.value,
                "listen": s.listen_address if server else "-",
            },
        )
        self._spawn("prober", self.prober.run)
        await stopped.wait()

        log.info("stopping")
        self.shutting_down = True
        self.prober.stop()
        if self.textfile is not None and textfile_task is not None:
            self.textfile.stop()
            try:  # let a write in progress finish; then the file stays as the last state
                await asyncio.wait_for(textfile_task, SHUTDOWN_SECONDS)
            except TimeoutError:
                log.error("textfile write did not finish in time")
        await asyncio.sleep(min(MAX_TICK_SECONDS, 0.1))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if server is not None:
            server.server_close()
        for sock in self.sockets.values():
            sock.close()
