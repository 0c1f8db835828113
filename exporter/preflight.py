"""One preflight for ``--check-config`` and start-up alike.

Everything that can be checked about the input is checked in the settings
model (exporter.config); what depends on the machine — the textfile directory,
the peers file's content, the kubeconfig — is checked here, once, and the
result is what the agent starts from. So whatever ``--check-config`` accepts,
the agent accepts, and the other way round (tests/test_preflight.py). What
neither can know in advance: whether the listen port is free when the agent
binds it, and whether an ICMP socket can be opened (exit 1, not bad input).
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import ConfigError, DiscoveryMode, MetricsAuth, Settings
from .discovery.file import load_initial
from .discovery.kubernetes import kubernetes_api
from .kubeapi import Api, in_cluster
from .peers import NodeAddress
from .textfile import check_directory
from .tls import TlsFiles


@dataclass(frozen=True)
class Plan:
    """What the agent starts from: valid settings and what was read to check them."""

    settings: Settings
    discovery: DiscoveryMode
    peers_file: tuple[bytes, list[NodeAddress]] | None = None  # file discovery's first read
    kubernetes_api: Api | None = None  # kubernetes discovery, --metrics-auth kubernetes
    tls: TlsFiles | None = None  # HTTPS: the certificate files, loaded

    def describe(self) -> str:
        s = self.settings
        detail = ""
        if self.peers_file is not None:
            detail = f", {len(self.peers_file[1])} peer addresses in {s.peers_file}"
        elif self.discovery is DiscoveryMode.STATIC:
            detail = f", {len(s.peers)} static peers"
        return f"configuration OK: node {s.node_name}, discovery {self.discovery.value}{detail}"


def choose_discovery(settings: Settings) -> DiscoveryMode:
    if settings.discovery is not DiscoveryMode.AUTO:
        return settings.discovery
    if in_cluster() or settings.kubeconfig:
        return DiscoveryMode.KUBERNETES
    if settings.peers:
        return DiscoveryMode.STATIC
    return DiscoveryMode.FILE


def preflight(settings: Settings) -> Plan:
    """Check what depends on the machine; raises ConfigError (exit 2) with one line."""
    mode = choose_discovery(settings)
    if settings.wants_textfile:
        check_directory(settings.textfile_dir)
    if mode is DiscoveryMode.STATIC and not settings.peers:
        raise ConfigError(
            "invalid setting 'peers' (--peer): static discovery needs at least one --peer NAME=IP"
        )
    peers_file = load_initial(settings.peers_file) if mode is DiscoveryMode.FILE else None
    wants_api = mode is DiscoveryMode.KUBERNETES or settings.metrics_auth is MetricsAuth.KUBERNETES
    tls = None
    if settings.wants_http and settings.tls_cert_file and settings.tls_key_file:
        tls = TlsFiles(settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file)
    return Plan(
        settings,
        mode,
        peers_file=peers_file,
        kubernetes_api=kubernetes_api(settings.kubeconfig) if wants_api else None,
        tls=tls,
    )
