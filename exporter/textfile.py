"""Textfile output for node-exporter's textfile collector.

The file is ``<dir>/<prefix><node>.prom``, rewritten atomically: the text goes
to a hidden temporary file in the same directory (node-exporter reads only
``*.prom``), then ``rename`` replaces the old file in one step, so a reader sees
the old file or the new one, never half of one. Only this node's own file is
ever removed; the directory is shared with other exporters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from .config import ConfigError
from .exposition import Render

log = logging.getLogger(__name__)


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
    def __init__(self, path: Path, render: Render) -> None:
        self.path = path
        self.render = render
        self.write_errors = 0
        self._changed = asyncio.Event()
        self._stopping = False

    def remove_stale(self) -> None:
        """At start: drop this node's file and temporary files left by an earlier run
        (a killed agent can leave one behind); nothing else in the shared directory."""
        self.path.unlink(missing_ok=True)
        for leftover in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            leftover.unlink(missing_ok=True)

    def write(self) -> None:
        data, _ = self.render("")  # Prometheus text format
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def request_write(self) -> None:
        """Write soon (peers changed: removed peers must vanish within one interval)."""
        self._changed.set()

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()

    async def run(self, interval: float) -> None:
        """Rewrite every ``interval`` or on request, until stopped; the last write completes."""
        while not self._stopping:
            try:
                await asyncio.to_thread(self.write)
            except OSError as exc:
                self.write_errors += 1
                log.error(
                    "textfile write failed", extra={"path": str(self.path), "problem": exc.strerror}
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), interval)
