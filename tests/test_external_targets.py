"""External targets' name resolution: concurrent, bounded, never in the way (defect 3).

The resolver is replaced by one that never answers (or answers on cue): what is
tested is the scheduling around it. The real resolver, through the agent in a
network namespace: test_agent_netns.py.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from exporter.config import ExternalTarget
from exporter.discovery import external
from exporter.discovery.external import ExternalTargets
from exporter.peers import PeerKind, PeerTable


def targets(*specs: str) -> list[ExternalTarget]:
    out = []
    for spec in specs:
        name, _, host = spec.partition("=")
        out.append(ExternalTarget(name=name, host=host))
    return out


def probed(table: PeerTable) -> dict[str, str]:
    return {p.key.name: p.key.address for p in table.snapshot() if p.key.kind is PeerKind.EXTERNAL}


def test_a_hanging_resolver_delays_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()
    started: list[str] = []

    def resolve(host: str) -> list[str]:
        started.append(host)
        if host == "hangs.test":
            release.wait(30)
            return ["198.18.0.99"]
        return ["198.18.0.50"]

    monkeypatch.setattr(external, "resolve", resolve)
    table = PeerTable(window=5, per_peer_histogram=False)
    resolver = ExternalTargets(
        targets("ip=198.18.0.9", "slow=hangs.test", "ok=fine.test"),
        table,
        interval=0.05,
        timeout=0.2,
    )
    # IP targets are probed from the start, before any lookup.
    assert probed(table) == {"ip": "198.18.0.9"}

    async def scenario() -> None:
        task = asyncio.create_task(resolver.run())
        began = time.monotonic()
        while "ok" not in probed(table):
            await asyncio.sleep(0.01)
        # Looked up concurrently: the good name did not wait for the hanging one.
        assert time.monotonic() - began < 0.15
        await asyncio.sleep(1.0)  # several rounds while the lookup still hangs
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
    assert probed(table) == {"ip": "198.18.0.9", "ok": "198.18.0.50"}
    # Counted each round, but never a second thread for the name still hanging.
    assert started.count("hangs.test") == 1
    assert resolver.resolve_errors["slow"] >= 3
    assert resolver.resolve_errors["ok"] == 0
    release.set()


def test_the_last_good_address_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[list[str] | OSError] = [["198.18.0.1"], OSError("no such name"), ["198.18.0.2"]]

    def resolve(host: str) -> list[str]:
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(external, "resolve", resolve)
    table = PeerTable(window=5, per_peer_histogram=False)
    resolver = ExternalTargets(targets("gw=gw.test"), table, interval=1, timeout=1)
    assert probed(table) == {}  # never resolved: not probed

    async def rounds() -> list[dict[str, str]]:
        seen = []
        for _ in range(3):
            await resolver.resolve_all()
            seen.append(probed(table))
        return seen

    assert asyncio.run(rounds()) == [
        {"gw": "198.18.0.1"},
        {"gw": "198.18.0.1"},
        {"gw": "198.18.0.2"},
    ]
    assert resolver.resolve_errors == {"gw": 1}
