"""The delayed echo responder (benchmarks/responder, Go): built once, reused.

Kernel echo replies off in a namespace plus this program answering after a
fixed delay is how the lab and the benchmarks add known latency (this kernel
has no netem).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "benchmarks" / "responder"
BINARY = ROOT / ".cache" / "responder"


class ResponderUnavailable(Exception):
    pass


def ensure_responder() -> Path:
    """Path to the built responder; builds it when missing or older than its source."""
    newest_source = max(p.stat().st_mtime for p in SOURCE.iterdir())
    if BINARY.exists() and BINARY.stat().st_mtime >= newest_source:
        return BINARY
    if shutil.which("go") is None:
        raise ResponderUnavailable("Go is not installed: cannot build benchmarks/responder")
    BINARY.parent.mkdir(exist_ok=True)
    result = subprocess.run(
        ["go", "build", "-o", str(BINARY), "."], cwd=SOURCE, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ResponderUnavailable(f"go build of the responder failed: {result.stderr.strip()}")
    return BINARY
