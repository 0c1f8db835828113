"""The icmplib extension: packets identical to icmplib's, checksum, mode errors."""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from icmplib.sockets import ICMPSocket, ICMPv4Socket, ICMPv6Socket

from exporter.icmp import (
    PAYLOAD_HEADER,
    EchoSocketV4,
    EchoSocketV6,
    fast_checksum,
)


@pytest.mark.parametrize("size", [1, 2, 3, 8, 63, 64, 1000])
def test_checksum_equals_icmplib(size: int) -> None:
    for _ in range(200):
        data = os.urandom(size)
        assert fast_checksum(data) == ICMPSocket._checksum(None, data)
    for data in (b"\xff\xff", b"\x00\x00", b"\xff\xff\xff\xff", b"\x00\x01\xff\xfe"):
        assert fast_checksum(data) == ICMPSocket._checksum(None, data)


@pytest.mark.skipif(os.geteuid() != 0, reason="raw sockets need root")
@pytest.mark.parametrize(
    "ours, theirs", [(EchoSocketV4, ICMPv4Socket), (EchoSocketV6, ICMPv6Socket)]
)
def test_request_builder_builds_icmplibs_packet(ours: type, theirs: Any) -> None:
    """Raw mode: byte for byte what icmplib's own _create_packet makes."""
    sock = ours(privileged=True)
    sock._prepare(dont_fragment=True)
    try:
        token = os.urandom(8)
        build = sock.request_builder(token, 56)
        for sequence, counter in ((0, 0), (1, 2**40 + 1), (0xFFFF, 2**63 - 1)):
            payload = PAYLOAD_HEADER.pack(token, counter) + b"\x00" * 40
            expected = theirs._create_packet(sock, sock.ident, sequence, payload)
            assert build(sequence, counter) == expected
        assert len(build(1, 1)) == 8 + 56
    finally:
        sock.close()


def test_unprivileged_request_leaves_id_and_checksum_to_the_kernel() -> None:
    sock = EchoSocketV4.__new__(EchoSocketV4)
    sock._privileged = False
    sock._sock = None  # type: ignore[assignment]  # never opened: nothing to close
    sock.ident = 0
    packet = sock.request_builder(b"T" * 8, 16)(7, 9)
    assert struct.unpack("!BBHHH8sQ", packet) == (8, 0, 0, 0, 7, b"T" * 8, 9)
