"""External targets: hosts outside the cluster, probed like peers.

A target given as a DNS name is resolved at start and every
``--resolve-interval``; a failed lookup is counted and logged, never fatal,
and the target keeps its last good address (a target never resolved yet is not
probed until it resolves).
"""

from __future__ import annotations

import asyncio
import logging

from icmplib import async_resolve

from ..config import ExternalTarget, normalise_ip
from ..peers import PeerKey, PeerKind, PeerTable

log = logging.getLogger(__name__)


class ExternalTargets:
    def __init__(self, targets: list[ExternalTarget], table: PeerTable) -> None:
        self.targets = targets
        self.table = table
        self.addresses: dict[str, str] = {}  # target name -> last good address
        self.resolve_errors: dict[str, int] = {t.name: 0 for t in targets}

    async def resolve_all(self) -> None:
        for target in self.targets:
            address: str | None
            try:
                address = normalise_ip(target.host)
            except ValueError:
                address = await self._lookup(target)
            if address and self.addresses.get(target.name) != address:
                log.info(
                    "external target resolved",
                    extra={"target": target.name, "host": target.host, "address": address},
                )
                self.addresses[target.name] = address
        self.table.replace(
            PeerKind.EXTERNAL,
            (
                PeerKey(PeerKind.EXTERNAL, t.name, self.addresses[t.name], t.host)
                for t in self.targets
                if t.name in self.addresses
            ),
        )

    async def _lookup(self, target: ExternalTarget) -> str | None:
        try:
            found = await async_resolve(target.host)
            return normalise_ip(found[0])
        except Exception as exc:  # icmplib raises NameLookupError; keep the last address
            self.resolve_errors[target.name] += 1
            log.warning(
                "cannot resolve external target, keeping its last address",
                extra={"target": target.name, "host": target.host, "problem": str(exc)},
            )
            return None

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.resolve_all()
