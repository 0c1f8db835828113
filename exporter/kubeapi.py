"""The agent's Kubernetes API client: list and watch Nodes, review tokens.

Three kinds of request (GET, a watch stream, POST) over http.client and ssl,
which the agent loads anyway. The kubernetes package does the same, but
importing it loads some 900 modules, 33 MB more on every node
(docs/benchmarks.md). It is imported only for a kubeconfig whose credentials
only it can produce (exec and auth-provider plugins, user name and password),
which happens outside a cluster; in a cluster the agent uses its
ServiceAccount, as client-go's in-cluster config does.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import yaml

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# The kubelet rewrites a projected ServiceAccount token well before it expires;
# client-go reads the file again after a minute, and so does this.
TOKEN_REREAD_SECONDS = 60.0
# Credentials that only the kubernetes package can produce.
PLUGIN_KEYS = ("exec", "auth-provider", "username", "password")


class ApiError(Exception):
    """The API server answered with an error status (``status`` 0: no answer)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}" if status else reason)
        self.status = status
        self.reason = reason


class KubeconfigError(Exception):
    """The kubeconfig cannot be used (the message says which part and why)."""


class Stream(Protocol):
    """An open watch: its lines as they come; close() (from any thread) ends them."""

    def lines(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


class Api(Protocol):
    """What discovery and the /metrics authorizer ask of the API server."""

    def get_json(self, path: str, query: dict[str, str], timeout: float) -> dict[str, Any]: ...

    def post_json(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]: ...

    def stream(
        self, path: str, query: dict[str, str], connect_timeout: float, read_timeout: float
    ) -> Stream: ...


class TokenFile:
    """A bearer token kept in a file, read again at most once a minute (rotated tokens)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._token = ""
        self._read_at = -TOKEN_REREAD_SECONDS
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if now - self._read_at >= TOKEN_REREAD_SECONDS or not self._token:
                self._token = self.path.read_text().strip()
                self._read_at = now
            return self._token


class _HttpStream:
    def __init__(self, connection: http.client.HTTPConnection) -> None:
        self._connection = connection
        self._response = connection.getresponse()

    def check(self) -> _HttpStream:
        if self._response.status >= 300:
            error = _error(self._response.status, self._response.reason, self._response.read())
            self.close()
            raise error
        return self

    def lines(self) -> Iterator[bytes]:
        readline = self._response.readline
        while line := readline():
            yield line

    def close(self) -> None:
        sock = self._connection.sock
        if sock is not None:
            with contextlib.suppress(OSError):  # unblocks a reader in another thread
                sock.shutdown(socket.SHUT_RDWR)
        self._connection.close()


class ApiServer:
    """One API server, reached with http.client: a new connection per request (a
    list now and then, one long watch, two reviews a minute at most)."""

    def __init__(
        self,
        url: str,
        tls: ssl.SSLContext | None,
        token: Callable[[], str] | None,
        server_name: str | None = None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        try:
            port = parsed.port
        except ValueError:
            port = -1
        if parsed.scheme not in ("https", "http") or not parsed.hostname or port == -1:
            raise KubeconfigError(f"server {url!r} is not an http(s) URL")
        self.url = url
        self.host = parsed.hostname
        self.port = port or (443 if parsed.scheme == "https" else 80)
        self.prefix = parsed.path.rstrip("/")
        self.tls = tls if parsed.scheme == "https" else None
        self.token = token
        self.server_name = server_name

    def _request(
        self, method: str, path: str, query: dict[str, str], body: bytes | None, timeout: float
    ) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection
        if self.tls is not None:
            connection = _HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.tls, name=self.server_name
            )
        else:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        target = self.prefix + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json", "User-Agent": "node-ping-exporter"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token()}"
        try:
            connection.request(method, target, body=body, headers=headers)
        except BaseException:
            connection.close()
            raise
        return connection

    def _json(
        self, method: str, path: str, query: dict[str, str], body: bytes | None, timeout: float
    ) -> dict[str, Any]:
        connection = self._request(method, path, query, body, timeout)
        try:
            response = connection.getresponse()
            data = response.read()
            if response.status >= 300:
                raise _error(response.status, response.reason, data)
        finally:
            connection.close()
        answer = json.loads(data)
        if not isinstance(answer, dict):
            raise ApiError(response.status, "the answer is not a JSON object")
        return answer

    def get_json(self, path: str, query: dict[str, str], timeout: float) -> dict[str, Any]:
        return self._json("GET", path, query, None, timeout)

    def post_json(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self._json("POST", path, {}, json.dumps(body).encode(), timeout)

    def stream(
        self, path: str, query: dict[str, str], connect_timeout: float, read_timeout: float
    ) -> Stream:
        connection = self._request("GET", path, query, None, connect_timeout)
        try:
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout)
            return _HttpStream(connection).check()
        except BaseException:
            connection.close()
            raise


class _HTTPSConnection(http.client.HTTPSConnection):
    """Verifies the certificate for ``name`` (kubeconfig tls-server-name) when given."""

    def __init__(
        self, host: str, port: int, timeout: float, context: ssl.SSLContext, name: str | None
    ) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self._name = name

    def connect(self) -> None:
        if self._name is None:
            super().connect()
            return
        http.client.HTTPConnection.connect(self)
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self._name)  # type: ignore[attr-defined]


def _error(status: int, reason: str, body: bytes) -> ApiError:
    """The API server's own message (a Status object) when it sent one."""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(body).get("message")
        if message:
            return ApiError(status, str(message))
    return ApiError(status, reason)


# -- where the API server is -------------------------------------------------------


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def in_cluster_api(
    account: Path = SERVICE_ACCOUNT, clock: Callable[[], float] = time.monotonic
) -> ApiServer:
    """The API server a pod reaches through its ServiceAccount (as client-go does)."""
    host = os.environ.get("KUBERNETES_SERVICE_HOST", "")
    if not host:
        raise KubeconfigError("not in a pod: KUBERNETES_SERVICE_HOST is not set")
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    try:
        context = ssl.create_default_context(cafile=str(account / "ca.crt"))
        token = TokenFile(account / "token", clock)
        token()
    except OSError as exc:
        raise KubeconfigError(f"no ServiceAccount credentials in {account}: {exc}") from None
    return ApiServer(f"https://{host}:{port}", context, token)


def kubeconfig_api(path: Path) -> Api:
    """The API server of the kubeconfig's current context, with its credentials."""
    try:
        config = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise KubeconfigError(exc.strerror or str(exc)) from None
    except yaml.YAMLError as exc:  # its message quotes the line, which may hold a secret
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise KubeconfigError(f"not valid YAML{at}") from None
    if not isinstance(config, dict):
        raise KubeconfigError("not a kubeconfig (no mapping at the top)")
    context = _named(config, "contexts", str(config.get("current-context") or ""), "context")
    cluster = _named(config, "clusters", str(context.get("cluster") or ""), "cluster")
    user = _named(config, "users", str(context.get("user") or ""), "user", missing_ok=True)
    if any(user.get(key) for key in PLUGIN_KEYS) or cluster.get("proxy-url"):
        return plugin_api(path)
    base = path.parent
    try:
        # The cluster's CA, when given, is the only one trusted (as in client-go); the
        # system's CAs only for a server without one (a managed API server's public
        # certificate).
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cluster.get("insecure-skip-tls-verify"):
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            tls.load_verify_locations(cadata=_decoded(cluster["certificate-authority-data"]))
        elif cluster.get("certificate-authority"):
            tls.load_verify_locations(cafile=str(base / cluster["certificate-authority"]))
        else:
            tls.load_default_certs()
        cert, key = user.get("client-certificate-data"), user.get("client-key-data")
        if cert and key:
            _load_cert_chain_from_memory(tls, _decoded(cert), _decoded(key))
        elif user.get("client-certificate") and user.get("client-key"):
            tls.load_cert_chain(base / user["client-certificate"], base / user["client-key"])
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise KubeconfigError(f"TLS settings: {exc}") from None
    token: Callable[[], str] | None = None
    if user.get("token"):
        static = str(user["token"])
        token = lambda: static  # noqa: E731
    elif user.get("tokenFile"):
        token = TokenFile(base / str(user["tokenFile"]))
    return ApiServer(str(cluster.get("server") or ""), tls, token, cluster.get("tls-server-name"))


def _named(
    config: dict[str, Any], section: str, name: str, field: str, missing_ok: bool = False
) -> dict[str, Any]:
    for entry in config.get(section) or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(field) or {}
            if isinstance(value, dict):
                return value
    if missing_ok and not name:
        return {}
    raise KubeconfigError(f"no {field} named {name!r} in {section}")


def _decoded(data: str) -> str:
    return base64.b64decode(data).decode()


def _load_cert_chain_from_memory(context: ssl.SSLContext, cert: str, key: str) -> None:
    """ssl reads a client certificate only from files, and the agent's root filesystem
    is read-only: anonymous memory files (memfd) serve instead."""
    descriptors = []
    try:
        for name, text in (("cert", cert), ("key", key)):
            fd = os.memfd_create(f"kubeconfig-{name}")
            descriptors.append(fd)
            os.write(fd, text.encode())
        cert_fd, key_fd = descriptors
        context.load_cert_chain(f"/proc/self/fd/{cert_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        for fd in descriptors:
            os.close(fd)


def connect(kubeconfig: Path | None) -> Api:
    """The API server: the ServiceAccount's in a pod (unless a kubeconfig is given),
    else the kubeconfig's (--kubeconfig, $KUBECONFIG or ~/.kube/config)."""
    if kubeconfig is None and in_cluster():
        return in_cluster_api()
    if kubeconfig is None:
        paths = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
        if len(paths) > 1:
            return plugin_api(None)  # merged kubeconfigs: the kubernetes package's rules
        kubeconfig = Path(paths[0]) if paths else Path.home() / ".kube" / "config"
    return kubeconfig_api(kubeconfig)


# -- the kubernetes package, for what only it can do ---------------------------------


class _PluginStream:
    def __init__(self, response: Any) -> None:
        self._response = response

    def lines(self) -> Iterator[bytes]:
        from kubernetes.watch.watch import iter_resp_lines  # the package's own splitter

        for line in iter_resp_lines(self._response):  # type: ignore[no-untyped-call]
            yield line.encode()

    def close(self) -> None:
        sock = getattr(getattr(self._response, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._response.release_conn()


class PluginApi:
    """The same requests through the kubernetes package's ApiClient (imported here
    only), for kubeconfigs with exec or auth-provider plugins, basic auth or a proxy."""

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client

    def _call(self, method: str, path: str, query: dict[str, str], body: Any, timeout: Any) -> Any:
        client = self.api_client
        method, url, headers, body, _ = client.param_serialize(
            method, path, query_params=list(query.items()),
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            body=body, auth_settings=["BearerToken"],
        )  # fmt: skip
        response = client.call_api(method, url, headers, body, _request_timeout=timeout)
        if response.status >= 300:
            raise _error(response.status, str(response.reason), response.read() or b"")
        return response

    def get_json(self, path: str, query: dict[str, str], timeout: float) -> dict[str, Any]:
        return dict(json.loads(self._call("GET", path, query, None, timeout).read()))

    def post_json(self, path: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
        return dict(json.loads(self._call("POST", path, {}, body, timeout).read()))

    def stream(
        self, path: str, query: dict[str, str], connect_timeout: float, read_timeout: float
    ) -> Stream:
        response = self._call("GET", path, query, None, (connect_timeout, read_timeout))
        return _PluginStream(response.response)


def plugin_api(kubeconfig: Path | None) -> PluginApi:
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None,
            client_configuration=configuration,
        )
    except Exception as exc:
        raise KubeconfigError(str(exc)) from None
    return PluginApi(client.ApiClient(configuration))
