"""A TCP forwarder from a lab's hub namespace to the host's loopback.

The control plane listens on 127.0.0.1 of the host namespace; a lab's nodes can
reach only their bridge. This process opens its listening socket inside the
hub namespace (``setns``, then back) and makes its outgoing connections from
the host namespace, so an agent on any node reaches the API server at
``198.18.0.254:6443`` while the lab adds nothing to the host's network. TLS
passes through untouched: the agents verify the API server's certificate.

    python -m lab.forward NETNS LISTEN_HOST LISTEN_PORT TARGET_HOST TARGET_PORT
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket
import sys
from contextlib import suppress

CLONE_NEWNET = 0x40000000


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns: {os.strerror(errno)}")


def listen_in_namespace(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket that belongs to the named network namespace."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            return socket.create_server((host, port))
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(target)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with suppress(OSError):
            writer.close()


async def serve(listener: socket.socket, target: tuple[str, int]) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(*target)
        except OSError:
            client_w.close()  # the API server is down: the client sees a reset, as it would
            return
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 5:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    netns, host, port, target_host, target_port = args
    listener = listen_in_namespace(netns, host, int(port))
    print(f"forwarding {netns} {host}:{port} -> {target_host}:{target_port}", flush=True)
    with suppress(KeyboardInterrupt):
        asyncio.run(serve(listener, (target_host, int(target_port))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
