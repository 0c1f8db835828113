"""Static discovery: peers given as ``--peer NAME=IP``, for trying the agent out."""

from __future__ import annotations

from ..config import StaticPeer
from ..peers import NodeAddress
from . import DiscoveryState, NodeSink


def apply_static_peers(peers: list[StaticPeer], sink: NodeSink, state: DiscoveryState) -> None:
    sink.update(NodeAddress(p.name, (p.address,)) for p in peers)
    state.succeeded()
