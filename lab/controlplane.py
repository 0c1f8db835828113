"""A real Kubernetes control plane on this machine, for the tests and the lab.

kube-apiserver and kube-controller-manager built from the ``k8s.io/kubernetes``
Go module, etcd at the version kubeadm pins for that release (Debian's 3.4 is
below Kubernetes' minimum), all by ``scripts/build-controlplane.sh`` and cached
per machine. Everything listens on
127.0.0.1 of the host namespace, on free ports; a lab's nodes reach the API
server through a forwarder in the lab's hub (``lab/forward.py``), at
``198.18.0.254:6443``, which the serving certificate names.

Authentication as in a production cluster, minus the parts a lab cannot have:
a static token for the admin (group ``system:masters``) and one for the
controller manager, service-account tokens signed with a key made here
(TokenRequest works), RBAC the only authorizer. Certificates, etcd's data, logs
and the state (ports, process ids) live in ``/tmp/node-ping-kube/<name>/``.

    node-ping-controlplane up | down | status | build | stop-apiserver | ...
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .process import ROOT, alive, kill_all, spawn, write_atomically

STATE_ROOT = Path("/tmp/node-ping-kube")
BINARIES = ROOT / ".cache" / "controlplane"  # made by scripts/build-controlplane.sh
BUILD_SCRIPT = ROOT / "scripts" / "build-controlplane.sh"
LAB_ADDRESS = "198.18.0.254"  # the lab hub's address, where its forwarder listens
LAB_PORT = 6443
# Service IPs are never routed here; they come from the benchmark range anyway.
SERVICE_RANGE, SERVICE_IP = "198.19.0.0/24", "198.19.0.1"
ISSUER = "https://kubernetes.default.svc"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ControlPlaneError(Exception):
    """The control plane cannot be built, started or reached; the message says why."""


def unavailable() -> str | None:
    """Why the control plane cannot run on this machine, or None when it can."""
    if shutil.which("openssl") is None:
        return "openssl is not installed (apt-get install openssl)"
    if not _built() and shutil.which("go") is None:
        return "the control plane is not built and Go is not installed to build it"
    return None


def _built() -> bool:
    return all((BINARIES / name).is_file() for name in (*COMPONENTS, "etcdctl", "kubelet"))


def build() -> Path:
    """The directory holding kube-apiserver and kube-controller-manager, built when missing."""
    if not _built():
        result = subprocess.run([str(BUILD_SCRIPT)], cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0 or not _built():
            tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
            raise ControlPlaneError(
                f"building the control plane failed ({BUILD_SCRIPT.name}): {' | '.join(tail)}"
            )
    return BINARIES.resolve()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ports:
    etcd: int = field(default_factory=free_port)
    etcd_peer: int = field(default_factory=free_port)
    apiserver: int = field(default_factory=free_port)
    controller_manager: int = field(default_factory=free_port)
    scheduler: int = field(default_factory=free_port)


class ControlPlane:
    """A handle on one control plane, by name; state is read from its directory."""

    def __init__(self, name: str = "default") -> None:
        self.name = name
        self.dir = STATE_ROOT / name
        self.pki = self.dir / "pki"
        self.logs = self.dir / "logs"
        self.state_file = self.dir / "state.json"
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"

    # -- state -------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            raise ControlPlaneError(
                f"control plane '{self.name}' is not up (node-ping-controlplane up)"
            ) from None

    def _save(self, state: dict[str, Any]) -> None:
        write_atomically(self.state_file, json.dumps(state, indent=1))

    @property
    def ports(self) -> Ports:
        return Ports(**self._load()["ports"])

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"

    def running(self, component: str = "kube-apiserver") -> bool:
        if not self.state_file.exists():
            return False
        pid = self._load()["pids"].get(component)
        return pid is not None and alive(pid)

    # -- up and down ---------------------------------------------------------------

    def up(self, controller_manager: bool = True, timeout: float = 90) -> None:
        """Start etcd, the API server and (optionally) the controller manager; wait ready."""
        why = unavailable()
        if why:
            raise ControlPlaneError(why)
        build()
        self.down()
        for directory in (self.pki, self.logs):
            directory.mkdir(parents=True)
        self._save({"ports": asdict(Ports()), "pids": {}})
        try:
            self._make_credentials()
            self._write_kubeconfig(self.admin_kubeconfig, self.server, self._tokens()["admin"])
            self.start("etcd")
            self._wait(self._etcd_healthy, timeout, "etcd")
            self.start("kube-apiserver")
            self.wait_ready(timeout)
            if controller_manager:
                self.start("kube-controller-manager")
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every component and remove the directory. Idempotent."""
        if self.state_file.exists():
            with suppress(ControlPlaneError, ValueError, KeyError):  # a broken state file
                kill_all(set(self._load()["pids"].values()), grace=10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, component: str) -> None:
        state = self._load()
        pid = state["pids"].get(component)
        if pid is not None and alive(pid):
            raise ControlPlaneError(f"{component} is already running (pid {pid})")
        args = {
            "etcd": self._etcd_args,
            "kube-apiserver": self._apiserver_args,
            "kube-controller-manager": self._controller_manager_args,
            "kube-scheduler": self._scheduler_args,
        }[component]()
        state["pids"][component] = spawn(args, self.logs / f"{component}.log")
        self._save(state)

    def ensure(self, component: str) -> None:
        """Start the component unless it runs (the scheduler: only labs with kubelets
        need pods bound to nodes)."""
        if component == "kube-scheduler" and "scheduler" not in self._tokens():
            raise ControlPlaneError(
                f"control plane '{self.name}' was made by an older version, without what "
                f"Kubernetes nodes need: node-ping-controlplane --name {self.name} up"
            )
        if not self.running(component):
            self.start(component)

    def stop(self, component: str) -> None:
        state = self._load()
        pid = state["pids"].pop(component, None)
        if pid is not None:
            kill_all({pid}, signal.SIGTERM, grace=10)
        self._save(state)

    def wait_ready(self, timeout: float = 90) -> None:
        self._wait(lambda: self._get("/readyz")[0] == 200, timeout, "kube-apiserver /readyz")

    def _wait(self, check: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.3)
        raise ControlPlaneError(f"{what} not ready after {timeout:.0f}s (logs in {self.logs})")

    # -- component command lines -----------------------------------------------------

    def _etcd_args(self) -> list[str]:
        ports = self.ports
        client, peer = f"http://127.0.0.1:{ports.etcd}", f"http://127.0.0.1:{ports.etcd_peer}"
        return [
            str(BINARIES / "etcd"),
            "--name=npe",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=npe={peer}",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        pki, ports = self.pki, self.ports
        return [
            str(BINARIES / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ports.etcd}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports.apiserver}",
            f"--advertise-address={LAB_ADDRESS}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            # As kubeadm sets it up: kubelets authorized as their own node only.
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            f"--cert-dir={self.dir / 'apiserver'}",
            "--allow-privileged=true",  # the chart's raw mode and ping-range init container
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_args(self) -> list[str]:
        kubeconfig = self.dir / "controller-manager.kubeconfig"
        self._write_kubeconfig(kubeconfig, self.server, self._tokens()["controller-manager"])
        return [
            str(BINARIES / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            # What a DaemonSet and `helm uninstall` need: pods per node, owned
            # objects collected, namespaces finalized, default service accounts;
            # what pods on real kubelets need: the CA in every namespace (service
            # account volumes), endpoints for the monitors' Services, and the
            # StatefulSet prometheus-operator makes for its Prometheus; pods of
            # deleted nodes removed.
            "--controllers=daemonset,garbagecollector,namespace,serviceaccount,"
            "root-ca-cert-publisher,endpoint,endpointslice,statefulset,podgc",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.controller_manager}",
            f"--cert-dir={self.dir / 'controller-manager'}",
            f"--root-ca-file={self.pki / 'ca.crt'}",
            "--v=1",
        ]

    def _scheduler_args(self) -> list[str]:
        kubeconfig = self.dir / "scheduler.kubeconfig"
        self._write_kubeconfig(kubeconfig, self.server, self._tokens()["scheduler"])
        return [
            str(BINARIES / "kube-scheduler"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.ports.scheduler}",
            f"--cert-dir={self.dir / 'scheduler'}",
            "--v=1",
        ]

    # -- credentials ---------------------------------------------------------------------

    def _make_credentials(self) -> None:
        pki = self.pki

        def openssl(*args: str) -> None:
            result = subprocess.run(["openssl", *args], cwd=pki, capture_output=True, text=True)
            if result.returncode != 0:
                raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")

        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
                "-subj", f"/CN=node-ping-controlplane-{self.name}")  # fmt: skip
        openssl("req", "-new", *ec, "-keyout", "apiserver.key", "-out", "apiserver.csr",
                "-subj", "/CN=kube-apiserver")  # fmt: skip
        names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        (pki / "apiserver.ext").write_text(
            "subjectAltName="
            + ",".join([f"IP:{ip}" for ip in ("127.0.0.1", LAB_ADDRESS, SERVICE_IP)])
            + "".join(f",DNS:{name}" for name in names)
            + "\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature"
            + "\nauthorityKeyIdentifier=keyid\nbasicConstraints=critical,CA:FALSE\n"
        )
        openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "30", "-out", "apiserver.crt",
                "-extfile", "apiserver.ext")  # fmt: skip
        openssl("genrsa", "-out", "sa.key", "2048")
        openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")
        users = ("admin", "controller-manager", "scheduler")
        tokens = {user: secrets.token_hex(16) for user in users}
        (pki / "tokens.json").write_text(json.dumps(tokens))
        (pki / "tokens.csv").write_text(
            f'{tokens["admin"]},admin,admin,"system:masters"\n'
            # The controller manager runs every controller under its own name
            # (no per-controller service accounts): it needs to be a superuser.
            f"{tokens['controller-manager']},system:kube-controller-manager,"
            'kube-controller-manager,"system:masters"\n'
            # The scheduler has its own roles in the bootstrap RBAC policy.
            f"{tokens['scheduler']},system:kube-scheduler,kube-scheduler\n"
        )
        for path in pki.iterdir():
            path.chmod(0o600)

    def node_credentials(self, node: str, directory: Path) -> tuple[Path, Path]:
        """A client certificate for the node's kubelet, as kubeadm issues it: CN
        ``system:node:<node>`` in group ``system:nodes`` (what the Node authorizer and
        NodeRestriction go by), signed by the cluster CA. Its (certificate, key)."""
        cert, key, request = (directory / f"{node}.{ext}" for ext in ("crt", "key", "csr"))
        ext = directory / f"{node}.ext"
        ext.write_text(
            "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
            "basicConstraints=critical,CA:FALSE\n"
        )
        for args in (
            ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(key), "-out", str(request),
             "-subj", f"/O=system:nodes/CN=system:node:{node}"],
            ["x509", "-req", "-in", str(request), "-CA", str(self.pki / "ca.crt"),
             "-CAkey", str(self.pki / "ca.key"), "-CAcreateserial", "-days", "30",
             "-out", str(cert), "-extfile", str(ext)],
        ):  # fmt: skip
            result = subprocess.run(["openssl", *args], capture_output=True, text=True)
            if result.returncode != 0:
                raise ControlPlaneError(f"openssl {args[0]} failed: {result.stderr.strip()}")
        key.chmod(0o600)
        return cert, key

    def write_client_kubeconfig(self, path: Path, server: str, cert: Path, key: Path) -> None:
        """A kubeconfig that authenticates with a client certificate (a kubelet's)."""
        write_kubeconfig(path, server, (self.pki / "ca.crt").read_text(), "", self.name,
                         client=(cert, key))  # fmt: skip

    def _tokens(self) -> dict[str, str]:
        return dict(json.loads((self.pki / "tokens.json").read_text()))

    def _write_kubeconfig(self, path: Path, server: str, token: str) -> None:
        write_kubeconfig(path, server, (self.pki / "ca.crt").read_text(), token, self.name)

    def admin_kubeconfig_at(self, path: Path, server: str) -> Path:
        """A kubeconfig with the admin's credentials for ``server`` (the API server as
        seen from a namespace, through a forwarder)."""
        self._write_kubeconfig(path, server, self._tokens()["admin"])
        return path

    def service_account_token(
        self, namespace: str, account: str, seconds: int = 86400, bound_secret: str = ""
    ) -> str:
        """A token for the service account (TokenRequest), valid for ``seconds``; with
        ``bound_secret``, only as long as that Secret exists (how a test revokes one)."""
        from kubernetes import client

        api = client.CoreV1Api(self.api_client())
        bound = None
        if bound_secret:
            secret: Any = api.read_namespaced_secret(bound_secret, namespace)
            bound = client.V1BoundObjectReference(
                api_version="v1", kind="Secret", name=bound_secret, uid=secret.metadata.uid
            )
        spec = client.V1TokenRequestSpec(
            audiences=[ISSUER], expiration_seconds=seconds, bound_object_ref=bound
        )
        request = client.AuthenticationV1TokenRequest(spec=spec)
        issued = api.create_namespaced_service_account_token(account, namespace, request).status
        if issued is None or not issued.token:
            raise ControlPlaneError(f"no token issued for {namespace}/{account}")
        return issued.token

    def service_account_kubeconfig(
        self, namespace: str, account: str, path: Path, server: str, seconds: int = 86400
    ) -> Path:
        """A kubeconfig for ``server`` holding a token issued for the service account."""
        token = self.service_account_token(namespace, account, seconds)
        self._write_kubeconfig(path, server, token)
        return path

    # -- using it --------------------------------------------------------------------------

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient with the admin's credentials."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.admin_kubeconfig))

    def helm(self, *args: str, helm: str = "helm3") -> str:
        """Run Helm (``.cache/bin/helm3`` or ``helm4``, scripts/install-tools.sh) against it."""
        binary = ROOT / ".cache" / "bin" / helm
        if not binary.exists():
            raise ControlPlaneError(f"{binary} is missing (make deps builds it)")
        result = subprocess.run(
            [str(binary), "--kubeconfig", str(self.admin_kubeconfig), *args],
            capture_output=True,
            text=True,
            env={**os.environ, "HELM_CACHE_HOME": str(self.dir / "helm"),
                 "HELM_CONFIG_HOME": str(self.dir / "helm"),
                 "HELM_DATA_HOME": str(self.dir / "helm")},
        )  # fmt: skip
        if result.returncode != 0:
            raise ControlPlaneError(f"helm {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def _get(self, path: str) -> tuple[int, str]:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self._tokens()['admin']}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5, context=context) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), ""
        except (OSError, ValueError):
            return 0, ""

    def _etcd_healthy(self) -> bool:
        return self.etcdctl("endpoint", "health", check=False).returncode == 0

    def etcdctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BINARIES / "etcdctl"), f"--endpoints=http://127.0.0.1:{self.ports.etcd}", *args],
            capture_output=True,
            text=True,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"etcdctl {args[0]} failed: {result.stderr.strip()}")
        return result

    def compact(self) -> int:
        """Advance etcd's revision and compact everything before it: every resource
        version handed out so far becomes too old to watch from (410 Gone)."""
        self.etcdctl("put", "/node-ping-test/compaction", str(time.time()))
        status = json.loads(self.etcdctl("endpoint", "status", "-w", "json").stdout)
        revision = int(status[0]["Status"]["header"]["revision"])
        self.etcdctl("compaction", str(revision))
        return revision

    def status(self) -> str:
        if not self.state_file.exists():
            return f"control plane '{self.name}': down"
        state = self._load()
        lines = [f"control plane '{self.name}': {self.dir}"]
        for component in COMPONENTS:
            pid = state["pids"].get(component)
            lines.append(
                f"  {component:24} "
                + (f"pid {pid} running" if pid is not None and alive(pid) else "stopped")
            )
        lines.append(f"  API server {self.server}; kubeconfig {self.admin_kubeconfig}")
        return "\n".join(lines)


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: str,
    token: str,
    name: str,
    client: tuple[Path, Path] | None = None,
) -> None:
    """A kubeconfig for ``server``: a bearer token, or a client certificate and key."""
    import base64

    user = (
        {"client-certificate": str(client[0]), "client-key": str(client[1])}
        if client
        else {"token": token}
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem.encode()).decode(),
                },
            }
        ],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
    path.write_text(json.dumps(config, indent=1))
    path.chmod(0o600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="node-ping-controlplane",
        description="etcd + kube-apiserver + kube-controller-manager on this machine's loopback",
    )
    parser.add_argument("--name", default="default", help="several control planes can coexist")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or reuse) kube-apiserver and kube-controller-manager")
    up = sub.add_parser("up", help="start everything; replaces a running one of the same name")
    up.add_argument("--no-controller-manager", action="store_true")
    sub.add_parser("down", help="stop everything and remove its files")
    sub.add_parser("status")
    sub.add_parser("kubeconfig", help="print the admin kubeconfig's path")
    for verb in ("start", "stop"):
        one = sub.add_parser(verb, help=f"{verb} one component (outage drills)")
        one.add_argument("component", choices=COMPONENTS)
    sub.add_parser("compact", help="compact etcd up to its current revision")
    args = parser.parse_args(argv)
    plane = ControlPlane(args.name)
    try:
        if args.command == "build":
            print(build())
        elif args.command == "up":
            plane.up(controller_manager=not args.no_controller_manager)
            print(plane.status())
        elif args.command == "down":
            plane.down()
        elif args.command == "status":
            print(plane.status())
        elif args.command == "kubeconfig":
            if not plane.running():
                raise ControlPlaneError(f"the API server of '{plane.name}' is not running")
            print(plane.admin_kubeconfig)
        elif args.command == "start":
            plane.start(args.component)
            if args.component == "kube-apiserver":
                plane.wait_ready()
        elif args.command == "stop":
            plane.stop(args.component)
        elif args.command == "compact":
            print(f"compacted at revision {plane.compact()}")
    except ControlPlaneError as exc:
        print(f"node-ping-controlplane: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
