"""The PROXY protocol, version 2: who a load balancer is relaying a connection for.

Theory of operation: a balancer in TCP mode (HAProxy's ``send-proxy-v2``) opens its own
connection to the node and, before the first byte of the client's, writes a binary
header naming the client's address and port (the PROXY protocol specification, 2.2).
The worker reads that header off a connection from a configured balancer address
(``--proxy-protocol-from``) before the engine sees anything, and hands the address to
``AssociationServer.adopt(peer=...)``, so the allow-list, the association and the logs
see the modality rather than the balancer. A connection from anyone else that starts
with a PROXY header (either version's signature) is closed: nobody but a balancer may
claim to speak for another address.

The header is 16 bytes -- the 12-byte signature, the version (2) and command (LOCAL or
PROXY) in one byte, the address family and transport in another, and the length of the
rest -- then the addresses (12 bytes for IPv4, 36 for IPv6) and optional TLVs, which are
skipped. :func:`parse_header` is the sans-IO part (bytes in, :class:`ProxyHeader` or
:class:`ProxyError` out); :func:`read_header` reads exactly the header's bytes from a
non-blocking socket, never a byte of what follows (the client's A-ASSOCIATE-RQ), within a
time limit; :func:`peek` looks at the first bytes without consuming them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from dataclasses import dataclass

__all__ = ["SIGNATURE", "ProxyError", "ProxyHeader", "parse_header", "header_length", "read_header",
           "peek", "starts_like_proxy"]

#: The version 2 signature (specification 2.2).
SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: What a version 1 (text) header starts with.
_V1 = b"PROXY "
_FIXED = 16
_HEAD = struct.Struct("!12sBBH")
_LOCAL, _PROXY = 0x0, 0x1
_INET, _INET6 = 0x1, 0x2
_STREAM = 0x1
_ADDRESS_BYTES = {_INET: 12, _INET6: 36}
_INET_ADDRESSES = struct.Struct("!4s4sHH")
_INET6_ADDRESSES = struct.Struct("!16s16sHH")


class ProxyError(ValueError):
    """The bytes are not a PROXY protocol version 2 header we accept; the text says why."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed header. ``source`` is the client's (address, port) for a PROXY command
    over TCP; None for LOCAL (the balancer's own connection, e.g. a health check), whose
    real peer is the connection's."""

    command: str
    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    length: int


def header_length(head: bytes) -> int:
    """The whole header's length, from its first 16 bytes; raises :class:`ProxyError`
    when they are not a version 2 header's."""
    if len(head) < _FIXED:
        raise ProxyError(f"{len(head)} bytes: a header has at least {_FIXED}")
    signature, version_command, _family, length = _HEAD.unpack_from(head)
    if signature != SIGNATURE:
        raise ProxyError("no PROXY protocol version 2 signature")
    if version_command >> 4 != 2:
        raise ProxyError(f"PROXY protocol version {version_command >> 4}, not 2")
    if version_command & 0x0F not in (_LOCAL, _PROXY):
        raise ProxyError(f"unknown PROXY command {version_command & 0x0F}")
    return _FIXED + length


def parse_header(data: bytes) -> ProxyHeader:
    """The header at the start of ``data`` (which must hold all of it: see
    :func:`header_length`). Raises :class:`ProxyError`."""
    total = header_length(data)
    if len(data) < total:
        raise ProxyError(f"header of {total} bytes cut short at {len(data)}")
    _signature, version_command, family_transport, _length = _HEAD.unpack_from(data)
    if version_command & 0x0F == _LOCAL:
        return ProxyHeader("LOCAL", None, None, total)
    family, transport = family_transport >> 4, family_transport & 0x0F
    if family not in _ADDRESS_BYTES or transport != _STREAM:
        raise ProxyError(f"PROXY for address family {family}, transport {transport}: only TCP over IPv4 "
                         "or IPv6 is relayed to a DICOM node")
    if total - _FIXED < _ADDRESS_BYTES[family]:
        raise ProxyError(f"address block of {total - _FIXED} bytes is too short")
    if family == _INET:
        src, dst, sport, dport = _INET_ADDRESSES.unpack_from(data, _FIXED)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    else:
        src, dst, sport, dport = _INET6_ADDRESSES.unpack_from(data, _FIXED)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    return ProxyHeader("PROXY", source, destination, total)


def starts_like_proxy(first: bytes) -> bool:
    """Whether a connection's first bytes begin a PROXY header of either version (a
    DICOM connection begins with PDU type 01H, TLS with 16H)."""
    return bool(first) and (SIGNATURE.startswith(first[:12]) or _V1.startswith(first[:6]))


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = await loop.sock_recv(sock, n)
        if not chunk:
            raise ProxyError("connection closed within the PROXY header")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


async def read_header(sock: socket.socket, timeout: float) -> ProxyHeader:
    """Read the PROXY v2 header off non-blocking ``sock`` within ``timeout`` seconds,
    consuming exactly its bytes. Raises :class:`ProxyError` (timeouts included)."""
    loop = asyncio.get_running_loop()

    async def read() -> ProxyHeader:
        head = await _recv_exactly(loop, sock, _FIXED)
        total = header_length(head)
        rest = await _recv_exactly(loop, sock, total - _FIXED) if total > _FIXED else b""
        return parse_header(head + rest)

    try:
        return await asyncio.wait_for(read(), timeout)
    except asyncio.TimeoutError:
        raise ProxyError(f"no PROXY header within {timeout:g} s") from None
    except OSError as exc:
        raise ProxyError(f"connection failed within the PROXY header: {exc}") from None


async def peek(sock: socket.socket, timeout: float, size: int = 16) -> bytes:
    """Up to ``size`` of the first bytes of non-blocking ``sock``, left unread; b"" when
    nothing came within ``timeout`` or the peer closed."""
    loop = asyncio.get_running_loop()
    readable = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(sock.fileno(), ready)
    try:
        await asyncio.wait_for(readable, timeout)
    except asyncio.TimeoutError:
        return b""
    finally:
        loop.remove_reader(sock.fileno())
    try:
        return sock.recv(size, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError, OSError):
        return b""
