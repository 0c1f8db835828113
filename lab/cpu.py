"""CPU limits for the lab's agents: one cpu cgroup per node, for the ``starve`` fault.

The lab puts each node's agent into a cgroup of its own, ``npelab-<lab>-<node>``,
whenever it starts it (lab/agents.py: ``up``, ``agent start``, ``agent restart``),
so a quota set there by ``fault starve`` throttles exactly that agent, also across
restarts; ``clear`` lifts the quota and ``down`` removes the cgroups.

cgroup v1 (``/sys/fs/cgroup/cpu``: cpu.cfs_period_us and cpu.cfs_quota_us) and v2
(a unified ``/sys/fs/cgroup`` with the cpu controller: cpu.max) both work. Without
a writable cpu cgroup the lab runs as before and only ``starve`` fails, saying why.

The quota is granted per 1 s period, not per the kernel's default 100 ms: an agent
probing a handful of peers is mostly idle, and over 100 ms periods even a small
share still runs it every 100 ms, about as often as it needs to; over 1 s it runs
for a few milliseconds and then waits out the rest of the second, so its probes
fall behind and its scrapes wait, as on a node whose CPU is taken by others.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from .state import LabError

V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 1_000_000  # the starve fault's period: see the module's docstring
KERNEL_PERIOD_US = 100_000  # the kernel's default, restored when the quota is lifted
MIN_QUOTA_US = 1_000  # the kernel's smallest quota
# The default share for `fault starve NODE`, measured on the lab: see docs/lab.md.
STARVE_PERCENT = 1.0


@dataclass(frozen=True)
class CpuCgroups:
    """The cpu cgroups of one lab's agents, by node."""

    lab: str

    def hierarchy(self) -> tuple[Path, int] | None:
        """Where cpu cgroups are made, and the cgroup version; None if nowhere."""
        controllers = V2_ROOT / "cgroup.controllers"
        if controllers.exists() and "cpu" in controllers.read_text().split():
            return V2_ROOT, 2
        if (V1_ROOT / "cpu.cfs_quota_us").exists():
            return V1_ROOT, 1
        return None

    def path(self, node: str) -> Path | None:
        found = self.hierarchy()
        return found[0] / f"npelab-{self.lab}-{node}" if found else None

    def check(self) -> None:
        """A LabError, in one line, unless this machine lets the lab limit CPU."""
        found = self.hierarchy()
        if found is None:
            raise LabError(
                f"no cpu cgroup to starve an agent in (neither {V1_ROOT} with "
                f"cpu.cfs_quota_us nor a cgroup v2 {V2_ROOT} with the cpu controller)"
            )
        if not os.access(found[0], os.W_OK):
            raise LabError(f"cannot create cpu cgroups in {found[0]} (needs root)")

    def place(self, node: str, pid: int) -> None:
        """Move a freshly started agent into its node's cgroup (made if missing).
        Best effort: where no cpu cgroup can be made the agent runs unlimited, and
        only a later ``starve`` says why."""
        path = self.path(node)
        if path is None:
            return
        try:
            if self._version() == 2:
                self._enable_cpu_controller()
            path.mkdir(exist_ok=True)
            (path / "cgroup.procs").write_text(str(pid))
        except OSError:
            pass

    def limit(self, node: str, percent: float | None) -> None:
        """Hold the node's agent to ``percent`` of one CPU; None lifts the limit."""
        path = self.path(node)
        if percent is None:
            if path is not None and path.is_dir():
                self._write_limit(path, None)
            return
        self.check()
        assert path is not None  # check() found a hierarchy
        if not path.is_dir():
            raise LabError(f"{node}'s agent is not in a cpu cgroup (restart it: agent restart)")
        self._write_limit(path, max(MIN_QUOTA_US, round(percent / 100 * PERIOD_US)))

    def remove(self) -> None:
        """Every cgroup of this lab removed (its agents are stopped first). Idempotent."""
        found = self.hierarchy()
        if found is None:
            return
        mine = re.compile(rf"npelab-{re.escape(self.lab)}-node-\d+")
        for path in found[0].iterdir():
            if path.is_dir() and mine.fullmatch(path.name):
                remove_cgroup(path)

    def _version(self) -> int:
        found = self.hierarchy()
        return found[1] if found else 0

    def _write_limit(self, path: Path, quota_us: int | None) -> None:
        try:
            if self._version() == 2:
                value = f"{quota_us} {PERIOD_US}" if quota_us else f"max {KERNEL_PERIOD_US}"
                (path / "cpu.max").write_text(value)
            elif quota_us is None:
                (path / "cpu.cfs_quota_us").write_text("-1")
                (path / "cpu.cfs_period_us").write_text(str(KERNEL_PERIOD_US))
            else:
                (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (path / "cpu.cfs_quota_us").write_text(str(quota_us))
        except OSError as exc:
            raise LabError(f"cannot set the CPU limit in {path}: {exc.strerror}") from None

    def _enable_cpu_controller(self) -> None:
        """cgroup v2: a child gets the cpu controller only if its parent hands it down."""
        control = V2_ROOT / "cgroup.subtree_control"
        if "cpu" not in control.read_text().split():
            control.write_text("+cpu")


def labs_with_cgroups() -> set[str]:
    """Names of the labs whose agents' cgroups exist (for ``down --all``)."""
    found = CpuCgroups("").hierarchy()
    if found is None:
        return set()
    pattern = re.compile(r"npelab-(.+)-node-\d+")
    return {m.group(1) for p in found[0].iterdir() if (m := pattern.fullmatch(p.name))}


def remove_cgroup(path: Path, timeout: float = 2.0) -> None:
    """Remove a cgroup and those below it, deepest first (rmdir is how); a process
    still exiting keeps one busy for a moment."""
    if path.is_dir():
        for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
            remove_cgroup(child, timeout)
    _rmdir(path, timeout)


def _rmdir(path: Path, timeout: float) -> None:
    """Remove an empty cgroup, waiting up to ``timeout`` while it is busy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= deadline:
                return  # best effort: a leftover empty cgroup harms nothing
            time.sleep(0.05)
