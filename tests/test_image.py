"""The container images really build (buildah, vfs, from Debian packages and wheels,
amd64 and arm64) and the agent inside each answers --version, validates a
configuration and pings loopback unprivileged (arm64 under qemu-user); the image
and the agent's wheel hold the agent alone, the lab is a distribution of its own."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import IO, Any

import pytest

from exporter import __version__

from .conftest import ROOT

needs_buildah = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("buildah") or not shutil.which("qemu-aarch64-static"),
    reason="needs root, buildah and qemu-user-static (make deps installs them)",
)
ARCHES = ("amd64", "arm64")
SIZES = {"kB": 1e3, "MB": 1e6, "GB": 1e9}


@pytest.fixture(scope="module")
def build_output() -> str:
    """scripts/build-image.sh, both architectures, run once for the module."""
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "ARCHES": " ".join(ARCHES)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


@needs_buildah
@pytest.mark.parametrize("arch", ARCHES)
def test_image_builds_and_runs_the_agent(arch: str, build_output: str) -> None:
    """Each architecture's image answers --version and --check-config (arm64 under
    qemu-user), refuses a bad setting, holds no shell, perl, package manager or
    locales (the script checks, and fails the build otherwise) and no lab."""
    out = build_output
    assert re.search(rf"^{arch}: node-ping-exporter \d+\.\d+\.\d+$", out, re.M), out
    assert f"{arch}: configuration OK: node image-check, discovery static, 2 static peers" in out
    refused = f"{arch}: bad configuration refused: node-ping-exporter: invalid setting 'interval'"
    assert refused in out
    packages = re.search(rf"^{arch}: python packages: (.*)$", out, re.M)
    assert packages and "node_ping_exporter" in packages[1].split(), out
    assert not {"node_ping_lab", "aiohttp", "pip", "setuptools"} & set(packages[1].split())
    assert f"manifest list localhost/node-ping-exporter:{__version__}: amd64 arm64" in out
    size = re.search(rf"^image (\S+-{arch}): ([\d.]+) (\w+)$", out, re.M)
    assert size, out
    megabytes = float(size[2]) * SIZES[size[3]] / 1e6
    print(f"\n{size[1]}: {megabytes:.1f} MB")
    assert megabytes <= 150


@needs_buildah
@pytest.mark.parametrize("arch", ARCHES)
def test_the_image_pings_loopback_unprivileged(
    arch: str, build_output: str, tmp_path: Path
) -> None:
    """The agent of each image, as uid 65534 with no capability in a private network
    namespace (arm64 under emulation), pings 127.0.0.1 and ::1 and serves /metrics."""
    from lab.imagerun import running_image, start_agent, wait_ready

    name = f"localhost/node-ping-exporter:{__version__}-{arch}"
    with running_image(name) as image, (tmp_path / "agent.log").open("w+b") as log:
        agent = start_agent(image, 9798, ["v4=127.0.0.1", "v6=::1"], log)
        try:
            assert wait_ready(image, 9798, deadline_s=90) is not None, log_text(log)
            check_pings(image, agent.pid)
        finally:
            agent.terminate()
            agent.wait(timeout=30)


def check_pings(image: Any, pid: int) -> None:
    """Every peer answered at least 3 times, and the agent is uid 65534 without
    capabilities."""
    from lab.imagerun import metric

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        exposition = image.get(9798, "/metrics")
        received = [metric(exposition, "kube_node_ping_packets_received_total",
                           destination_node=peer) for peer in ("v4", "v6")]  # fmt: skip
        if all(count and count >= 3 for count in received):
            break
        time.sleep(0.5)
    assert all(count and count >= 3 for count in received), exposition[-3000:]
    # ip netns exec, unshare, bash and chroot each exec the next: one pid
    status = Path(f"/proc/{pid}/status").read_text()
    assert re.search(r"^Uid:\s+65534\s", status, re.M), status
    assert re.search(r"^CapEff:\s+0+$", status, re.M), status


def log_text(log: IO[bytes]) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-3000:]


def wheel_contents(source: Path, out: Path) -> tuple[set[str], set[str], list[str]]:
    """The top-level entries, the console scripts and every file of the wheel pip builds
    from ``source``, offline, with the venv's setuptools."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (
        "pip wheel failed; the venv's setuptools builds wheels offline from 70.1 on "
        f"(requirements-dev.txt):\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    )
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = configparser.ConfigParser()
        scripts.read_string(archive.read(entry_points).decode())
    tops = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    return tops, set(scripts["console_scripts"]), names


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repository as committed would be, every package beside the agent's included
    (so a packaging rule that picks up more would show), built away from the work tree."""
    copy = tmp_path_factory.mktemp("checkout") / "repo"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".cache", "build", "*.egg-info", "__pycache__", ".*_cache"
        ),
    )
    return copy


def test_the_agents_wheel_holds_only_the_agent(checkout: Path, tmp_path: Path) -> None:
    """What `pip install .` and the image get: the exporter package and its command."""
    assert (checkout / "lab" / "cli.py").exists() and (checkout / "tests").is_dir()
    tops, scripts, names = wheel_contents(checkout, tmp_path)
    assert tops == {"exporter"}
    assert scripts == {"node-ping-exporter"}
    # the rules travel with the agent: `diagnose` evaluates them, `rules` prints them
    assert "exporter/rules/node-ping.rules.yml" in names


def test_the_lab_is_a_distribution_of_its_own(checkout: Path, tmp_path: Path) -> None:
    tops, scripts, _ = wheel_contents(checkout / "lab", tmp_path)
    assert tops == {"lab"}
    assert scripts == {"node-ping-lab", "node-ping-controlplane"}
