"""One shape for every running part of the agent, and the task group that runs them.

A component (each discovery source, the prober, the external-target resolver,
the textfile writer, the HTTP server) has a ``name``, an async ``run()`` that
works until it is cancelled, and ``collect()``, the metric families it owns.
The :class:`Supervisor` starts each one as a task. A component whose ``run()``
raises or returns is never silently gone: the failure is logged and counted,
and the component is restarted after a capped, doubling backoff. One that keeps
failing — ``max_failures`` times in a row, each soon after its start — ends
the agent with one line saying why (exit 1), so that the kubelet restarts the
container and the crash loop shows. Stopping cancels every task and waits a
bounded time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import ParamSpec, Protocol, TypeVar

from prometheus_client.core import Metric

from .metric_table import COMPONENT_RESTARTS, EXCEPTIONS

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 1.0
BACKOFF_MAX_SECONDS = 30.0
# A component that ran this long before failing starts its backoff afresh.
HEALTHY_RUN_SECONDS = 60.0
# Failures in a row, each within HEALTHY_RUN_SECONDS of its start, that end the agent:
# with the backoff above, about a minute of trying.
MAX_FAILURES = 6


class AgentFailed(Exception):
    """A critical component failed; the message is the one line printed (exit 1)."""


class Component(Protocol):
    name: str

    async def run(self) -> None: ...

    def collect(self) -> Iterable[Metric]: ...


class Supervisor:
    def __init__(
        self,
        node_name: str,
        backoff_first: float = BACKOFF_FIRST_SECONDS,
        backoff_max: float = BACKOFF_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.node_name = node_name
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self.clock = clock
        self.sleep = sleep
        self.components: list[Component] = []
        self.restarts: dict[str, int] = {}
        self.exceptions = 0  # also unexpected errors the event loop reports
        self.fatal: str | None = None  # why a failing component ended the agent
        self.ended = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, component: Component, max_failures: int = MAX_FAILURES) -> None:
        self.components.append(component)
        self.restarts[component.name] = 0
        task = asyncio.create_task(self._supervise(component, max_failures), name=component.name)
        self._tasks.append(task)

    async def _supervise(self, component: Component, max_failures: int) -> None:
        backoff = self.backoff_first
        failures = 0
        while True:
            started = self.clock()
            try:
                await component.run()
                problem = "stopped by itself"
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # stopping: the supervisor cancelled it
                problem = "cancelled from inside"
            except Exception as exc:
                self.exceptions += 1
                problem = f"{type(exc).__name__}: {exc}"
                log.debug("component failure", exc_info=True)
            if self.clock() - started >= HEALTHY_RUN_SECONDS:
                backoff, failures = self.backoff_first, 0
            failures += 1
            if failures >= max_failures:
                self.fatal = f"{component.name} failed {failures} times in a row: {problem}"
                log.error(
                    "component keeps failing, stopping the agent",
                    extra={"component": component.name, "problem": problem},
                )
                self.ended.set()
                return
            self.restarts[component.name] += 1
            log.error(
                "component failed, restarting",
                extra={"component": component.name, "problem": problem, "backoff": backoff},
            )
            await self.sleep(backoff)
            backoff = min(backoff * 2, self.backoff_max)

    async def stop(self, timeout: float, first: Iterable[Component] = ()) -> bool:
        """Cancel every component, those in ``first`` before the others have been
        cancelled; True when all ended within ``timeout`` seconds in all."""
        names = {component.name for component in first}
        leading = [task for task in self._tasks if task.get_name() in names]
        rest = [task for task in self._tasks if task not in leading]
        deadline = self.clock() + timeout
        pending = await self._cancel(leading, timeout) if leading else set()
        if rest:
            pending |= await self._cancel(rest, max(deadline - self.clock(), 0.0))
        for task in pending:
            log.error("component did not stop in time", extra={"component": task.get_name()})
        return not pending

    @staticmethod
    async def _cancel(tasks: list[asyncio.Task[None]], timeout: float) -> set[asyncio.Task[None]]:
        for task in tasks:
            task.cancel()
        return (await asyncio.wait(tasks, timeout=timeout))[1]

    def collect(self) -> Iterator[Metric]:
        me = self.node_name
        yield EXCEPTIONS.sample(self.exceptions, me)
        yield COMPONENT_RESTARTS.samples(((me, n), c) for n, c in sorted(self.restarts.items()))
        for component in list(self.components):
            yield from component.collect()


P = ParamSpec("P")
T = TypeVar("T")


async def call_in_thread(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """A blocking call (a file read or write, a name lookup) in a daemon thread of its
    own: not the loop's shared pool, which asyncio.run waits for at exit, so a call
    that hangs can neither block other work nor hold up the agent's exit. A caller
    that stops waiting (cancelled, timed out) leaves the call to finish on its own."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    future.set_running_or_notify_cancel()  # running: giving up on it cannot cancel it

    def work() -> None:
        try:
            future.set_result(func(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=work, name=getattr(func, "__name__", "call"), daemon=True).start()
    return await asyncio.wrap_future(future)


async def in_thread(target: Callable[[], None], stop: Callable[[], None]) -> None:
    """Run a blocking loop (serve_forever, list/watch) in a thread of its own until it
    returns or raises; cancelling the caller runs ``stop``, which must make it return."""
    try:
        await call_in_thread(target)
    finally:
        await call_in_thread(stop)
