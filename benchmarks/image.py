"""Benchmark: the agent's image against a reference image, side by side, one run.

    sudo python3 -m benchmarks.image [--reference IMAGE] [--image IMAGE] [--runs 5]

For each image (by default this tree's amd64 image and, when present, the
Debian-minbase image it replaced, tagged ``…:baseline-debian-minbase``): its size,
what the kubernetes client costs in it (source and bytecode on disk), the median
wall time of ``--version`` and ``--check-config``, the median time from start to
``/readyz`` and the agent's RSS 5 s after (``process_resident_memory_bytes``),
pinging 127.0.0.1 and ::1 as uid 65534 in a private network namespace
(lab/imagerun.py). Prints a Markdown table (docs/image.md keeps the last one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from exporter import __version__
from lab.imagerun import RunningImage, metric, running_image, start_agent, wait_ready
from lab.registry import ARCH, buildah, has_image

SITE = "opt/node-ping-exporter/lib/python3.11/site-packages"
# What Kubernetes discovery loads, in the image's interpreter: seconds and peak RSS.
KUBERNETES_IMPORT = f"""
import resource, sys, time
sys.path.insert(0, "/{SITE}")
start = time.monotonic()
from exporter.discovery import kubernetes as discovery
from exporter import auth
from kubernetes import client
client.CoreV1Api, client.AuthenticationV1Api, client.AuthorizationV1Api
print(time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3)
"""
REFERENCE = "localhost/node-ping-exporter:baseline-debian-minbase"
PORT = 9798


def disk(path: Path, suffix: str) -> float:
    """MB of the files ending in ``suffix`` under ``path``."""
    total = sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file())
    return total / 1e6


def timed(image: RunningImage, runs: int, *argv: str) -> float:
    times = []
    for _ in range(runs):
        start = time.monotonic()
        result = image.run(*argv)
        times.append(time.monotonic() - start)
        if result.returncode != 0:
            raise SystemExit(f"image.py: {' '.join(argv)} failed: {result.stderr.strip()}")
    return statistics.median(times)


def start_to_ready(image: RunningImage, runs: int) -> tuple[float, float]:
    """Median seconds to /readyz, and the median RSS (MB) 5 s after."""
    ready, rss = [], []
    for _ in range(runs):
        with tempfile.TemporaryFile() as log:
            agent = start_agent(image, PORT, ["v4=127.0.0.1", "v6=::1"], log)
            try:
                seconds = wait_ready(image, PORT, deadline_s=60)
                if seconds is None:
                    log.seek(0)
                    raise SystemExit(f"image.py: the agent never got ready: {log.read()!r}")
                ready.append(seconds)
                time.sleep(5)
                resident = metric(image.get(PORT, "/metrics"), "process_resident_memory_bytes")
                rss.append((resident or 0) / 1e6)
            finally:
                agent.terminate()
                agent.wait(timeout=30)
    return statistics.median(ready), statistics.median(rss)


def measure(name: str, runs: int) -> dict[str, str]:
    size = buildah("images", "--format", "{{.Size}}", name)
    check = ["--check-config", "--node-name", "b", "--peer", "a=127.0.0.1"]
    with running_image(name) as image:
        site = Path(image.root, SITE)
        row = {
            "image": name,
            "size": size,
            "kubernetes .py / .pyc MB": f"{disk(site / 'kubernetes', '.py'):.1f} / "
            f"{disk(site / 'kubernetes', '.pyc'):.1f}",
            "all .pyc MB": f"{disk(Path(image.root), '.pyc'):.1f}",
            "--version s": f"{timed(image, runs, '--version'):.2f}",
            "--check-config s": f"{timed(image, runs, *check):.2f}",
        }
        imports = [image.run("-IB", "-c", KUBERNETES_IMPORT, program="/usr/bin/python3.11")
                   for _ in range(runs)]  # fmt: skip
        seconds, peak = (statistics.median(float(r.stdout.split()[i]) for r in imports)
                         for i in (0, 1))  # fmt: skip
        row["kubernetes import s / peak RSS MB"] = f"{seconds:.2f} / {peak:.1f}"
        ready, rss = start_to_ready(image, runs)
        row["start to /readyz s"] = f"{ready:.2f}"
        row["RSS MB"] = f"{rss:.1f}"
    return row


def main() -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.image", description=__doc__.split("\n")[0])
    parser.add_argument("--image", default=f"localhost/node-ping-exporter:{__version__}-{ARCH}")
    parser.add_argument("--reference", default=REFERENCE)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("image.py: needs root (buildah, namespaces, chroot)", file=sys.stderr)
        return 2
    if not has_image(args.image):
        subprocess.run(["bash", "scripts/build-image.sh"], check=True, env={**os.environ,
                       "ARCHES": ARCH})  # fmt: skip
    names = [args.image] + ([args.reference] if has_image(args.reference) else [])
    rows = [measure(name, args.runs) for name in names]
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row[c] for c in columns) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
