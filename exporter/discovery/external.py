"""External targets: hosts outside the cluster, probed like peers.

A target given as an IP address is probed from the start. A target given as a
DNS name is resolved at start and every ``--resolve-interval``: all names at
once, each lookup bounded by RESOLVE_TIMEOUT_SECONDS, in a small thread pool
of its own, so a resolver that never answers delays neither the node probes
nor ``/healthz`` (nor anything else that runs in the loop's default pool). A
failed or timed-out lookup is counted and logged, never fatal, and the target
keeps its last good address; a target never resolved yet is not probed until
it resolves. A lookup still hanging from the last round is not started again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterator

from icmplib import resolve
from prometheus_client.core import Metric

from ..config import ExternalTarget, is_ip, normalise_ip
from ..metric_table import RESOLVE_ERRORS, TARGET_INFO
from ..peers import PeerKey, PeerKind, PeerTable

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_SECONDS = 10.0
RESOLVER_THREADS = 4


class ExternalTargets:
    name = "external-targets"

    def __init__(
        self,
        targets: list[ExternalTarget],
        table: PeerTable,
        interval: float,
        node_name: str = "",
        timeout: float = RESOLVE_TIMEOUT_SECONDS,
    ) -> None:
        self.targets = targets
        self.table = table
        self.interval = interval
        self.node_name = node_name
        self.timeout = timeout
        self.addresses: dict[str, str] = {}  # target name -> last good address
        self.resolve_errors: dict[str, int] = {t.name: 0 for t in targets}
        self._names = [t for t in targets if not is_ip(t.host)]
        for target in targets:
            if target not in self._names:
                self.addresses[target.name] = normalise_ip(target.host)
        self._lookups: dict[str, concurrent.futures.Future[list[str]]] = {}
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._publish()

    def _publish(self) -> None:
        self.table.replace(
            PeerKind.EXTERNAL,
            (
                PeerKey(PeerKind.EXTERNAL, t.name, self.addresses[t.name], t.host)
                for t in self.targets
                if t.name in self.addresses
            ),
        )

    async def resolve_all(self) -> None:
        """Look every DNS name up at once; publish what changed."""
        results = await asyncio.gather(*(self._lookup(t) for t in self._names))
        for target, address in zip(self._names, results, strict=True):
            if address and self.addresses.get(target.name) != address:
                log.info(
                    "external target resolved",
                    extra={"target": target.name, "host": target.host, "address": address},
                )
                self.addresses[target.name] = address
        self._publish()

    async def _lookup(self, target: ExternalTarget) -> str | None:
        pending = self._lookups.get(target.name)
        try:
            if pending is not None and not pending.done():
                raise TimeoutError("the previous lookup has not returned yet")
            if self._pool is None:
                self._pool = concurrent.futures.ThreadPoolExecutor(
                    RESOLVER_THREADS, thread_name_prefix="resolve"
                )
            future = self._pool.submit(resolve, target.host)
            self._lookups[target.name] = future
            found = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
            return normalise_ip(found[0])
        except Exception as exc:  # NameLookupError, timeout: keep the last address
            self.resolve_errors[target.name] += 1
            problem = f"no answer within {self.timeout:g}s" if type(exc) is TimeoutError else exc
            log.warning(
                "cannot resolve external target, keeping its last address",
                extra={"target": target.name, "host": target.host, "problem": str(problem)},
            )
            return None

    async def run(self) -> None:
        try:
            while True:
                await self.resolve_all()
                await asyncio.sleep(self.interval)
        finally:  # a lookup still hanging is left to finish on its own
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def collect(self) -> Iterator[Metric]:
        me = self.node_name
        errors = sorted(dict(self.resolve_errors).items())
        yield RESOLVE_ERRORS.samples(((me, name), count) for name, count in errors)
        hosts = {t.name: t.host for t in self.targets}
        addresses = sorted(dict(self.addresses).items())
        yield TARGET_INFO.samples(((me, n, hosts[n], a), 1) for n, a in addresses)
