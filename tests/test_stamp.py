"""STAMP (RFC 8762, RFC 8972): the packets byte for byte, the per-direction accounting,
the stateful reflector, and both directions of interoperability with stamp-suite
(crates.io, built by scripts/install-tools.sh), an implementation nobody here wrote.

Everything runs over real UDP sockets on loopback; the network faults that make
the directions differ are the lab's (tests/test_lab_stamp.py)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.peers import Peer, PeerKey, PeerKind
from exporter.reflector import SESSION_IDLE_SECONDS, Reflector, open_reflector_socket
from exporter.stamp import (
    BASE_SIZE,
    ERROR_ESTIMATE,
    NTP_UNIX_OFFSET,
    ntp_difference_ns,
    ntp_timestamp,
    ntp_to_ns,
    pack_reflector,
    pack_sender,
    reflect_tlvs,
    unpack_reflector,
    unpack_sender,
)
from exporter.stamp_sender import StampSender, open_sender_socket
from exporter.stats import PeerStats, StampStats

ROOT = Path(__file__).resolve().parent.parent
STAMP_SUITE = ROOT / ".cache" / "bin" / "stamp-suite"


def be(value: int, size: int) -> bytes:
    return value.to_bytes(size, "big")


# -- the packets, against the RFCs' field offsets ------------------------------------


def test_sender_packet_is_rfc_8762_section_4_2_1_with_the_rfc_8972_ssid() -> None:
    packet = pack_sender(0x01020304, 0x1112131415161718, ssid=0xABCD)
    assert len(packet) == 44
    assert packet[0:4] == be(0x01020304, 4)  # Sequence Number
    assert packet[4:12] == be(0x1112131415161718, 8)  # Timestamp
    # Error Estimate (RFC 4656 §4.1.2): S=0 (not synchronised), Z=0 (NTP), Scale, Multiplier
    error = int.from_bytes(packet[12:14], "big")
    assert error >> 15 == 0 and (error >> 14) & 1 == 0 and error & 0xFF != 0
    assert packet[14:16] == be(0xABCD, 2)  # SSID (RFC 8972 §3)
    assert packet[16:44] == bytes(28)  # MBZ


def test_reflector_packet_is_rfc_8762_section_4_3_1() -> None:
    sender = unpack_sender(pack_sender(0x0A0B0C0D, 0x2122232425262728, ssid=0x1234))
    assert sender is not None
    packet = pack_reflector(
        0x01020304, 0x3132333435363738, 0x4142434445464748, sender, sender_ttl=61
    )
    assert len(packet) == 44
    assert packet[0:4] == be(0x01020304, 4)  # Sequence Number (the reflector's)
    assert packet[4:12] == be(0x3132333435363738, 8)  # Timestamp (sent)
    assert packet[12:14] == be(ERROR_ESTIMATE, 2)  # Error Estimate
    assert packet[14:16] == be(0x1234, 2)  # SSID, copied (RFC 8972 §3; MBZ in RFC 8762)
    assert packet[16:24] == be(0x4142434445464748, 8)  # Receive Timestamp
    assert packet[24:28] == be(0x0A0B0C0D, 4)  # Session-Sender Sequence Number
    assert packet[28:36] == be(0x2122232425262728, 8)  # Session-Sender Timestamp
    assert packet[36:38] == be(ERROR_ESTIMATE, 2)  # Session-Sender Error Estimate
    assert packet[38:40] == bytes(2)  # MBZ
    assert packet[40] == 61  # Ses-Sender TTL
    assert packet[41:44] == bytes(3)  # MBZ
    parsed = unpack_reflector(packet)
    assert parsed is not None and parsed.sender_sequence == 0x0A0B0C0D
    assert unpack_sender(packet[:43]) is None and unpack_reflector(packet[:43]) is None


def test_ntp_timestamps() -> None:
    assert ntp_timestamp(0) == NTP_UNIX_OFFSET << 32
    assert ntp_timestamp(1_500_000_000) == ((NTP_UNIX_OFFSET + 1) << 32) | 0x80000000
    now = time.time_ns()
    assert abs(ntp_to_ns(ntp_timestamp(now)) - (now + NTP_UNIX_OFFSET * 10**9)) <= 1
    # A difference across the 2036 wrap of the seconds field (era 0 -> era 1).
    before_wrap = (0xFFFFFFFF << 32) | 0x80000000  # x.5 s before the wrap
    after_wrap = (0 << 32) | 0x40000000  # 0.25 s after it
    assert ntp_difference_ns(after_wrap, before_wrap) == 750_000_000
    assert ntp_difference_ns(before_wrap, after_wrap) == -750_000_000


def test_tlvs_come_back_flagged_unrecognised_or_malformed() -> None:
    """RFC 8972 §4: a reflector that implements no TLV returns each with the U flag;
    a TLV whose length runs past the packet comes back with the M flag."""
    good = bytes([0, 1]) + be(4, 2) + b"abcd"
    assert (
        reflect_tlvs(good + good)
        == bytes([0x80, 1]) + be(4, 2) + b"abcd" + bytes([0x80, 1]) + be(4, 2) + b"abcd"
    )
    truncated = bytes([0, 7]) + be(100, 2) + b"xy"
    assert reflect_tlvs(good + truncated)[8] == 0x40
    assert len(reflect_tlvs(good + truncated)) == len(good + truncated)  # same size back
    sender = unpack_sender(pack_sender(1, 2, 3) + good)
    assert sender is not None and len(pack_reflector(0, 0, 0, sender, 64)) == BASE_SIZE + 8


# -- what reached the reflector --------------------------------------------------------


def test_forward_and_reverse_loss_from_the_reflectors_numbers() -> None:
    stats = StampStats()
    # Sender packets 0..9. 2 and 3 never reach the reflector (forward loss); the
    # reflector numbers the 8 it gets 0..7; the replies to 5 and 8 are lost (reverse).
    reflector_numbers = {0: 0, 1: 1, 4: 2, 5: 3, 6: 4, 7: 5, 8: 6, 9: 7}
    for sequence in range(10):
        assert stats.next_sequence() == sequence
        if sequence in reflector_numbers and sequence not in (5, 8):
            stats.record_reply(sequence, reflector_numbers[sequence], rtt_ms=0.5)
        else:
            stats.record_loss()
    sent, reached, received, rtt_sum = stats.counters()
    assert (sent, reached, received) == (10, 8, 6)
    assert rtt_sum == pytest.approx(3.0)


def test_a_restarted_reflector_or_a_resumed_session_never_counts_more_than_was_sent() -> None:
    stats = StampStats()
    for sequence in range(5):
        stats.record_reply(sequence, sequence, 0.1)
    # The reflector restarted: it numbers from 0 again; one of our packets was lost.
    stats.record_loss()  # 5
    stats.record_reply(6, 0, 0.1)
    stats.record_reply(7, 1, 0.1)
    assert stats.counters()[:3] == (8, 7, 7)
    # This sender's session was new but the reflector resumed an old one (far ahead).
    fresh = StampStats()
    fresh.record_reply(0, 5000, 0.1)
    fresh.record_reply(1, 5001, 0.1)
    assert fresh.counters()[:3] == (2, 2, 2)


def test_a_reordered_reply_adds_nothing_to_what_reached() -> None:
    stats = StampStats()
    stats.record_reply(0, 0, 0.1)
    stats.record_reply(2, 2, 0.1)  # 1 is late
    stats.record_reply(1, 1, 0.1)
    assert stats.counters()[:3] == (3, 3, 3)
    # Reordered on the way out: the reflector numbered 6 before 5; nothing is lost.
    stats = StampStats()
    for sequence in range(5):
        stats.record_reply(sequence, sequence, 0.1)
    stats.record_reply(6, 5, 0.1)
    stats.record_reply(5, 6, 0.1)
    stats.record_reply(7, 7, 0.1)
    assert stats.counters()[:3] == (8, 8, 8)


def test_the_exposition_never_shows_more_reached_than_sent_nor_fewer_than_received() -> None:
    stats = StampStats()
    stats.record_loss()
    stats.record_loss()
    stats.record_reply(2, 2, 0.1)  # says 0, 1, 2 all reached: 1 and 2 not yet resolved...
    assert stats.counters()[:3] == (3, 3, 1)
    early = StampStats()
    early.record_reply(3, 3, 0.1)  # 0..2 still in flight: 4 reached, only 1 resolved
    assert early.counters()[:3] == (1, 1, 1)


# -- the reflector over real sockets ---------------------------------------------------


class Running:
    """A reflector on an ephemeral loopback port, driven on its own event loop."""

    def __init__(self, reflector: Reflector) -> None:
        self.reflector = reflector
        self.loop = asyncio.new_event_loop()
        self.task = self.loop.create_task(reflector.run())

    def pump(self, seconds: float = 0.05) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def close(self) -> None:
        self.task.cancel()
        self.loop.run_until_complete(asyncio.gather(self.task, return_exceptions=True))
        self.loop.close()
        self.reflector.close()


@pytest.fixture
def reflector() -> Iterator[tuple[Running, int]]:
    sock = open_reflector_socket(4, 0)
    clock = [1000.0]
    running = Running(
        Reflector({4: sock}, "me", allowed=lambda a: a == "127.0.0.1", monotonic=lambda: clock[0])
    )
    running.reflector.clock = clock  # type: ignore[attr-defined]
    yield running, sock.getsockname()[1]
    running.close()


def exchange(
    running: Running, sender: socket.socket, port: int, packets: list[bytes]
) -> list[bytes]:
    for packet in packets:
        sender.sendto(packet, ("127.0.0.1", port))
    running.pump()
    replies = []
    sender.setblocking(False)
    while True:
        try:
            replies.append(sender.recv(2048))
        except BlockingIOError:
            return replies


def test_the_reflector_numbers_each_session_from_zero(reflector: tuple[Running, int]) -> None:
    running, port = reflector
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    a_replies = exchange(running, a, port, [pack_sender(s, 7, ssid=1) for s in (10, 12, 13)])
    b_replies = exchange(running, b, port, [pack_sender(s, 7, ssid=1) for s in (0, 1)])
    parsed_a = [unpack_reflector(r) for r in a_replies]
    parsed_b = [unpack_reflector(r) for r in b_replies]
    assert [(p.sequence, p.sender_sequence) for p in parsed_a if p] == [(0, 10), (1, 12), (2, 13)]
    assert [(p.sequence, p.sender_sequence) for p in parsed_b if p] == [(0, 0), (1, 1)]
    # Another SSID from the same port is another session (RFC 8972 §3).
    other = exchange(running, a, port, [pack_sender(14, 7, ssid=2)])
    assert unpack_reflector(other[0]).sequence == 0  # type: ignore[union-attr]
    # The reply's stamps: received before sent, both now.
    reply = parsed_a[0]
    assert reply is not None and ntp_difference_ns(reply.timestamp, reply.receive_timestamp) >= 0
    assert abs(ntp_difference_ns(ntp_timestamp(time.time_ns()), reply.timestamp)) < 5e9
    assert reply.sender_ttl == 64  # what Linux sends with by default, as received
    # A session idle longer than SESSION_IDLE_SECONDS starts again from 0.
    running.reflector.clock[0] += SESSION_IDLE_SECONDS + 1  # type: ignore[attr-defined]
    again = exchange(running, a, port, [pack_sender(20, 7, ssid=1)])
    assert unpack_reflector(again[0]).sequence == 0  # type: ignore[union-attr]
    assert running.reflector.counts["reflected"] == 7


def test_the_reflector_answers_from_the_address_it_was_sent_to() -> None:
    """A node with several addresses: a packet sent to 127.0.0.3 is answered from
    127.0.0.3, not from the address the route back would pick (127.0.0.1), or the
    sender would not recognise the reply. IPv6 the same way (::1 only here)."""
    for family, target, kind in ((4, "127.0.0.3", socket.AF_INET), (6, "::1", socket.AF_INET6)):
        sock = open_reflector_socket(family, 0)
        port = sock.getsockname()[1]
        running = Running(Reflector({family: sock}, "me"))
        try:
            with socket.socket(kind, socket.SOCK_DGRAM) as sender:
                sender.sendto(pack_sender(0, 1, 9), (target, port))
                running.pump()
                sender.settimeout(2)
                data, source = sender.recvfrom(2048)
        finally:
            running.close()
        assert source[0] == target and source[1] == port
        reply = unpack_reflector(data)
        assert reply is not None and reply.ssid == 9


def test_the_reflector_answers_only_known_nodes_and_counts_the_rest(
    reflector: tuple[Running, int],
) -> None:
    running, port = reflector
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))  # an address no node has
    assert exchange(running, stranger, port, [pack_sender(0, 0, 1)]) == []
    known = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    known.bind(("127.0.0.1", 0))
    assert exchange(running, known, port, [b"short"]) == []
    counts = running.reflector.counts
    assert counts["unknown_source"] == 1 and counts["malformed"] == 1 and counts["reflected"] == 0


def test_before_the_first_discovery_sync_packets_wait_to_be_answered_not_refused() -> None:
    """A restarted agent knows no node until its discovery syncs: what its peers
    send meanwhile waits in the socket and is answered then, instead of refused
    (which its peers counted as UDP loss)."""
    nodes: set[str] = set()
    synced = asyncio.Event()
    sock = open_reflector_socket(4, 0)
    running = Running(Reflector({4: sock}, "me", allowed=nodes.__contains__, peers_known=synced))
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    try:
        port = sock.getsockname()[1]
        assert exchange(running, peer, port, [pack_sender(0, 0, 1), pack_sender(1, 0, 1)]) == []
        assert running.reflector.counts["unknown_source"] == 0
        nodes.add("127.0.0.1")
        synced.set()
        replies = exchange(running, peer, port, [])
        assert [unpack_reflector(r).sender_sequence for r in replies] == [0, 1]  # type: ignore[union-attr]
        assert running.reflector.counts["reflected"] == 2
    finally:
        peer.close()
        running.close()


def test_the_reflector_never_answers_its_own_port_and_bounds_its_replies(
    reflector: tuple[Running, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A packet from another reflector's port would bounce between the two for ever;
    a flood beyond the reply budget is dropped and counted, not answered."""
    running, port = reflector
    refl = running.reflector
    refl.port = port
    sock = refl.sockets[4]
    packet = pack_sender(0, 1, 2)
    refl.reflect(sock, packet, [], ("127.0.0.1", port))
    assert refl.counts["unknown_source"] == 1 and refl.counts["reflected"] == 0
    monkeypatch.setattr("exporter.reflector.MAX_REPLIES_PER_SECOND", 3)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    for _ in range(5):
        refl.reflect(sock, packet, [], sink.getsockname())
    assert (refl.counts["reflected"], refl.counts["rate_limited"]) == (3, 2)
    refl.clock[0] += 1  # type: ignore[attr-defined]  # the next second: answered again
    refl.reflect(sock, packet, [], sink.getsockname())
    assert refl.counts["reflected"] == 4


