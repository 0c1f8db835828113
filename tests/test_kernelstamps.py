"""Receive stamps from the kernel, nanosecond or microsecond: read from real UDP
sockets on loopback, and the fallback where a kernel (or qemu-user, which runs the
arm64 image here) refuses SO_TIMESTAMPNS."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from exporter import kernelstamps


def stamped_datagram(option: int) -> tuple[int, int, int]:
    """Send one datagram over loopback to a socket stamped with ``option``; the
    clock before the send, the stamp read from the control message, the clock after
    receiving."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.setsockopt(socket.SOL_SOCKET, option, 1)
        receiver.bind(("127.0.0.1", 0))
        before = time.time_ns()
        sender.sendto(b"x", receiver.getsockname())
        receiver.settimeout(2)
        _data, ancdata, _flags, _addr = receiver.recvmsg(16, kernelstamps.ANCILLARY_SPACE)
        after = time.time_ns()
    finally:
        receiver.close()
        sender.close()
    (message,) = ancdata
    return before, kernelstamps.stamp_ns(*message), after


@pytest.mark.parametrize("option", [kernelstamps.SO_TIMESTAMPNS, kernelstamps.SO_TIMESTAMP])
def test_a_stamp_is_read_in_nanoseconds_whichever_the_kernel_gave(option: int) -> None:
    before, stamp, after = stamped_datagram(option)
    resolution = 1000 if option == kernelstamps.SO_TIMESTAMP else 1
    assert before - resolution <= stamp <= after


def test_other_control_messages_are_no_stamp() -> None:
    assert kernelstamps.stamp_ns(socket.IPPROTO_IP, 2, b"\x40\0\0\0") == 0
    assert kernelstamps.stamp_ns(socket.SOL_SOCKET, 1, b"\0" * 16) == 0


class Refusing:
    """A socket whose setsockopt refuses some SOL_SOCKET options as qemu-user 7.2 does
    (a fake: qemu-user cannot be made to run under a unit test); records the others."""

    def __init__(self, refused: set[int], error: int = errno.ENOPROTOOPT) -> None:
        self.refused, self.error, self.set = refused, error, list[int]()

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if option in self.refused:
            raise OSError(self.error, "refused")
        self.set.append(option)


def test_the_finest_stamp_the_kernel_allows_is_asked_for() -> None:
    linux = Refusing(set())
    kernelstamps.enable(linux)  # type: ignore[arg-type]
    assert linux.set == [kernelstamps.SO_TIMESTAMPNS]
    qemu = Refusing({kernelstamps.SO_TIMESTAMPNS})
    kernelstamps.enable(qemu)  # type: ignore[arg-type]
    assert qemu.set == [kernelstamps.SO_TIMESTAMP]
    neither = Refusing({kernelstamps.SO_TIMESTAMPNS, kernelstamps.SO_TIMESTAMP})
    kernelstamps.enable(neither)  # type: ignore[arg-type]  # the caller's clock then
    assert neither.set == []
    with pytest.raises(OSError):  # anything but "not supported" is a real error
        kernelstamps.enable(Refusing({kernelstamps.SO_TIMESTAMPNS}, errno.EBADF))  # type: ignore[arg-type]
