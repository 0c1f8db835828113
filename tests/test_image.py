"""The container image really builds (buildah, vfs, chroot, from a debootstrap base)
and the agent inside it answers --version and validates a configuration; the image
and the agent's wheel hold the agent alone, the lab is a distribution of its own."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT


@pytest.mark.skipif(os.geteuid() != 0, reason="buildah with chroot isolation needs root")
@pytest.mark.skipif(
    shutil.which("buildah") is None or shutil.which("debootstrap") is None,
    reason="buildah and debootstrap are not installed (make deps installs them)",
)
def test_image_builds_and_runs_the_agent() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"^node-ping-exporter \d+\.\d+\.\d+$", out, re.M), out
    assert "configuration OK: node image-check, discovery static, 2 static peers" in out
    assert "bad configuration refused: node-ping-exporter: invalid setting 'interval'" in out
    # No `lab` package and no lab command (node-ping-lab, node-ping-controlplane) in it.
    assert "image contents: packages: exporter; commands: node-ping-exporter; lab: absent" in out
    size = re.search(r"^image (\S+): (.+)$", out, re.M)
    assert size, out
    print(f"\n{size.group(1)}: {size.group(2)}")


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
