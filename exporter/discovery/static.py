"""Static discovery: peers given as ``--peer NAME=IP``, for trying the agent out."""

from __future__ import annotations

import asyncio

from ..config import StaticPeer
from ..peers import NodeAddress
from . import DiscoverySource, DiscoveryState, NodeSink


class StaticDiscovery(DiscoverySource):
    name = "discovery-static"

    def __init__(self, peers: list[StaticPeer], sink: NodeSink, state: DiscoveryState) -> None:
        self.state = state
        self.sink = sink
        sink.update(NodeAddress(p.name, (p.address,)) for p in peers)
        state.succeeded()

    async def run(self) -> None:
        """Nothing changes: wait to be stopped."""
        await asyncio.Event().wait()
