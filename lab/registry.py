"""The lab's image registry, and the images its Kubernetes nodes pull from it.

Nodes get images the way a cluster does: they pull them from a registry. This
one is Debian's ``docker-registry`` (the CNCF distribution server, a real OCI
registry) on the host's loopback, storing under the lab's workdir; a forwarder
in the hub (lab/forward.py) makes it ``198.18.0.254:5000`` for the nodes, plain
HTTP as containerd's ``hosts.toml`` for it allows. The images are built here
with buildah and pushed:

- ``pause``: the Kubernetes release's own pause.c, static (scripts/build-nodes.sh),
  in an image of its own as upstream ships it (user 65535);
- ``node-ping-exporter``: scripts/build-image.sh's image;
- ``prometheus``: Prometheus and prometheus-operator's config reloader (both built
  by scripts/build-nodes.sh) on the agent image's Debian base, for the Prometheus
  the operator runs.
"""

from __future__ import annotations

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
BASE_IMAGE = "localhost/node-ping-exporter-base:bookworm"  # scripts/build-image.sh's
VERSION = __version__  # the agent image's tag


def buildah(*args: str, check: bool = True) -> str:
    result = subprocess.run(
        ["buildah", "--storage-driver", "vfs", *args], capture_output=True, text=True
    )
    if check and result.returncode != 0:
        raise LabError(f"buildah {args[0]} failed: {result.stderr.strip()[-500:]}")
    return result.stdout.strip()


def has_image(name: str) -> bool:
    return bool(buildah("images", "-q", name, check=False))


def agent_image() -> str:
    """The agent's image, built by scripts/build-image.sh unless there from this very
    tree (its source-digest label): a lab never runs an agent older than the code."""
    name = f"localhost/node-ping-exporter:{VERSION}"
    script = ["bash", str(ROOT / "scripts" / "build-image.sh")]
    digest = subprocess.run([*script, "--source-digest"], capture_output=True, text=True).stdout
    label = '{{index .OCIv1.Config.Labels "io.node-ping-exporter.source-digest"}}'
    built = buildah("inspect", "--type", "image", "--format", label, name, check=False)
    if not digest.strip() or built != digest.strip():
        result = subprocess.run(script, capture_output=True, text=True)
        if result.returncode != 0:
            raise LabError(f"building the agent image failed: {result.stderr.strip()[-500:]}")
    return name


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
    none) and prometheus-operator's config reloader, on the agent image's Debian base,
    where the operator expects them (/bin)."""
    binary = NODE_BINARIES / "prometheus"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    name = f"localhost/prometheus:v{version.stdout.split()[2]}"
    if not has_image(name):
        agent_image()  # makes the base
        container = buildah("from", BASE_IMAGE)
        buildah("copy", container, str(binary), "/bin/prometheus")
        reloader = NODE_BINARIES / "prometheus-config-reloader"
        buildah("copy", container, str(reloader), "/bin/prometheus-config-reloader")
        buildah("config", "--entrypoint", '["/bin/prometheus"]', "--user", "65534:65534",
                "--workingdir", "/prometheus", container)  # fmt: skip
        buildah("commit", "--quiet", container, name)
        buildah("rm", container)
    return name


class Registry:
    """The lab's registry process and its forwarder into the hub."""

    def __init__(self, workdir: Workdir, network: Network) -> None:
        self.workdir = workdir
        self.network = network
        self.storage = workdir.path / "registry"

    def start(self) -> tuple[dict[str, int], int]:
        """The registry and its forwarder: their pids by name, and the registry's port
        on the host's loopback."""
        if not REGISTRY_BINARY.exists():
            raise LabError(f"{REGISTRY_BINARY} is missing (apt-get install docker-registry)")
        port = free_port()
        self.storage.mkdir(parents=True, exist_ok=True)
        config = self.workdir.path / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.storage}}}}}\n"
            f"http: {{addr: '127.0.0.1:{port}'}}\n"
        )
        pids = {"registry": spawn([str(REGISTRY_BINARY), "serve", str(config)],
                                  self.workdir.logs / "registry.log")}  # fmt: skip
        pids["registry-forwarder"] = self.workdir.spawn(
            [sys.executable, "-m", "lab.forward", self.network.hub.name, LAB_ADDRESS,
             str(HUB_PORT), "127.0.0.1", str(port)],
            "registry-forwarder.log",
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            probe = subprocess.run(["curl", "-sf", f"http://127.0.0.1:{port}/v2/"],
                                   capture_output=True)  # fmt: skip
            if probe.returncode == 0:
                return pids, port
            time.sleep(0.2)
        kill_all(set(pids.values()))  # the registry runs on the host: nothing else would
        raise LabError(f"the registry did not start (logs in {self.workdir.logs})")

    @staticmethod
    def push(port: int, image: str, name: str) -> str:
        """Push a local image as ``name`` (``repository:tag``); how the nodes name it."""
        buildah("push", "--quiet", "--tls-verify=false", image, f"docker://127.0.0.1:{port}/{name}")
        return f"{LAB_ADDRESS}:{HUB_PORT}/{name}"
