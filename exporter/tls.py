"""HTTPS for the agent's endpoints: a server certificate, optionally client certificates.

cert-manager and kubelet-style rotation replace the files in place, so the
files are checked (inode, size, mtime) at most once a second and a changed
set is loaded into a new context for the next connections. A set that fails
to load (half-written, mismatched key) is logged once and the last good
context stays in use: a bad rotation never takes the endpoint down.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path

from .config import ConfigError

log = logging.getLogger(__name__)

CHECK_EVERY_SECONDS = 1.0


def load_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """A server context: TLS 1.2 or later. With a client CA, a certificate the client
    presents must be signed by it (or the handshake fails); whether one is needed at
    all is decided per path (exporter.server): /metrics needs one, the health
    endpoints do not, so the kubelet's HTTPS probes work without one."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca is not None:
        context.load_verify_locations(cafile=client_ca)
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


class TlsFiles:
    """The current server context, reloaded when its files change."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None) -> None:
        self.client_certificates = client_ca is not None  # required for /metrics
        self.paths = [p for p in (cert, key, client_ca) if p is not None]
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._checked = 0.0
        self._failed_stamp: tuple[tuple[int, int, int], ...] | None = None
        self.reloads = 0
        self.reload_errors = 0
        try:
            self._stamp = self._stamps()
            self._context = load_context(cert, key, client_ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            raise ConfigError(
                f"invalid setting 'tls_cert_file' (--tls-cert-file / --tls-key-file / "
                f"--tls-client-ca-file): cannot load the certificate files: {_problem(exc)}"
            ) from None

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self.paths:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def context(self) -> ssl.SSLContext:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < CHECK_EVERY_SECONDS:
                return self._context
            self._checked = now
            try:
                stamp = self._stamps()
            except OSError:
                return self._context  # mid-rotation: try again in a second
            if stamp == self._stamp or stamp == self._failed_stamp:
                return self._context
            try:
                self._context = load_context(self._cert, self._key, self._client_ca)
            except (OSError, ssl.SSLError, ValueError) as exc:
                self._failed_stamp = stamp
                self.reload_errors += 1
                log.error(
                    "cannot load the new certificate files, keeping the last good ones",
                    extra={"problem": _problem(exc)},
                )
                return self._context
            self._stamp = stamp
            self.reloads += 1
            log.info("certificate files reloaded")
            return self._context


def _problem(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
