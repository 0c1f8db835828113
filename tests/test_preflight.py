"""One preflight: whatever ``--check-config`` accepts the agent accepts, and the other
way round. Each case runs both: ``--check-config`` as a command, and the real agent
in a network namespace (it must either serve /healthz, or exit 2 with one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from lab.targets import target_v4

from .conftest import ROOT, AgentProcess, needs_netns

pytestmark = needs_netns

# name -> (arguments, with {dir} for a per-case directory; files to create there)
CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "static peers": (["--peer", f"a={target_v4(1)}"], {}),
    "peers file": (
        ["--discovery", "file", "--peers-file", "{dir}/nodes.json"],
        {"nodes.json": "good"},
    ),
    "textfile into a directory": (
        ["--peer", f"a={target_v4(1)}", "--output", "both", "--textfile-dir", "{dir}/tf"],
        {"tf/": ""},
    ),
    "deeply nested peers file": (
        ["--discovery", "file", "--peers-file", "{dir}/nodes.json"],
        {"nodes.json": "[" * 50_000 + "]" * 50_000},
    ),
    "lone surrogate in the peers file": (
        ["--discovery", "file", "--peers-file", "{dir}/nodes.json"],
        {"nodes.json": '[{"name": "a\\udcff", "ipAddress": "198.18.0.1"}]'},
    ),
    "missing peers file": (["--discovery", "file", "--peers-file", "{dir}/none.json"], {}),
    "static without peers": (["--discovery", "static"], {}),
    "textfile directory missing": (
        ["--peer", f"a={target_v4(1)}", "--output", "textfile", "--textfile-dir", "{dir}/no"],
        {},
    ),
    "textfile directory is a file": (
        ["--peer", f"a={target_v4(1)}", "--output", "textfile", "--textfile-dir", "{dir}/f"],
        {"f": "x"},
    ),
    "kubeconfig missing": (["--discovery", "kubernetes", "--kubeconfig", "{dir}/kc"], {}),
    "kubeconfig malformed": (
        ["--discovery", "kubernetes", "--kubeconfig", "{dir}/kc"],
        {"kc": "clusters:\n  - cluster: [\n    server: x\n"},
    ),
    "infinite interval": (["--peer", f"a={target_v4(1)}", "--interval", "inf"], {}),
    "node name with a path": (["--peer", f"a={target_v4(1)}", "--node-name", "../x"], {}),
    "interval too short": (["--peer", f"a={target_v4(1)}", "--interval", "0.01"], {}),
}


def materialise(case: str, directory: Path) -> list[str]:
    args, files = CASES[case]
    for name, content in files.items():
        path = directory / name
        if name.endswith("/"):
            path.mkdir()
            continue
        if content == "good":
            content = json.dumps([{"name": "a", "ipAddress": target_v4(1)}])
        path.write_text(content)
    return [a.replace("{dir}", str(directory)) for a in args]


def check_config(args: list[str]) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--node-name", "agent", *args, "--check-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=30,
    )
    return result.returncode, result.stderr


def agent_outcome(agent: AgentProcess) -> int:
    """0 once the agent serves /healthz, or its exit code."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if agent.proc.poll() is not None:
            return agent.proc.returncode
        if agent.get("/healthz")[0] == 200:
            return 0
        time.sleep(0.1)
    raise AssertionError(f"agent neither served nor exited: {agent.output()}")


@pytest.mark.parametrize("case", list(CASES))
def test_check_config_and_the_agent_agree(
    case: str, tmp_path: Path, agent_factory: Callable[..., AgentProcess]
) -> None:
    args = materialise(case, tmp_path)
    checked, check_err = check_config(args)
    agent = agent_factory(*args)
    started = agent_outcome(agent)
    assert (checked, started) in ((0, 0), (2, 2)), (checked, check_err, agent.output())
    if checked == 2:
        for text in (check_err, agent.output()):
            lines = text.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("node-ping-exporter: "), text
            assert "Traceback" not in text
