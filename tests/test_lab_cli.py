"""node-ping-lab's command line: errors are one line, down is idempotent, rules render."""

from __future__ import annotations

import subprocess
import sys

from lab.cli import build_parser, parse_fault
from lab.cluster import Lab
from lab.faults import Fault, network_ruleset
from lab.state import LabError

from .conftest import ROOT


def lab_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lab.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_commands_on_a_lab_that_is_not_up_fail_in_one_line() -> None:
    result = lab_cli("--name", "never-up", "status")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "node-ping-lab: no lab named 'never-up' is up (node-ping-lab up)"
    )


def test_down_is_idempotent() -> None:
    for _ in range(2):
        assert lab_cli("--name", "never-up", "down").returncode == 0
    Lab("never-up").down()


def test_bad_fault_arguments() -> None:
    parser = build_parser()
    for argv, message in (
        (["fault", "inbound", "node-1"], "needs a loss percentage"),
        (["fault", "inbound", "node-1", "120"], "loss must be in (0, 100]"),
        (["fault", "latency", "node-1", "x"], "needs a delay in ms"),
        (["fault", "link", "node-1"], "needs the other node"),
    ):
        try:
            parse_fault(parser.parse_args(argv))
        except LabError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{argv} accepted")
    result = lab_cli("fault", "melt", "node-1")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_the_network_ruleset_drops_only_what_each_fault_names() -> None:
    addresses = {"a": ["198.18.0.1"], "b": ["198.18.0.2", "fd00:198:18::2"], "c": ["198.18.0.3"]}
    faults = [Fault("inbound", "a", percent=30), Fault("link", "b", peer="c", both_ways=False)]
    rules = network_ruleset(faults, addresses)
    assert (
        "ip daddr { 198.18.0.1 } icmp type echo-request numgen random mod 10000 < 3000 drop"
        in rules
    )
    assert "ip saddr { 198.18.0.2 } ip daddr { 198.18.0.3 } icmp type echo-request drop" in rules
    assert "ip saddr { 198.18.0.3 } ip daddr { 198.18.0.2 }" not in rules  # one way only
    assert "ip6" not in rules  # a and c have no IPv6: no IPv6 rule for these faults
    assert rules.startswith("table bridge npelab {")
