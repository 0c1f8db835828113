"""``node-ping-exporter setup``: what the chart's init containers run in an image
without a shell."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from exporter import nodesetup
from exporter.cli import main


def test_textfile_dir_gets_the_group_and_mode(tmp_path: Path) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir(mode=0o700)
    group = 65534 if os.geteuid() == 0 else os.getgid()  # one this process may give
    assert main(["setup", "textfile-dir", "--group", str(group), str(directory)]) == 0
    info = directory.stat()
    assert (info.st_gid, stat.S_IMODE(info.st_mode)) == (group, 0o775)


@pytest.mark.parametrize("kind", ["symlink", "file", "missing"])
def test_textfile_dir_refuses_anything_but_a_directory(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    path = tmp_path / "textfile"
    if kind == "symlink":
        path.symlink_to(target)
    elif kind == "file":
        path.write_text("")
    assert main(["setup", "textfile-dir", "--group", "0", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"node-ping-exporter setup: {path}: ") and err.count("\n") == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o700  # the link's target is untouched


def test_bad_setup_arguments_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["setup"], ["setup", "reboot"], ["setup", "textfile-dir", "--group", "x", "/d"],
                 ["setup", "textfile-dir", "--group", "-1", "/d"],
                 ["setup", "textfile-dir", "--group", str(2**32), "/d"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert "Traceback" not in capsys.readouterr().err


def test_ping_group_range_writes_every_group(tmp_path: Path) -> None:
    sysctl = tmp_path / "ping_group_range"
    sysctl.write_text("1\t0\n")
    assert nodesetup.set_ping_group_range(str(sysctl)).endswith("= 0 2147483647")
    assert sysctl.read_text() == "0 2147483647\n"
    with pytest.raises(nodesetup.SetupError, match="Linux node with IPv4"):
        nodesetup.set_ping_group_range(str(tmp_path / "missing" / "ping_group_range"))
    if os.geteuid() != 0:  # root writes a read-only file anyway
        sysctl.chmod(0o444)
        with pytest.raises(nodesetup.SetupError, match="must be privileged"):
            nodesetup.set_ping_group_range(str(sysctl))
