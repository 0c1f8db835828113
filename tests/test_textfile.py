"""The textfile writer in a shared directory: links planted there are never followed
(defect 2), and only this node's own files are touched."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from exporter.textfile import TextfileWriter

BODY = b"kube_node_ping_peers 1\n"


def writer(directory: Path, node: str = "node-1") -> TextfileWriter:
    return TextfileWriter(
        directory / f"node-ping_{node}.prom", lambda accept: (BODY, "text/plain"), 10.0, node
    )


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the textfile directory that an attacker wants overwritten."""
    path = tmp_path / "victim"
    path.write_text("precious\n")
    path.chmod(0o600)
    return path


def untouched(victim: Path) -> bool:
    return victim.read_text() == "precious\n" and (victim.stat().st_mode & 0o777) == 0o600


def test_a_link_at_the_temporary_name_is_not_followed(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    names = iter(["planted", "planted", "second"])
    monkeypatch.setattr("exporter.textfile.secrets.token_hex", lambda n: next(names))
    link = directory / ".node-ping_node-1.prom.planted.tmp"
    link.symlink_to(victim)
    # Where the old writer put its temporary file (the PID is predictable too).
    old = directory / f".node-ping_node-1.prom.{os.getpid()}.tmp"
    old.symlink_to(victim)
    w = writer(directory)
    w.write()
    assert untouched(victim)
    assert link.is_symlink() and old.is_symlink()
    written = directory / "node-ping_node-1.prom"
    assert written.read_bytes() == BODY and not written.is_symlink()
    assert (written.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in directory.iterdir() if not p.is_symlink()) == [written.name]


def test_a_link_at_the_final_name_is_replaced_not_followed(tmp_path: Path, victim: Path) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    final = directory / "node-ping_node-1.prom"
    final.symlink_to(victim)
    writer(directory).write()
    assert untouched(victim)
    assert not final.is_symlink() and final.read_bytes() == BODY


def test_start_removes_only_this_nodes_files_and_follows_no_link(
    tmp_path: Path, victim: Path
) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    (directory / "node-ping_node-1.prom").symlink_to(victim)
    (directory / ".node-ping_node-1.prom.1234.tmp").write_text("left by a killed agent")
    keep = [
        "node-ping_node-10.prom",
        ".node-ping_node-10.prom.99.tmp",  # another agent's temporary file
        "node_exporter.prom",
        ".node-ping_node-1.prom.keep",
    ]
    for name in keep:
        (directory / name).write_text("other")
    w = writer(directory)
    w.remove_own_files()
    assert untouched(victim)
    assert sorted(p.name for p in directory.iterdir()) == sorted(keep)


def test_a_graceful_stop_takes_this_nodes_file_and_nothing_else(tmp_path: Path) -> None:
    """After an uninstall node-exporter serves no frozen series: the file goes with the
    agent; other exporters' files stay."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    (directory / "node_exporter.prom").write_text("other")
    w = writer(directory)
    w.write()
    assert (directory / "node-ping_node-1.prom").read_bytes() == BODY
    w.close()
    assert [p.name for p in directory.iterdir()] == ["node_exporter.prom"]


def test_a_stop_during_a_write_still_takes_the_file(tmp_path: Path) -> None:
    """A write in its thread when the agent stops: the stop waits for it, so its rename
    cannot put the file back after the stop removed it."""
    directory = tmp_path / "textfile"
    directory.mkdir()
    rendering, finish = threading.Event(), threading.Event()

    def slow_render(accept: str) -> tuple[bytes, str]:
        rendering.set()
        finish.wait(5)
        return BODY, "text/plain"

    w = TextfileWriter(directory / "node-ping_node-1.prom", slow_render, 10.0, "node-1")
    write = threading.Thread(target=w.write)
    write.start()
    assert rendering.wait(5)
    stop = threading.Thread(target=w.close)
    stop.start()
    finish.set()
    write.join(5)
    stop.join(5)
    assert list(directory.iterdir()) == []


def test_a_failed_write_is_counted(tmp_path: Path) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    w = writer(directory)

    def broken(accept: str) -> tuple[bytes, str]:
        raise OSError(28, "No space left on device")

    w.render = broken
    asyncio.run(w.write_once())
    assert w.write_errors == 1
    assert list(directory.iterdir()) == []