# -- interoperability with stamp-suite -------------------------------------------------


def stamp_suite() -> str:
    if STAMP_SUITE.exists():
        return str(STAMP_SUITE)
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed, so stamp-suite is not built")
    pytest.fail("stamp-suite is not built: run scripts/install-tools.sh (make deps does)")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_stamp_suite_sender_against_our_reflector() -> None:
    """stamp-suite's Session-Sender gets every reply, and sees our reflector number
    them itself (stateful): its summary reports the reflector's last sequence."""
    sock = open_reflector_socket(4, 0)
    port = sock.getsockname()[1]
    running = Running(Reflector({4: sock}, "me", allowed=lambda a: a == "127.0.0.1"))
    try:
        proc = subprocess.Popen(
            [stamp_suite(), "-r", "127.0.0.1", "-p", str(port), "-S", "127.0.0.1",
             "-c", "20", "-d", "20", "--ssid", "4660", "--output-format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            running.pump(0.02)
        out, _ = proc.communicate(timeout=5)
    finally:
        running.close()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["packets_sent"] == 20 and summary["packets_received"] == 20, summary
    assert summary["measurements"]["last_reflector_sequence"] == 19
    assert running.reflector.counts["reflected"] == 20
    assert next(iter(running.reflector.sessions))[2] == 4660  # its SSID named the session


def test_stamp_suite_sender_packets_are_what_we_parse() -> None:
    """Byte for byte: stamp-suite's test packets as they arrive, against RFC 8762 §4.2.1
    and RFC 8972 §3 (the layout our reflector reads)."""
    port = free_udp_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.settimeout(5)
        proc = subprocess.Popen(
            [stamp_suite(), "-r", "127.0.0.1", "-p", str(port), "-S", "127.0.0.1",
             "-c", "2", "-d", "50", "-L", "1", "--ssid", "4660"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            first, _ = sock.recvfrom(2048)
            second, _ = sock.recvfrom(2048)
        finally:
            proc.kill()
            proc.wait()
    for sequence, data in enumerate((first, second)):
        assert len(data) == 44
        packet = unpack_sender(data)
        assert packet is not None
        assert packet.sequence == sequence and packet.ssid == 4660
        assert data[16:44] == bytes(28)  # MBZ
        assert packet.error_estimate & 0x4000 == 0  # Z: NTP format, as we read it
        # The timestamp is NTP (RFC 5905): now, give or take a few seconds.
        sent = ntp_to_ns(packet.timestamp) - NTP_UNIX_OFFSET * 10**9
        assert abs(sent - time.time_ns()) < 10e9


def test_our_sender_against_stamp_suite_stateful_reflector() -> None:
    """stamp-suite's stateful reflector numbers what it receives; our sender turns that
    into what reached it. Packets 3, 4 and 7 are numbered but never sent — to the
    reflector, lost on the way out — so 7 of 10 reached it and 7 came back."""
    port = free_udp_port()
    proc = subprocess.Popen(
        [stamp_suite(), "-i", "-S", "127.0.0.1", "-o", str(port), "--stateful-reflector"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    sender = StampSender({4: open_sender_socket(4)}, port, timeout=1.0, node_name="me")
    peer = Peer(PeerKey(PeerKind.NODE, "r", "127.0.0.1"), PeerStats(5), stamp=StampStats())
    assert peer.stamp is not None
    try:
        _wait_for_reflector(sender, peer)
        start = peer.stamp.counters()
        for index in range(10):
            if index in (3, 4, 7):
                peer.stamp.next_sequence()
                peer.stamp.record_loss()
            else:
                sender.send(peer, time.monotonic(), time.time_ns())
            time.sleep(0.02)
            sender.drain(sender.sockets)
        _settle(sender)
    finally:
        proc.kill()
        proc.wait()
        sender.close()
    sent, reached, received, rtt_sum = (
        now - before for now, before in zip(peer.stamp.counters(), start, strict=True)
    )
    assert (sent, reached, received) == (10, 7, 7)
    assert 0 < rtt_sum / 7 < 5  # ms, loopback


def _wait_for_reflector(sender: StampSender, peer: Peer) -> None:
    """Send until the first reply: the reflector process needs a moment to bind."""
    assert peer.stamp is not None
    deadline = time.monotonic() + 10
    while peer.stamp.counters()[2] == 0:
        assert time.monotonic() < deadline, "stamp-suite's reflector never answered"
        sender.send(peer, time.monotonic(), time.time_ns())
        time.sleep(0.1)
        sender.drain(sender.sockets)
    _settle(sender)


def _settle(sender: StampSender) -> None:
    """Take the last replies, then resolve whatever has none."""
    time.sleep(0.2)
    sender.drain(sender.sockets)
    sender.expire(time.monotonic() + 5)


@pytest.mark.parametrize("pause", [0.0, 0.2])
def test_a_busy_reflector_answers_in_batches_and_says_how_long_it_held(pause: float) -> None:
    """Packets 10 ms apart (a cluster of 100 nodes): with a pause the reflector wakes a
    few times in all, not once per packet, and answers every packet, each reply carrying
    its hold (receive stamp to send time) for the sender to subtract: under the pause."""
    sock = open_reflector_socket(4, 0)
    port = sock.getsockname()[1]
    running = Running(Reflector({4: sock}, "me", pause=pause))
    wakes: list[socket.socket] = []
    read = running.reflector.read

    def counted(sock: socket.socket, limit: int = 256) -> int:
        wakes.append(sock)
        return read(sock, limit)

    running.reflector.read = counted  # type: ignore[method-assign]
    replies = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for sequence in range(30):
                sender.sendto(pack_sender(sequence, 1, 9), ("127.0.0.1", port))
                running.pump(0.01)
            running.pump(pause + 0.1)
            while True:
                try:
                    replies.append(unpack_reflector(sender.recv(2048)))
                except BlockingIOError:
                    break
    finally:
        running.close()
    assert len(replies) == 30
    if pause:
        assert len(wakes) <= 12, len(wakes)
        holds = [ntp_difference_ns(r.timestamp, r.receive_timestamp) / 1e9 for r in replies if r]
        assert max(holds) <= pause + 0.1 and max(holds) > 0.05  # batched: some waited
    else:
        assert len(wakes) >= 25  # one per packet


def test_a_busy_reflector_with_a_small_buffer_polls_often_enough_to_drop_nothing() -> None:
    """A node's default receive buffer holds some 200 small packets; at 3000 packets a
    second a 0.2 s pause would overflow it. The pause follows the rate seen, so every
    packet is answered."""
    sock = open_reflector_socket(4, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    port = sock.getsockname()[1]
    running = Running(Reflector({4: sock}, "me", pause=0.2))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for sequence in range(600):
                sender.sendto(pack_sender(sequence, 1, 9), ("127.0.0.1", port))
                if sequence % 3 == 2:
                    running.pump(0.001)
            running.pump(0.5)
    finally:
        running.close()
    assert running.reflector.counts["reflected"] == 600


def test_a_bug_while_polling_does_not_stop_the_reflector() -> None:
    """An unexpected error while reading (a bug, odd ancillary data) is the event loop's
    to log; the reflector still reads afterwards, polling or listening."""
    sock = open_reflector_socket(4, 0)
    port = sock.getsockname()[1]
    running = Running(Reflector({4: sock}, "me", pause=0.05))
    reflect = running.reflector.reflect
    calls = [0]

    def flaky(
        sock: socket.socket,
        data: bytes,
        ancdata: list[tuple[int, int, bytes]],
        address: tuple[str, int],
    ) -> None:
        calls[0] += 1
        if calls[0] == 10:
            raise RuntimeError("a bug")
        reflect(sock, data, ancdata, address)

    running.reflector.reflect = flaky  # type: ignore[method-assign]
    running.loop.set_exception_handler(lambda loop, context: None)  # the loop would log it
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for sequence in range(40):
                sender.sendto(pack_sender(sequence, 1, 9), ("127.0.0.1", port))
                running.pump(0.005)
            running.pump(0.3)
            sender.sendto(pack_sender(99, 1, 9), ("127.0.0.1", port))
            running.pump(0.3)
    finally:
        running.close()
    assert calls[0] >= 40 and running.reflector.counts["reflected"] >= 39
