"""One version everywhere a user reads it: the Python distribution (pyproject), the
agent's --version, the chart's appVersion (the image tag it installs by default), the
image the build script tags, the image Artifact Hub lists and CHANGELOG.md's newest
release. A release changes them together; this test fails when one is left behind."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import yaml

from exporter import __version__

from .conftest import ROOT


def test_every_place_names_the_same_version() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((ROOT / "chart" / "Chart.yaml").read_text())
    printed = subprocess.run(
        [sys.executable, "-m", "exporter", "--version"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    changelog = re.search(r"^## (\d+\.\d+\.\d+)", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert changelog, "CHANGELOG.md has no version heading"
    (image,) = yaml.safe_load(chart["annotations"]["artifacthub.io/images"])
    found = {
        "pyproject.toml": declared,
        "exporter.__version__": __version__,
        "--version": printed,
        "chart appVersion": str(chart["appVersion"]),
        "CHANGELOG.md's newest release": changelog[1],
        "artifacthub.io/images tag": image["image"].rsplit(":", 1)[1],
    }
    assert set(found.values()) == {declared}, found
    # the build script tags the image with pyproject's version
    script = (ROOT / "scripts" / "build-image.sh").read_text()
    assert "VERSION=$(sed -n 's/^version = \"\\(.*\\)\"/\\1/p' pyproject.toml)" in script
    assert "IMAGE=$REPOSITORY:$VERSION" in script
    assert "REPOSITORY=localhost/node-ping-exporter" in script
