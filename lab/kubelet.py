"""Lab nodes that are Kubernetes nodes: containerd and a kubelet in each node's namespace.

Each node runs what a real node runs: containerd 2.x with Debian's runc and CNI
plugins, and a kubelet built from the same ``k8s.io/kubernetes`` release as the
control plane (scripts/build-nodes.sh, scripts/build-controlplane.sh). Both are
started with ``nsenter`` into the node's network namespace and the node's own
mount namespace, both of them: the volumes the kubelet mounts are the ones runc
sees, none of them shows on the host or on another node, and they all go with the
namespace (``ip netns exec`` would give each process its own mounts and a sysfs
without cgroups). A hostNetwork pod then lives in the node's network namespace
and its address is the node's.

What several nodes on one host must not share, each node has its own: state
and data directories, sockets, runc's root, a cgroup root (``/npl-<lab>-<node>``
in every v1 hierarchy; a kubelet removes any pod cgroup under its root it does
not know), pod logs and volume plugins, and ``/var/lib/kubelet/device-plugins``,
which every kubelet uses whatever its root directory (a tmpfs in the node's mount
namespace: sharing it, kubelets removed each other's sockets and one failed to
start). Images come from the lab's registry
(lab/registry.py) at ``198.18.0.254:5000``, over plain HTTP as ``hosts.toml``
allows, the way a cluster pulls from a private registry.

Limits of this machine, not of the product, and what the lab does about them:

- cgroup v1 (hybrid): kubelet 1.35+ refuses it unless ``failCgroupV1: false``.
- root lacks CAP_SYS_RESOURCE: runc cannot raise a container's oom_score_adj,
  so containerd keeps it as it is (``restrict_oom_score_adj``).
- no kube-proxy: each node's namespace DNATs the ``kubernetes`` Service address
  (198.19.0.1:443) to the API server's forwarder in the hub, as kube-proxy
  would, so in-cluster clients (the agents) reach it as in any cluster.
- one CNI network that only has loopback: containerd reports the network
  ready, hostNetwork pods (the chart's default) run; other pods get no network.
- the kubelet sets host-wide sysctls (vm.overcommit_memory, kernel.panic,
  kernel.panic_on_oops); the lab records them first and restores them when its
  last node stops.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .controlplane import BINARIES, LAB_ADDRESS, LAB_PORT, SERVICE_IP, ControlPlane
from .cpu import remove_cgroup
from .netns import sh
from .network import Network
from .process import alive, kill_all, spawn
from .registry import HUB_PORT, NODE_BINARIES
from .state import LabConfig, LabError, Workdir

RUNC = Path("/usr/sbin/runc")  # Debian's, with seccomp
CNI_BIN = Path("/usr/lib/cni")  # Debian's containernetworking-plugins
REGISTRY = f"{LAB_ADDRESS}:{HUB_PORT}"  # the lab's registry, as the nodes see it
PAUSE_TAG = "3.10.2"  # kubeadm's for Kubernetes v1.37 (scripts/build-nodes.sh)
PAUSE_IMAGE = f"{REGISTRY}/pause:{PAUSE_TAG}"
DEVICE_PLUGINS = Path("/var/lib/kubelet/device-plugins")  # fixed in the kubelet
RUN_DIR = Path("/run/npl")  # sockets and runtime state: short paths (108-byte limit)
SAVED_SYSCTLS = RUN_DIR / "sysctls.json"  # what the first kubelet found (see below)
CGROUP_FS = Path("/sys/fs/cgroup")
# The hierarchies a kubelet with cgroupfs checks for its root, plus those runc joins.
CGROUP_CONTROLLERS = (
    "cpu", "cpuacct", "cpuset", "memory", "pids", "systemd", "blkio", "devices", "freezer",
)  # fmt: skip
# Host-wide sysctls the kubelet sets at start (setupKernelTunables): put back on teardown.
KUBELET_SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
)  # fmt: skip


def unavailable() -> str | None:
    """Why lab nodes cannot be Kubernetes nodes on this machine, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, cgroups, mounts)"
    missing = [c for c in CGROUP_CONTROLLERS if not (CGROUP_FS / c).is_dir()]
    if missing:
        return (
            f"expects cgroup v1 hierarchies under {CGROUP_FS} (this machine's layout); "
            f"missing: {', '.join(missing)}"
        )
    for path, package in ((RUNC, "runc"), (CNI_BIN / "loopback", "containernetworking-plugins")):
        if not path.exists():
            return f"{path} is missing (apt-get install {package})"
    for name in ("containerd", "containerd-shim-runc-v2", "ctr", "pause"):
        if not (NODE_BINARIES / name).exists():
            return f"{name} is not built (scripts/build-nodes.sh)"
    if not (BINARIES / "kubelet").exists():
        return "the kubelet is not built (scripts/build-controlplane.sh)"
    return None


