"""Wires the agent together and runs it until SIGTERM/SIGINT.

discovery -> peer table -> prober (ICMP engine) -> statistics -> exposition
(HTTP server, textfile writer). Each running part is a component under one
Supervisor (exporter.supervisor). Start-up problems raise ConfigError (exit 2)
or IcmpUnavailable (exit 1); once running, only a signal or a critical
component's failure stops the agent.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from .auth import KubernetesAuthorizer
from .config import ConfigError, DiscoveryMode, MetricsAuth, PairMetrics, split_listen_address
from .discovery import DiscoveryState, NodeSink
from .discovery.external import ExternalTargets
from .discovery.file import PeersFileDiscovery
from .discovery.kubernetes import KubernetesDiscovery
from .discovery.static import StaticDiscovery
from .engine import Prober, SizeProbes
from .exposition import Exposition
from .icmp import EchoSocket, open_echo_socket, resolve_mode
from .metrics import AgentCollector
from .peers import PeerTable
from .preflight import Plan
from .reflector import MAX_PAUSE_SECONDS, Reflector, open_reflector_socket
from .server import HttpServer, make_server
from .stamp_sender import StampSender, open_sender_socket
from .supervisor import AgentFailed, Component, Supervisor
from .textfile import TextfileWriter

log = logging.getLogger(__name__)

HEALTHY_HEARTBEAT_SECONDS = 10.0
SHUTDOWN_SECONDS = 1.5  # SIGTERM to exit, well inside the 2 s promise
DRAIN_SECONDS = 0.1  # /readyz answers 503 this long before the listener closes


def open_sockets(raw: bool, dont_fragment: bool) -> dict[int, EchoSocket]:
    sockets: dict[int, EchoSocket] = {4: open_echo_socket(4, raw, dont_fragment)}
    try:
        sockets[6] = open_echo_socket(6, raw, dont_fragment)
    except Exception as exc:  # IPv6 disabled on the node: IPv6 peers count send errors
        log.warning(
            "no IPv6 ICMP socket; IPv6 peers will not be probed", extra={"problem": str(exc)}
        )
    return sockets


def open_udp_sockets(opener: Callable[[int], socket.socket]) -> dict[int, socket.socket]:
    """One UDP socket per family; IPv4 must open, IPv6 may be off on the node."""
    sockets = {4: opener(4)}
    try:
        sockets[6] = opener(6)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            sockets[4].close()
            raise
        log.warning("no IPv6 UDP socket; STAMP over IPv6 is off", extra={"problem": str(exc)})
    return sockets


class Agent:
    def __init__(self, plan: Plan) -> None:
        settings = plan.settings
        self.settings = settings
        self.plan = plan
        self.shutting_down = False
        me = settings.node_name
        self.mode = resolve_mode(settings.icmp_mode)
        self.sockets = open_sockets(
            raw=self.mode.value == "raw", dont_fragment=bool(settings.size_probe_interval)
        )
        self.supervisor = Supervisor(me)
        self.table = PeerTable(
            settings.window,
            settings.per_peer_histogram,
            on_change=self._peers_changed,
            stamp=bool(settings.stamp_port),
            large=bool(settings.size_probe_interval),
        )
        self.sink = NodeSink(
            self.table, me, settings.ping_self, settings.max_peers, settings.max_pairs
        )
        self.discovery_state = DiscoveryState(plan.discovery.value, me)
        self.reflector: Reflector | None = None
        stamp: StampSender | None = None
        if settings.stamp_port:
            self.reflector = self._reflector()
            stamp = StampSender(
                open_udp_sockets(open_sender_socket), settings.stamp_port, settings.timeout, me
            )
        self.prober = Prober(
            self.table,
            self.sockets,
            settings.interval,
            settings.timeout,
            settings.payload_size,
            node_name=me,
            stamp=stamp,
            size_probes=(
                SizeProbes(settings.size_probe_interval, settings.size_probe_bytes)
                if settings.size_probe_interval
                else None
            ),
        )
        self.collector = AgentCollector(me, self.mode.value, self.table, self.supervisor)
        self.textfile: TextfileWriter | None = None
        self.http: HttpServer | None = None

    # -- health ---------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        age = time.monotonic() - self.prober.stats.heartbeat
        if age > HEALTHY_HEARTBEAT_SECONDS:
            return False, f"prober stalled for {age:.1f}s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        if self.shutting_down:
            return False, "shutting down"
        if not self.discovery_state.synced.is_set():
            return False, f"waiting for {self.discovery_state.source} discovery"
        if len(self.table) and not self.prober.stats.probes_resolved:
            return False, "waiting for the first probe results"
        return True, f"ok: {len(self.table)} peers"

    # -- wiring ---------------------------------------------------------------

    def _peers_changed(self) -> None:
        self.prober.peers_changed()
        if self.textfile is not None:
            self.textfile.request_write()

    def _discovery(self) -> Component:
        s, plan, state = self.settings, self.plan, self.discovery_state
        if plan.discovery is DiscoveryMode.STATIC:
            return StaticDiscovery(s.peers, self.sink, state)
        if plan.discovery is DiscoveryMode.FILE:
            assert plan.peers_file is not None, "preflight reads the peers file"
            return PeersFileDiscovery(
                s.peers_file, s.peers_file_poll_interval, self.sink, state, plan.peers_file
            )
        return KubernetesDiscovery(
            self.sink,
            state,
            s.address_types,
            s.node_selector,
            s.kubeconfig,
            api=plan.kubernetes_api,
        )

    def _reflector(self) -> Reflector:
        s = self.settings
        try:
            sockets = open_udp_sockets(lambda family: open_reflector_socket(family, s.stamp_port))
        except OSError as exc:
            raise ConfigError(
                f"invalid setting 'stamp_port' (--stamp-port): cannot listen on UDP port "
                f"{s.stamp_port}: {exc.strerror or errno.errorcode.get(exc.errno or 0)}"
            ) from None
        allowed = None if s.stamp_reflect_any else self.sink.knows
        known = None if s.stamp_reflect_any else self.discovery_state.synced
        pause = min(MAX_PAUSE_SECONDS, s.timeout / 4)  # the senders' timeout: the same config
        return Reflector(
            sockets, s.node_name, allowed, port=s.stamp_port, peers_known=known, pause=pause
        )

    def _exposition(self, process_metrics: bool) -> Exposition:
        """What /metrics and the textfile render: the textfile leaves the process
        families out, node-exporter has its own."""
        registry = CollectorRegistry()
        registry.register(self.collector)
        if process_metrics:
            registry.register(ProcessCollector(registry=None))
        full = self.settings.pair_metrics is PairMetrics.FULL
        return Exposition(self.table, self.settings.node_name, registry, full)

    def _http_server(self) -> HttpServer:
        s = self.settings
        exposition = self._exposition(process_metrics=True)
        host, port = split_listen_address(s.listen_address)
        authorizer = None
        if s.metrics_auth is MetricsAuth.KUBERNETES:
            assert self.plan.kubernetes_api is not None  # preflight connects for it
            authorizer = KubernetesAuthorizer(self.plan.kubernetes_api)
        try:
            server = make_server(
                host,
                port,
                exposition.render,
                self.healthy,
                self.ready,
                tls=self.plan.tls,
                authorize=authorizer.check if authorizer else None,
            )
        except OSError as exc:
            raise ConfigError(
                f"invalid setting 'listen_address' (--listen-address): "
                f"cannot listen on {s.listen_address}: "
                f"{exc.strerror or errno.errorcode.get(exc.errno or 0)}"
            ) from None
        return HttpServer(server, s.node_name, self.plan.tls, authorizer)

    def _textfile_writer(self) -> TextfileWriter:
        s = self.settings
        exposition = self._exposition(process_metrics=False)
        try:
            writer = TextfileWriter(
                s.textfile_path, exposition.render, s.textfile_interval, s.node_name
            )
            writer.remove_own_files()
        except OSError as exc:  # e.g. a directory where our file should be
            raise ConfigError(
                f"invalid setting 'textfile_dir' (--textfile-dir): cannot use "
                f"{s.textfile_path}: {exc.strerror or exc}"
            ) from None
        return writer

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.supervisor.exceptions += 1
        loop.default_exception_handler(context)

    # -- run ------------------------------------------------------------------

    async def run(self) -> None:
        """Run until a signal; raises AgentFailed when a component keeps failing."""
        s = self.settings
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_exception)
        supervisor = self.supervisor
        supervisor.start(self._discovery())
        if s.external_targets:
            supervisor.start(
                ExternalTargets(s.external_targets, self.table, s.resolve_interval, s.node_name)
            )
        supervisor.start(self.prober)
        if self.reflector is not None:
            supervisor.start(self.reflector)
        if s.wants_http:
            self.http = self._http_server()
            supervisor.start(self.http)
        if s.wants_textfile:
            self.textfile = self._textfile_writer()
            supervisor.start(self.textfile)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, supervisor.ended.set)
        log.info(
            "started",
            extra={
                "node": s.node_name,
                "icmp_mode": self.mode.value,
                "discovery": self.plan.discovery.value,
                "peers": len(self.table),
                "output": s.output.value,
                "listen": s.listen_address if self.http else "-",
            },
        )
        await supervisor.ended.wait()
        log.info("stopping")
        self.shutting_down = True
        await asyncio.sleep(DRAIN_SECONDS)
        # /metrics goes first, the reflector last: from the moment this agent stops
        # answering STAMP, Prometheus's scrapes of it fail, so its series go stale
        # instead of vouching for a reflector that no longer answers (the UDP loss
        # its peers then see is no evidence, and the rules must see why).
        await supervisor.stop(SHUTDOWN_SECONDS, first=[self.http] if self.http else [])
        if self.http is not None:
            self.http.close()
        if self.textfile is not None:
            self.textfile.close()
        for sock in self.sockets.values():
            sock.close()
        if self.reflector is not None:
            self.reflector.close()
        if self.prober.stamp is not None:
            self.prober.stamp.close()
        if supervisor.fatal:
            raise AgentFailed(supervisor.fatal)
