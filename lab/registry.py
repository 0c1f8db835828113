"""The lab's image registry, and the images its Kubernetes nodes pull from it.

Nodes get images the way a cluster does: they pull them from a registry. This
one is Debian's ``docker-registry`` (the CNCF distribution server, a real OCI
registry) on the host's loopback, storing under the lab's workdir; a forwarder
in the hub (lab/forward.py) makes it ``198.18.0.254:5000`` for the nodes, plain
HTTP as containerd's ``hosts.toml`` for it allows. The images are built here
with buildah and pushed:

- ``pause``: the Kubernetes release's own pause.c, static (scripts/build-nodes.sh),
  in an image of its own as upstream ships it (user 65535);
- ``node-ping-exporter``: scripts/build-image.sh's image for this machine's
  architecture;
- ``prometheus``: Prometheus and prometheus-operator's config reloader (both built
  by scripts/build-nodes.sh) on the agent's image (the reloader links Debian's
  libc), for the Prometheus the operator runs.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from exporter import __version__

from .controlplane import LAB_ADDRESS, free_port
from .network import Network
from .process import ROOT, kill_all, spawn
from .state import LabError, Workdir

REGISTRY_BINARY = Path("/usr/bin/docker-registry")
NODE_BINARIES = ROOT / ".cache" / "nodes"
HUB_PORT = 5000
VERSION = __version__  # the agent image's tag
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
SOURCE_DIGEST_LABEL = "io.node-ping-exporter.source-digest"
REVISION_LABEL = "org.opencontainers.image.revision"  # the commit it was built from


def buildah(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise LabError(f"buildah {args[0]} failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def has_image(name: str) -> bool:
    return bool(buildah("images", "-q", name, check=False))


def agent_images(arches: tuple[str, ...] = (ARCH,)) -> dict[str, str]:
    """The agent's image per architecture (``localhost/node-ping-exporter:VERSION-ARCH``),
    built by scripts/build-image.sh unless each is there from this very tree (its
    source-digest and revision labels): a lab never runs an agent older than the
    code. When it builds, the manifest list ``…:VERSION`` joins exactly ``arches``."""
    names = {arch: f"localhost/node-ping-exporter:{VERSION}-{arch}" for arch in arches}
    script = ["bash", str(ROOT / "scripts" / "build-image.sh")]
    digest = subprocess.run([*script, "--source-digest"], capture_output=True, text=True).stdout
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()  # fmt: skip
    wanted = f"{digest.strip()} {head or 'unknown'}"  # build-image.sh's "unknown" outside git
    labels = " ".join("{{index .OCIv1.Config.Labels " + f'"{label}"' + "}}"
                      for label in (SOURCE_DIGEST_LABEL, REVISION_LABEL))  # fmt: skip
    built = {buildah("inspect", "--type", "image", "--format", labels, name, check=False)
             for name in names.values()}  # fmt: skip
    if not digest.strip() or built != {wanted}:
        env = {**os.environ, "ARCHES": " ".join(arches)}
        result = subprocess.run(script, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise LabError(f"building the agent image failed: {result.stderr.strip()[-500:]}")
    return names


def agent_image() -> str:
    """The agent's image for this machine's architecture."""
    return agent_images()[ARCH]


def pause_image(tag: str) -> str:
    name = f"localhost/pause:{tag}"
    if not has_image(name):
        container = buildah("from", "scratch")
        buildah("copy", container, str(NODE_BINARIES / "pause"), "/pause")
        buildah("config", "--entrypoint", '["/pause"]', "--user", "65535:65535", container)
        buildah("commit", "--quiet", container, name)
        buildah("rm", container)
    return name


def prometheus_image() -> str:
    """Prometheus (built with Kubernetes discovery, scripts/build-nodes.sh: Debian's has
    none) and prometheus-operator's config reloader, on the agent's image (its libc
    serves the reloader), where the operator expects them (/bin)."""
    binary = NODE_BINARIES / "prometheus"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    name = f"localhost/prometheus:v{version.stdout.split()[2]}"
    if not has_image(name):
        container = buildah("from", agent_image())
        buildah("copy", container, str(binary), "/bin/prometheus")
        reloader = NODE_BINARIES / "prometheus-config-reloader"
        buildah("copy", container, str(reloader), "/bin/prometheus-config-reloader")
        buildah("config", "--entrypoint", '["/bin/prometheus"]', "--user", "65534:65534",
                "--workingdir", "/prometheus", container)  # fmt: skip
        buildah("commit", "--quiet", container, name)
        buildah("rm", container)
    return name


def start_registry(storage: Path, log: Path) -> tuple[int, int]:
    """A registry serving ``storage`` on a free port of the host's loopback (plain
    HTTP), its configuration beside the storage; its pid and port once it answers."""
    if not REGISTRY_BINARY.exists():
        raise LabError(f"{REGISTRY_BINARY} is missing (apt-get install docker-registry)")
    port = free_port()
    storage.mkdir(parents=True, exist_ok=True)
    config = storage.with_name(storage.name + ".yml")
    config.write_text(
        "version: 0.1\n"
        "log: {level: warn}\n"
        f"storage: {{filesystem: {{rootdirectory: {storage}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    pid = spawn([str(REGISTRY_BINARY), "serve", str(config)], log)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/v2/"], capture_output=True)
        if probe.returncode == 0:
            return pid, port
        time.sleep(0.2)
    kill_all({pid})  # the registry runs on the host: nothing else would
    raise LabError(f"the registry did not start (its log: {log})")


class Registry:
    """The lab's registry process and its forwarder into the hub."""

    def __init__(self, workdir: Workdir, network: Network) -> None:
        self.workdir = workdir
        self.network = network
        self.storage = workdir.path / "registry"

    def start(self) -> tuple[dict[str, int], int]:
        """The registry and its forwarder: their pids by name, and the registry's port
        on the host's loopback."""
        pid, port = start_registry(self.storage, self.workdir.logs / "registry.log")
        pids = {"registry": pid}
        pids["registry-forwarder"] = self.workdir.spawn(
            [sys.executable, "-m", "lab.forward", self.network.hub.name, LAB_ADDRESS,
             str(HUB_PORT), "127.0.0.1", str(port)],
            "registry-forwarder.log",
        )  # fmt: skip
        return pids, port

    @staticmethod
    def push(port: int, image: str, name: str) -> str:
        """Push a local image as ``name`` (``repository:tag``); how the nodes name it."""
        buildah("push", "--quiet", "--tls-verify=false", image, f"docker://127.0.0.1:{port}/{name}")
        return f"{LAB_ADDRESS}:{HUB_PORT}/{name}"