@dataclass(frozen=True)
class NodePaths:
    """Where one node keeps what is its own."""

    data: Path  # containerd's root, the kubelet's root, pod logs, configuration
    run: Path  # containerd's state and sockets, runc's root
    cgroup: str  # the kubelet's cgroupRoot

    @property
    def mounts(self) -> Path:
        """The node's mount namespace, kept by a bind mount of it on this file."""
        return self.run.parent / f"{self.run.name}.mnt"

    @property
    def socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.data / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.data / "pod-logs"


class KubeletNodes:
    """One lab's Kubernetes nodes: started, checked, stopped, one node at a time."""

    def __init__(self, workdir: Workdir, network: Network) -> None:
        self.workdir = workdir
        self.network = network

    def paths(self, node: str) -> NodePaths:
        return NodePaths(
            data=self.workdir.path / "nodes" / node,
            run=RUN_DIR / self.workdir.name / node,
            cgroup=f"/npl-{self.workdir.name}-{node}",
        )

    # -- up ----------------------------------------------------------------------------

    def start(self, plane: ControlPlane, config: LabConfig, node: str) -> dict[str, int]:
        """containerd, then the kubelet, in the node's namespace; their pids by name."""
        why = unavailable()
        if why:
            raise LabError(f"lab nodes cannot be Kubernetes nodes here: {why}")
        paths = self.paths(node)
        for directory in (paths.data, paths.run, paths.pod_logs, paths.data / "cni"):
            directory.mkdir(parents=True, exist_ok=True)
        self._save_sysctls()
        for controller in CGROUP_CONTROLLERS:
            (CGROUP_FS / controller / paths.cgroup.lstrip("/")).mkdir(exist_ok=True)
        self._route_service_address(node)
        self._make_mount_namespace(paths)
        self._write_containerd_config(paths)
        pids = {f"containerd/{node}": self._spawn(node, self._containerd_args(paths), "containerd")}
        self._wait(lambda: paths.socket.exists(), 30, f"containerd on {node}")
        self._write_kubelet_config(plane, config, node, paths)
        kubelet = self._kubelet_args(config, node, paths)
        pids[f"kubelet/{node}"] = self._spawn(node, kubelet, "kubelet")
        return pids

    def _namespace(self, node: str) -> str:
        return self.network.namespace(node).name

    def _spawn(self, node: str, args: list[str], what: str) -> int:
        network = f"/run/netns/{self._namespace(node)}"
        return spawn(["nsenter", f"--net={network}", f"--mount={self.paths(node).mounts}", "--",
                      *args], self.workdir.logs / f"{what}-{node}.log")  # fmt: skip

    @staticmethod
    def _make_mount_namespace(paths: NodePaths) -> None:
        """A private copy of the host's mounts for the node, with a device-plugins
        directory of its own (the kubelet's path for it is fixed)."""
        if paths.mounts.exists():
            return
        DEVICE_PLUGINS.mkdir(parents=True, exist_ok=True)
        paths.mounts.touch()
        enter = ["nsenter", f"--mount={paths.mounts}", "--"]
        try:
            sh(["unshare", f"--mount={paths.mounts}", "--propagation", "private", "true"])
            sh([*enter, "mount", "-t", "tmpfs", "-o", "size=1m,mode=0750",
                "npl-device-plugins", str(DEVICE_PLUGINS)])  # fmt: skip
        except RuntimeError as exc:  # e.g. /run a shared mount (unshare refuses the file)
            raise LabError(f"cannot give the node its own mounts: {exc}") from None
        # The copy holds every network namespace's bind mount, which would keep other
        # labs' namespaces alive after they are deleted: not the node's to hold.
        sh([*enter, "umount", "-R", "-l", "/run/netns"], check=False)

    def _route_service_address(self, node: str) -> None:
        """What kube-proxy would do for the ``kubernetes`` Service: its address routed
        and DNATed to the API server's forwarder in the hub."""
        ns = self.network.namespace(node)
        ns.ip("route", "replace", f"{SERVICE_IP}/32", "via", LAB_ADDRESS)
        ns.nft(
            "table ip npl-services {\n"
            "  chain output {\n"
            "    type nat hook output priority -100;\n"
            f"    ip daddr {SERVICE_IP} tcp dport 443 dnat to {LAB_ADDRESS}:{LAB_PORT}\n"
            "  }\n"
            "}\n"
        )

    def _containerd_args(self, paths: NodePaths) -> list[str]:
        return [str(NODE_BINARIES / "containerd"), "--config", str(paths.data / "containerd.toml")]

    def _write_containerd_config(self, paths: NodePaths) -> None:
        registry = paths.data / "certs.d" / REGISTRY
        registry.mkdir(parents=True, exist_ok=True)
        (registry / "hosts.toml").write_text(
            f'server = "http://{REGISTRY}"\n\n'
            f'[host."http://{REGISTRY}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        # The network containerd needs to call itself ready: loopback only.
        (paths.data / "cni" / "10-npl.conflist").write_text(
            json.dumps({"cniVersion": "1.0.0", "name": "npl", "plugins": [{"type": "loopback"}]})
        )
        runtime = "plugins.'io.containerd.cri.v1.runtime'"
        runc = f"{runtime}.containerd.runtimes.runc"
        (paths.data / "containerd.toml").write_text(
            f"""version = 3
root = "{paths.data / "containerd"}"
state = "{paths.run / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = "{paths.socket}.ttrpc"

[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.internal.v1.opt']
  path = "{paths.data / "opt"}"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{paths.data / "certs.d"}"
[{runtime}]
  restrict_oom_score_adj = true
  [{runtime}.containerd]
    default_runtime_name = "runc"
  [{runc}]
    runtime_type = "io.containerd.runc.v2"
    runtime_path = "{NODE_BINARIES.resolve() / "containerd-shim-runc-v2"}"
  [{runc}.options]
    BinaryName = "{RUNC}"
    Root = "{paths.run / "runc"}"
    SystemdCgroup = false
  [{runtime}.cni]
    bin_dirs = ["{CNI_BIN}"]
    conf_dir = "{paths.data / "cni"}"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""
        )

    def _write_kubelet_config(
        self, plane: ControlPlane, config: LabConfig, node: str, paths: NodePaths
    ) -> None:
        pki = paths.data / "pki"
        pki.mkdir(exist_ok=True)
        cert, key = plane.node_credentials(node, pki)
        plane.write_client_kubeconfig(
            paths.data / "kubelet.kubeconfig", f"https://{LAB_ADDRESS}:{LAB_PORT}", cert, key
        )
        address = config.addresses(node)[0]
        settings = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,  # this machine mounts cgroup v1
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": paths.cgroup,
            "containerRuntimeEndpoint": f"unix://{paths.socket}",
            "podLogsDir": str(paths.pod_logs),
            "volumePluginDir": str(paths.data / "volume-plugins"),
            "address": address,
            "healthzBindAddress": "127.0.0.1",
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(plane.pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "makeIPTablesUtilChains": False,
            "serializeImagePulls": False,
            "failSwapOn": False,
            "resolvConf": "/etc/resolv.conf",
            "syncFrequency": "10s",
            # The lab's three nodes share the host's disk, which a build machine may
            # fill past the default thresholds (15 % free for images): evict only when
            # it is really full, not the agents a test is waiting for.
            "evictionHard": {
                "nodefs.available": "1%",
                "imagefs.available": "1%",
                "memory.available": "100Mi",
            },
            "imageGCHighThresholdPercent": 99,
            "imageGCLowThresholdPercent": 98,
        }
        (paths.data / "kubelet.yaml").write_text(json.dumps(settings, indent=1))

    def _kubelet_args(self, config: LabConfig, node: str, paths: NodePaths) -> list[str]:
        labels = [f"node-ping-lab={self.workdir.name}"]
        if config.zone(node):
            labels.append(f"topology.kubernetes.io/zone={config.zone(node)}")
        return [
            str(BINARIES / "kubelet"),
            f"--config={paths.data / 'kubelet.yaml'}",
            f"--kubeconfig={paths.data / 'kubelet.kubeconfig'}",
            f"--root-dir={paths.kubelet_root}",
            f"--cert-dir={paths.data / 'pki'}",
            f"--hostname-override={node}",
            f"--node-ip={config.addresses(node)[0]}",
            f"--node-labels={','.join(labels)}",
            "--v=1",
        ]

    def _wait(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.2)
        raise LabError(f"{what} not up after {timeout:.0f}s (logs in {self.workdir.logs})")

    # -- sysctls the kubelet changes -----------------------------------------------------

    # Host-wide values: saved by the first lab with kubelets, put back by the last one
    # (each lab's nodes have a directory under RUN_DIR while they run).

    def _save_sysctls(self) -> None:
        if not SAVED_SYSCTLS.exists():
            values = {key: (Path("/proc/sys") / key).read_text().strip() for key in KUBELET_SYSCTLS}
            SAVED_SYSCTLS.write_text(json.dumps(values))

    def _restore_sysctls(self) -> None:
        if not SAVED_SYSCTLS.exists():
            return
        others = [d for d in RUN_DIR.iterdir() if d.is_dir() and d.name != self.workdir.name]
        if not others:
            for key, value in json.loads(SAVED_SYSCTLS.read_text()).items():
                (Path("/proc/sys") / key).write_text(value)
            SAVED_SYSCTLS.unlink()

    # -- down ----------------------------------------------------------------------------

    def stop(self, node: str, pids: Iterable[int]) -> None:
        """The kubelet, then containerd, the shims and containers: gone, with every mount
        and cgroup they made. Idempotent; a half-started node is fine."""
        paths = self.paths(node)
        kill_all({p for p in pids if alive(p)}, grace=10)
        # Shims outlive containerd (they are what keeps containers running across its
        # restarts): each is found by the containerd socket on its command line.
        shims = set()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"containerd-shim" in cmdline and str(paths.socket).encode() in cmdline:
                    shims.add(int(proc.name))
        kill_all(shims, grace=5)
        # The containers' processes outlive their shims: every process left in the
        # node's cgroups or in its network namespace (hostNetwork pods) goes too.
        left = {
            int(pid)
            for procs in (CGROUP_FS / "pids" / paths.cgroup.lstrip("/")).rglob("cgroup.procs")
            for pid in procs.read_text().split()
        }
        left |= {
            int(p) for p in sh(["ip", "netns", "pids", self._namespace(node)], check=False).split()
        }
        kill_all(left, signal.SIGKILL, grace=5)
        # With no process left in it, the namespace and every mount in it (pod
        # volumes, container root filesystems, sandbox /dev/shm) go with its last reference.
        subprocess.run(["umount", "-l", str(paths.mounts)], capture_output=True)
        paths.mounts.unlink(missing_ok=True)
        # Every hierarchy, the unified one of this hybrid layout included: runc makes
        # the pod's cgroups there too.
        for hierarchy in CGROUP_FS.iterdir():
            remove_cgroup(hierarchy / paths.cgroup.lstrip("/"))
        shutil.rmtree(paths.run, ignore_errors=True)
        shutil.rmtree(paths.data, ignore_errors=True)

    def stop_all(self, config: LabConfig, services: dict[str, int]) -> None:
        for node in config.node_names():
            pids = [pid for name, pid in services.items() if name.endswith(f"/{node}")]
            self.stop(node, pids)
        self._restore_sysctls()
        shutil.rmtree(RUN_DIR / self.workdir.name, ignore_errors=True)
