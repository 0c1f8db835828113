"""Textfile output for node-exporter's textfile collector.

The file is ``<dir>/<prefix><node>.prom``, rewritten atomically: the text goes
to a hidden temporary file in the same directory (node-exporter reads only
``*.prom``), then ``rename`` replaces the old file in one step, so a reader sees
the old file or the new one, never half of one. Only this node's own file is
ever removed (at start, a killed agent's; at a graceful stop, its own); the
directory is shared with other exporters.

The directory is shared and the agent may run as root (raw ICMP mode), so it is
opened once and every file operation is relative to that descriptor; the
temporary file gets a random name and is created with O_EXCL|O_NOFOLLOW (a link
planted there is never followed), its mode is set through the descriptor, and
rename and unlink never follow links either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.core import Metric

from .config import ConfigError
from .exposition import Render
from .metric_table import TEXTFILE_WRITE_ERRORS
from .supervisor import call_in_thread

log = logging.getLogger(__name__)

CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_ATTEMPTS = 8
WRITE_FINISH_SECONDS = 1.0


def check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise ConfigError(
            f"invalid setting 'textfile_dir' (--textfile-dir): {directory} is not a directory"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(
            f"invalid setting 'textfile_dir' (--textfile-dir): "
            f"{directory} is not writable by uid {os.getuid()}"
        )


class TextfileWriter:
    """Rewrites the textfile every interval, and at once when the peers change."""

    name = "textfile"

    def __init__(self, path: Path, render: Render, interval: float, node_name: str) -> None:
        self.path = path
        self.render = render
        self.interval = interval
        self.node_name = node_name
        self.write_errors = 0
        self._dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._changed = asyncio.Event()
        self._writing: asyncio.Future[None] | None = None
        self._file_lock = threading.Lock()  # a write (in its thread) or the close
        self._closed = False

    def close(self) -> None:
        """A graceful stop takes this node's file with it: after an uninstall (or a
        node's agent removed) node-exporter must not go on serving frozen series. A
        write still running is waited for (a moment) so that its rename cannot put
        the file back; a write hung that long leaves it to the exit."""
        if not self._file_lock.acquire(timeout=WRITE_FINISH_SECONDS):
            return
        try:
            if not self._closed:
                self._closed = True
                self.remove_own_files()
                os.close(self._dir_fd)
        finally:
            self._file_lock.release()

    def _is_our_temporary(self, name: str) -> bool:
        return name.startswith(f".{self.path.name}.") and name.endswith(".tmp")

    def remove_own_files(self) -> None:
        """This node's file and its temporary files, nothing else in the shared
        directory: at start, what an earlier run left (a killed agent can leave one
        behind); at a graceful stop, its own."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path.name, dir_fd=self._dir_fd)
        for name in os.listdir(self._dir_fd):
            if self._is_our_temporary(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dir_fd)

    def _create_temporary(self) -> tuple[int, str]:
        for _ in range(CREATE_ATTEMPTS):
            name = f".{self.path.name}.{secrets.token_hex(8)}.tmp"
            try:
                return os.open(name, CREATE_FLAGS, 0o644, dir_fd=self._dir_fd), name
            except FileExistsError:  # taken, or a link planted there: another name
                continue
        raise FileExistsError(f"no free temporary name in {self.path.parent}")

    def write(self) -> None:
        with self._file_lock:
            if not self._closed:
                self._replace(self.render("")[0])  # Prometheus text format

    def _replace(self, data: bytes) -> None:
        fd, name = self._create_temporary()
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o644)  # readable by node-exporter whatever the umask
                f.write(data)
            os.replace(name, self.path.name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=self._dir_fd)
            raise

    def request_write(self) -> None:
        """Write soon (peers changed: removed peers must vanish within one interval)."""
        self._changed.set()

    async def run(self) -> None:
        """Rewrite every interval or on request, until cancelled."""
        while True:
            self._changed.clear()  # before rendering: a change during the write is not lost
            await self.write_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.interval)

    async def write_once(self) -> None:
        write = self._writing = asyncio.ensure_future(call_in_thread(self.write))
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            # Stopping: let the write in progress finish before close() removes the
            # file (or, when the agent is killed next, it is the last complete state).
            await asyncio.wait([write], timeout=WRITE_FINISH_SECONDS)
            raise
        except OSError as exc:
            self.write_errors += 1
            log.error(
                "textfile write failed",
                extra={"path": str(self.path), "problem": exc.strerror or str(exc)},
            )

    def collect(self) -> Iterator[Metric]:
        yield TEXTFILE_WRITE_ERRORS.sample(self.write_errors, self.node_name)
