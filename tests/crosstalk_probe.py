"""Run inside the agent namespace by test_crosstalk_raw_sockets_with_equal_ids.

Two real Probers with real raw sockets, forced to share ICMP id and counter, probe
one address; prints their counts as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.engine import Prober
from exporter.icmp import open_echo_socket
from exporter.peers import PeerKey, PeerKind, PeerTable


async def main(address: str) -> None:
    probers = []
    sockets = []
    for payload in (16, 100):  # B's packets exceed the nftables length limit
        table = PeerTable(window=30, per_peer_histogram=False)
        sockets.append(open_echo_socket(4, raw=True))
        prober = Prober(table, {4: sockets[-1]}, 0.05, 0.3, payload, phase=0.0)
        table._on_change = prober.peers_changed
        table.replace(PeerKind.NODE, [PeerKey(PeerKind.NODE, "t", address)])
        probers.append(prober)
    a, b = probers
    # Same ICMP id and the same sequence numbers at the same moments: what two agents
    # with PID 1 get from icmplib. Only each process's random payload token differs.
    sockets[1].ident = sockets[0].ident
    b._counter = a._counter
    tasks = [asyncio.create_task(p.run()) for p in probers]
    await asyncio.sleep(2.0)
    for p in probers:
        p.stop()
    await asyncio.gather(*tasks)
    (sa,), (sb,) = a.table.snapshot(), b.table.snapshot()
    print(
        json.dumps(
            {
                "same_ident": sockets[0].ident == sockets[1].ident,
                "a_sent": sa.stats.sent,
                "a_received": sa.stats.received,
                "b_sent": sb.stats.sent,
                "b_received": sb.stats.received,
            }
        )
    )


asyncio.run(main(sys.argv[1]))
