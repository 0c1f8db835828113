"""The STAMP packets a node's reflector answers in a cluster, for the benchmark.

    python -m benchmarks.stamp_load AGENT_ADDRESS PORT PEERS SECONDS

In a cluster of N nodes every agent's reflector receives one STAMP test packet
per second from each of its N - 1 peers. This sends that load to the agent
under test, from the peers' own addresses (the target addresses, local to the
"hosts" namespace, chosen per packet with IP_PKTINFO), each once per second at
a fixed offset, for SECONDS at most; it reads the replies and prints
``{"sent": S, "answered": A}`` as JSON when it ends (SIGTERM or time).
Bounded: at most PEERS packets per second, only to AGENT_ADDRESS.
"""

from __future__ import annotations

import json
import signal
import socket
import struct
import sys
import time

from exporter.stamp import ntp_timestamp, pack_sender
from lab.targets import target_v4

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; typeshed lacks the name


def main() -> None:
    agent, port, peers, seconds = (
        sys.argv[1],
        int(sys.argv[2]),
        int(sys.argv[3]),
        float(sys.argv[4]),
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.setblocking(False)
    sources = [
        [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("I4s4s", 0, socket.inet_aton(
            target_v4(i)), b"\0" * 4))]
        for i in range(1, peers + 1)
    ]  # fmt: skip
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sent = answered = 0
    start = time.monotonic()
    end = start + seconds
    second = 0
    while not stopping and time.monotonic() < end:
        for index, ancillary in enumerate(sources):
            due = start + second + index / peers
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            if stopping or time.monotonic() >= end:
                break
            packet = pack_sender(second, ntp_timestamp(time.time_ns()), 1 + index % 65535)
            try:
                sock.sendmsg([packet], ancillary, 0, (agent, port))
                sent += 1
            except OSError:
                pass
            while True:
                try:
                    sock.recv(2048)
                    answered += 1
                except OSError:
                    break
        second += 1
    print(json.dumps({"sent": sent, "answered": answered}), flush=True)


if __name__ == "__main__":
    main()
