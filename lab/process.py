"""Background processes of the lab and the control plane: start, check, stop.

They outlive the Python process that started them (their own session), so that
separate CLI calls and test fixtures can share one lab; their ids are kept in
the owner's state file, written with :func:`write_atomically`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from contextlib import suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def spawn(args: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> int:
    """Start ``args`` in a session of its own, output appended to ``log_path``; its pid."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
    return proc.pid


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step: a reader sees the old file or the new, never half."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie child of ours is reaped and counts as gone)."""
    with suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_all(pids: set[int], sig: signal.Signals = signal.SIGTERM, grace: float = 3) -> None:
    """Signal each process, then SIGKILL what is left after ``grace`` seconds."""
    for pid in pids:
        with suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
