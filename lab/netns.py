"""Network namespace primitives over iproute2 and nftables.

A :class:`Namespace` is a named network namespace with loopback up. ``link``
joins two with a veth pair. Names start with a per-run prefix so that two runs
never collide and ``cleanup(prefix)`` removes everything one run made.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

NETNS_DIR = Path("/run/netns")


def can_create_namespaces() -> tuple[bool, str]:
    """Whether this process may create namespaces, and why not."""
    if os.geteuid() != 0:
        return False, "needs root to create network namespaces"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' is not installed (apt-get install iproute2 nftables)"
    return True, ""


def sh(args: Sequence[str], check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(list(args), capture_output=True, text=True, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def run_prefix(tag: str) -> str:
    """A short prefix unique to this process: namespace and link names start with it."""
    return f"{tag}{os.getpid() % 100000}"


class Namespace:
    def __init__(self, name: str, create: bool = True) -> None:
        self.name = name
        if create:
            sh(["ip", "netns", "add", name])
            self.ip("link", "set", "lo", "up")

    @classmethod
    def existing(cls, name: str) -> Namespace:
        """A handle on a namespace made earlier (by this process or another)."""
        return cls(name, create=False)

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return sh(self.cmd(*args), check=check, input=input)

    def ip(self, *args: str) -> str:
        return self.run("ip", *args)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def nft(self, script: str) -> None:
        self.run("nft", "-f", "-", input=script)

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.cmd(*args), **kwargs)  # type: ignore[call-overload, no-any-return]

    def delete(self) -> None:
        sh(["ip", "netns", "delete", self.name], check=False)


def link(a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
    """A veth pair between two namespaces, both ends up."""
    sh(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", b_if, "netns", b.name])
    a.ip("link", "set", a_if, "up")
    b.ip("link", "set", b_if, "up")


def namespaces(prefix: str) -> list[str]:
    """Names of the namespaces that start with ``prefix``."""
    if not NETNS_DIR.is_dir():
        return []
    return sorted(entry.name for entry in NETNS_DIR.iterdir() if entry.name.startswith(prefix))


def cleanup(prefix: str) -> None:
    """Remove every namespace whose name starts with ``prefix`` (idempotent)."""
    for name in namespaces(prefix):
        sh(["ip", "netns", "delete", name], check=False)
