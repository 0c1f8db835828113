"""External targets: hosts outside the cluster, probed like peers.

A target given as an IP address is probed from the start. A target given as a
DNS name is resolved at start and every ``--resolve-interval``: all names at
once, each lookup bounded by RESOLVE_TIMEOUT_SECONDS, each in a daemon thread
of its own (not the loop's shared pool, and never joined at exit), so a
resolver that never answers delays neither the node probes, nor ``/healthz``,
nor the agent's exit. A failed or timed-out lookup is counted and logged,
never fatal, and the target keeps its last good address; a target never
resolved yet is not probed until it resolves. A lookup still hanging from the
last round is not started again, so there is at most one thread per target.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

from icmplib import resolve
from prometheus_client.core import Metric

from ..config import ExternalTarget, is_ip, normalise_ip
from ..metric_table import RESOLVE_ERRORS, TARGET_INFO
from ..peers import PeerKey, PeerKind, PeerTable
from ..supervisor import call_in_thread

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_SECONDS = 10.0


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
        self._lookups: dict[str, asyncio.Future[list[str]]] = {}
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
        """Look every DNS name up at once; each new address is probed as soon as it is known."""
        await asyncio.gather(*(self._resolve(t) for t in self._names))

    async def _resolve(self, target: ExternalTarget) -> None:
        address = await self._lookup(target)
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
            lookup = asyncio.ensure_future(call_in_thread(resolve, target.host))
            lookup.add_done_callback(_retrieved)  # one that ends after we gave up on it
            self._lookups[target.name] = lookup
            found = await asyncio.wait_for(asyncio.shield(lookup), self.timeout)
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
        while True:  # a lookup still hanging when this is cancelled ends on its own
            await self.resolve_all()
            await asyncio.sleep(self.interval)

    def collect(self) -> Iterator[Metric]:
        me = self.node_name
        errors = sorted(dict(self.resolve_errors).items())
        yield RESOLVE_ERRORS.samples(((me, name), count) for name, count in errors)
        hosts = {t.name: t.host for t in self.targets}
        addresses = sorted(dict(self.addresses).items())
        yield TARGET_INFO.samples(((me, n, hosts[n], a), 1) for n, a in addresses)


def _retrieved(future: asyncio.Future[list[str]]) -> None:
    if not future.cancelled():
        future.exception()  # seen: asyncio does not report it as never retrieved
