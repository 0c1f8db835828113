"""Every running part has one shape: supervised, restarted with backoff or ending the
agent, never silently gone, stopped in bounded time, collecting its own metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
from prometheus_client.core import Metric

from exporter.supervisor import MAX_FAILURES, Supervisor


class Part:
    def __init__(self, name: str, failures: int, returns: bool = False) -> None:
        self.name = name
        self.failures = failures  # run() raises this many times, then works
        self.returns = returns  # run() returns instead of raising
        self.runs = 0

    async def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            if self.returns:
                return
            raise RuntimeError(f"boom {self.runs}")
        await asyncio.Event().wait()

    def collect(self) -> Iterator[Metric]:
        return iter(())


class Stubborn(Part):
    """Ignores the first cancellation: stop() must still return in bounded time."""

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(3600)


def samples(supervisor: Supervisor) -> dict[tuple[str, ...], float]:
    out = {}
    for family in supervisor.collect():
        for sample in family.samples:
            out[(sample.name, *sample.labels.values())] = sample.value
    return out


def test_a_failing_part_is_restarted_with_backoff_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sleeps: list[float] = []

    async def scenario() -> Supervisor:
        async def no_wait(seconds: float) -> None:
            sleeps.append(seconds)

        supervisor = Supervisor("me", backoff_first=1.0, backoff_max=4.0, sleep=no_wait)
        crashing, quitting = Part("crashing", failures=4), Part("quitting", 1, returns=True)
        supervisor.start(crashing)
        supervisor.start(quitting)
        for _ in range(50):
            await asyncio.sleep(0)
        assert crashing.runs == 5 and quitting.runs == 2  # running again
        assert await supervisor.stop(1.0)
        return supervisor

    with caplog.at_level(logging.ERROR):
        supervisor = asyncio.run(scenario())
    assert sorted(sleeps) == sorted([1.0, 2.0, 4.0, 4.0, 1.0])  # doubling, capped
    got = samples(supervisor)
    assert got[("kube_node_ping_component_restarts_total", "me", "crashing")] == 4
    assert got[("kube_node_ping_component_restarts_total", "me", "quitting")] == 1
    assert got[("kube_node_ping_exceptions_total", "me")] == 4
    failures = [r for r in caplog.records if r.getMessage() == "component failed, restarting"]
    assert len(failures) == 5
    assert {getattr(r, "component", None) for r in failures} == {"crashing", "quitting"}
    assert "stopped by itself" in {getattr(r, "problem", None) for r in failures}


def test_a_part_that_keeps_failing_ends_the_agent_with_a_reason() -> None:
    async def scenario() -> Supervisor:
        async def no_wait(seconds: float) -> None:
            await asyncio.sleep(0)

        supervisor = Supervisor("me", sleep=no_wait)
        supervisor.start(Part("vital", failures=100))
        supervisor.start(Part("flaky", failures=3))  # fewer than MAX_FAILURES: keeps going
        await asyncio.wait_for(supervisor.ended.wait(), 1.0)
        await supervisor.stop(1.0)
        return supervisor

    supervisor = asyncio.run(scenario())
    assert (
        supervisor.fatal
        == f"vital failed {MAX_FAILURES} times in a row: RuntimeError: boom {MAX_FAILURES}"
    )
    assert supervisor.restarts == {"vital": MAX_FAILURES - 1, "flaky": 3}


def test_a_cancellation_from_inside_is_a_failure_not_a_silent_stop() -> None:
    class Inner(Part):
        async def run(self) -> None:
            self.runs += 1
            if self.runs == 1:
                inner = asyncio.ensure_future(asyncio.sleep(10))
                inner.cancel()
                await inner  # raises CancelledError, though nobody cancelled the part
            await asyncio.Event().wait()

    async def scenario() -> tuple[Supervisor, Inner]:
        async def no_wait(seconds: float) -> None:
            await asyncio.sleep(0)

        supervisor, part = Supervisor("me", sleep=no_wait), Inner("inner", 0)
        supervisor.start(part)
        for _ in range(20):
            await asyncio.sleep(0)
        assert await supervisor.stop(1.0)
        return supervisor, part

    supervisor, part = asyncio.run(scenario())
    assert part.runs == 2 and supervisor.restarts == {"inner": 1}


def test_stop_is_bounded_even_for_a_part_that_ignores_it() -> None:
    async def scenario() -> tuple[bool, float]:
        supervisor = Supervisor("me")
        supervisor.start(Part("fine", failures=0))
        supervisor.start(Stubborn("stubborn", failures=0))
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopped = await supervisor.stop(0.2)
        return stopped, loop.time() - began

    stopped, took = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert not stopped and took < 0.5


def test_stop_ends_the_parts_named_first_before_cancelling_the_others() -> None:
    """The agent stops serving /metrics before its reflector stops answering."""
    ended: list[str] = []

    class Noting(Part):
        async def run(self) -> None:
            try:
                await asyncio.Event().wait()
            finally:
                await asyncio.sleep(0.01)  # winding down takes a moment
                ended.append(self.name)

    async def scenario() -> bool:
        supervisor = Supervisor("me")
        http, reflector = Noting("http", 0), Noting("reflector", 0)
        supervisor.start(reflector)
        supervisor.start(http)
        await asyncio.sleep(0.01)
        return await supervisor.stop(1.0, first=[http])

    assert asyncio.run(asyncio.wait_for(scenario(), 5))
    assert ended == ["http", "reflector"]


def test_stop_with_parts_first_is_bounded_by_one_timeout_in_all() -> None:
    async def scenario() -> tuple[bool, float]:
        supervisor = Supervisor("me")
        first = Stubborn("http", failures=0)
        supervisor.start(first)
        supervisor.start(Stubborn("reflector", failures=0))
        await asyncio.sleep(0.01)
        loop = asyncio.get_running_loop()
        began = loop.time()
        stopped = await supervisor.stop(0.3, first=[first])
        return stopped, loop.time() - began

    stopped, took = asyncio.run(asyncio.wait_for(scenario(), 5))
    assert not stopped and took < 0.5
