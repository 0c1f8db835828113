"""The endpoint's protection without an API server: HTTPS, client certificates,
certificate rotation, and bearer-token checks that fail closed. Real tokens against
a real API server: test_kube_auth.py."""

from __future__ import annotations

import http.client
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exporter.auth import KubernetesAuthorizer
from exporter.config import ConfigError
from exporter.kubeapi import ApiServer
from exporter.server import Authorize, make_server, serve_in_thread
from exporter.tls import TlsFiles

from .certs import make_ca, make_cert

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="no openssl command")


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca = make_ca(tmp_path, "ca")
    server = make_cert(tmp_path, "server", ca)
    client_ca = make_ca(tmp_path, "client-ca")
    client = make_cert(tmp_path, "scraper", client_ca, san="DNS:scraper")
    stranger = make_cert(tmp_path, "stranger", make_ca(tmp_path, "other-ca"), san="DNS:x")
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(server[0], live / "tls.crt")
    shutil.copy(server[1], live / "tls.key")
    return {
        "ca": ca[0],
        "cert": live / "tls.crt",
        "key": live / "tls.key",
        "client_ca": client_ca[0],
        "client_cert": client[0],
        "client_key": client[1],
        "stranger_cert": stranger[0],
        "stranger_key": stranger[1],
        "dir": tmp_path,
    }


def serve(tls: TlsFiles | None, authorize: Authorize | None = None) -> Iterator[int]:
    server = make_server(
        "127.0.0.1",
        0,
        lambda accept: (b"kube_node_ping_peers 1\n", "text/plain"),
        lambda: (True, "ok"),
        lambda: (True, "ok"),
        timeout=2.0,
        tls=tls,
        authorize=authorize,
    )
    serve_in_thread(server)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def get(
    port: int,
    path: str,
    ca: Path | None = None,
    client: tuple[Path, Path] | None = None,
    **headers: str,
) -> tuple[int, bytes, Any]:
    """GET over HTTPS (with ``ca``) or plain HTTP; returns status, body and the peer cert."""
    if ca is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        context = ssl.create_default_context(cafile=str(ca))
        if client:
            context.load_cert_chain(*client)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        sock = conn.sock
        peer = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
        return response.status, response.read(), peer
    finally:
        conn.close()


def test_https_serves_and_plain_http_gets_nothing(pki: dict[str, Path], capfd: Any) -> None:
    for port in serve(TlsFiles(pki["cert"], pki["key"], None)):
        status, body, _ = get(port, "/metrics", ca=pki["ca"])
        assert status == 200 and b"kube_node_ping_peers" in body
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            get(port, "/metrics")  # plain HTTP to the TLS port
        status, _, _ = get(port, "/healthz", ca=pki["ca"])
        assert status == 200
    assert "Traceback" not in capfd.readouterr().err


def test_client_certificates_are_required_for_metrics_when_a_ca_is_given(
    pki: dict[str, Path],
) -> None:
    for port in serve(TlsFiles(pki["cert"], pki["key"], pki["client_ca"])):
        client = (pki["client_cert"], pki["client_key"])
        assert get(port, "/metrics", ca=pki["ca"], client=client)[0] == 200
        status, body, _ = get(port, "/metrics", ca=pki["ca"])  # no certificate
        assert status == 403 and b"kube_node_ping" not in body
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):  # signed by another CA
            get(port, "/metrics", ca=pki["ca"], client=(pki["stranger_cert"], pki["stranger_key"]))
        # The health endpoints answer the kubelet's HTTPS probes, which carry no certificate.
        assert get(port, "/healthz", ca=pki["ca"])[0] == 200
        assert get(port, "/readyz", ca=pki["ca"])[0] == 200


def test_rotated_certificates_are_used_and_a_bad_rotation_keeps_the_last_good(
    pki: dict[str, Path],
) -> None:
    tls = TlsFiles(pki["cert"], pki["key"], None)
    for port in serve(tls):
        first = get(port, "/metrics", ca=pki["ca"])[2]
        renewed = make_cert(pki["dir"], "renewed", (pki["ca"], pki["ca"].with_suffix(".key")))
        shutil.copy(renewed[1], pki["key"])
        shutil.copy(renewed[0], pki["cert"])
        time.sleep(1.1)  # files are looked at once a second at most
        second = get(port, "/metrics", ca=pki["ca"])[2]
        assert second != first and tls.reloads == 1
        pki["key"].write_text("half-written\n")
        time.sleep(1.1)
        status, _, third = get(port, "/metrics", ca=pki["ca"])
        assert status == 200 and third == second and tls.reloads == 1


def test_bad_certificate_files_are_a_config_error(pki: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="invalid setting 'tls_cert_file'"):
        TlsFiles(pki["cert"], pki["client_key"], None)  # key of another certificate
    with pytest.raises(ConfigError, match="cannot load"):
        TlsFiles(pki["dir"] / "missing.crt", pki["key"], None)


def unreachable_api(tmp_path: Path) -> Any:
    return ApiServer("https://127.0.0.1:1", ssl.create_default_context(), None)  # nothing there


def test_tokens_fail_closed_when_the_api_server_cannot_be_asked(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    authorizer = KubernetesAuthorizer(unreachable_api(tmp_path))
    for port in serve(TlsFiles(pki["cert"], pki["key"], None), authorizer.check):
        assert get(port, "/metrics", ca=pki["ca"])[0] == 401  # no token at all
        assert get(port, "/metrics", ca=pki["ca"], Authorization="Basic eDp5")[0] == 401
        status, body, _ = get(port, "/metrics", ca=pki["ca"], Authorization="Bearer t0ken")
        assert status == 503 and b"kube_node_ping" not in body
        assert get(port, "/healthz", ca=pki["ca"])[0] == 200  # the kubelet's probes
        assert get(port, "/readyz", ca=pki["ca"])[0] == 200


def test_made_up_tokens_neither_flood_the_api_server_nor_evict_the_scraper(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The review itself is scripted (slow, allowing one token): what is tested is the
    cache and the cap around it."""
    import threading

    from exporter import auth

    authorizer = KubernetesAuthorizer(unreachable_api(tmp_path))
    calls: list[str] = []
    gate = threading.Event()

    def review(token: str, path: str) -> auth.Decision:
        calls.append(token)
        if token == "slow":
            gate.wait(5)
        return (200, "ok") if token == "scraper" else (401, "no")

    monkeypatch.setattr(authorizer, "_review", review)
    assert authorizer.check("Bearer scraper", "/metrics") == (200, "ok")
    for i in range(auth.CACHE_ENTRIES + 10):  # more refusals than the table holds
        assert authorizer.check(f"Bearer junk-{i}", "/metrics")[0] == 401
    assert authorizer.check("Bearer scraper", "/metrics") == (200, "ok")
    assert calls.count("scraper") == 1  # still cached
    # At most REVIEWS_AT_ONCE reviews at a time; the rest are refused at once.
    threads = [
        threading.Thread(target=authorizer.check, args=("Bearer slow", "/metrics"))
        for _ in range(auth.REVIEWS_AT_ONCE)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    assert authorizer.check("Bearer another", "/metrics")[0] == 503
    gate.set()
    for thread in threads:
        thread.join()
    assert authorizer.check("Bearer another", "/metrics")[0] == 401
