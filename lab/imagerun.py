"""Running an image's agent the way a container runtime would, without one: the
image's root filesystem (``buildah mount``) as the root, a private network
namespace, its own /proc, uid/gid 65534 and no capability (``chroot --userspec``
drops them with the uid). An arm64 image runs the same way under qemu-user
(scripts/binfmt-arm64.sh). Used by tests/test_image.py and benchmarks/image.py.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

from .netns import Namespace, run_prefix
from .registry import buildah

ENTRYPOINT = "/opt/node-ping-exporter/bin/node-ping-exporter"


@dataclass
class RunningImage:
    namespace: Namespace
    root: str  # where the image's files are mounted

    def command(
        self, *argv: str, user: str = "65534:65534", program: str = ENTRYPOINT
    ) -> list[str]:
        """``argv`` of the agent (or ``program``) inside the image, in the namespace,
        with its own /proc."""
        script = 'mount -t proc proc "$0/proc" && exec chroot --userspec="$1" "$0" "$2" "${@:3}"'
        return self.namespace.cmd("unshare", "--mount", "--propagation", "private",
                                  "bash", "-c", script, self.root, user, program,
                                  *argv)  # fmt: skip

    def run(
        self, *argv: str, timeout: float = 120, program: str = ENTRYPOINT
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv, program=program), capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    def get(self, port: int, path: str, timeout: float = 5) -> str:
        """An HTTP GET on the namespace's loopback (through curl inside it)."""
        return self.namespace.run("curl", "-sf", "--max-time", str(timeout),
                                  f"http://127.0.0.1:{port}{path}", check=False)  # fmt: skip


@contextmanager
def running_image(image: str) -> Iterator[RunningImage]:
    """The image mounted and a fresh namespace that lets every group ping (as a node
    prepared by the chart's ping-group-range init container would)."""
    container = buildah("from", image)
    namespace = Namespace(f"{run_prefix('img')}-{abs(hash(image)) % 10000}")
    try:
        namespace.sysctl("net.ipv4.ping_group_range", "0 2147483647")
        yield RunningImage(namespace, buildah("mount", container))
    finally:
        namespace.delete()
        buildah("umount", container, check=False)
        buildah("rm", container, check=False)


def wait_ready(image: RunningImage, port: int, deadline_s: float) -> float | None:
    """Seconds until /readyz answers, or None by the deadline."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        if image.get(port, "/readyz", timeout=2):
            return time.monotonic() - start
        time.sleep(0.1)
    return None


def start_agent(
    image: RunningImage, port: int, peers: Sequence[str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """The agent pinging ``peers`` (name=address), its output into ``log``."""
    args = ["--node-name", "image", "--listen-address", f"127.0.0.1:{port}"]
    for peer in peers:
        args += ["--peer", peer]
    return subprocess.Popen(image.command(*args), stdout=log, stderr=subprocess.STDOUT)


def metric(exposition: str, name: str, **labels: str) -> float | None:
    """The first sample of ``name`` whose labels include ``labels``."""
    for line in exposition.splitlines():
        if not line.startswith(name) or line[len(name)] not in "{ ":
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None
