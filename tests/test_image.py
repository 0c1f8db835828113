"""The container image really builds (buildah, vfs, chroot, from a debootstrap base)
and the agent inside it answers --version and validates a configuration."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

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
    size = re.search(r"^image (\S+): (.+)$", out, re.M)
    assert size, out
    print(f"\n{size.group(1)}: {size.group(2)}")
