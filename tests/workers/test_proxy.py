"""The PROXY protocol v2: the header's parser, reading exactly the header off a socket, and
a node that takes the client's address from a balancer and refuses the header from
anyone else.

Theory of operation: header bytes are built by hand, per the specification's layout
(signature, version/command, family/transport, length, addresses, TLVs), and fed whole
and one byte at a time. The node test puts a tiny relay of its own in front of a real
node -- it accepts the engine requestor's connection, connects to the node from a
chosen loopback address (127.0.0.2 is the configured balancer), writes a PROXY header
naming a chosen client (or none) and then copies bytes both ways -- so every case is
on 127.0.0.0/8 and nothing else is needed. HAProxy itself is the cluster tests'.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from pathlib import Path

import pytest

from tests.workers.nodes import HOST, _contexts, associate, run
from workers.proxy import SIGNATURE, ProxyError, header_length, parse_header, read_header, starts_like_proxy


def header(source: tuple[str, int] | None = ("192.0.2.5", 4242), destination: tuple[str, int] = ("10.0.0.1", 104),
           *, command: int = 1, version: int = 2, tlvs: bytes = b"", family: int | None = None) -> bytes:
    """A PROXY v2 header: PROXY (1) or LOCAL (0) for TCP over IPv4 or IPv6, then TLVs."""
    if source is None:
        body = tlvs
        fam = 0x00 if family is None else family
    else:
        ip = ipaddress.ip_address(source[0])
        packed_src, packed_dst = ip.packed, ipaddress.ip_address(destination[0]).packed
        body = packed_src + packed_dst + struct.pack("!HH", source[1], destination[1]) + tlvs
        fam = (0x11 if ip.version == 4 else 0x21) if family is None else family
    return SIGNATURE + bytes([(version << 4) | command, fam]) + struct.pack("!H", len(body)) + body


# ----------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("data", "command", "source"),
    [
        (header(), "PROXY", ("192.0.2.5", 4242)),
        (header(("2001:db8::7", 1234), ("2001:db8::1", 104)), "PROXY", ("2001:db8::7", 1234)),
        (header(tlvs=b"\x04\x00\x05hello"), "PROXY", ("192.0.2.5", 4242)),  # a TLV is skipped
        (header(None, command=0), "LOCAL", None),  # the balancer's own connection
    ],
)
def test_headers_are_parsed(data: bytes, command: str, source: tuple[str, int] | None) -> None:
    got = parse_header(data + b"\x01\x00rest of the A-ASSOCIATE-RQ")
    assert (got.command, got.source, got.length) == (command, source, len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"PROXY TCP4 192.0.2.5 10.0.0.1 4242 104\r\n",  # version 1 (text) is not read
        header(version=1),
        header(command=2),
        header(family=0x12),  # IPv4 over UDP
        header(family=0x31),  # AF_UNIX
        SIGNATURE + b"\x21\x11\x00\x04" + b"\x7f\x00\x00\x01",  # an address block too short
        header()[:20],  # cut short
        b"\x01\x00\x00\x00\x00\xcd" + bytes(10),  # an A-ASSOCIATE-RQ, no header
    ],
)
def test_anything_else_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyError):
        parse_header(data)


def test_header_length_from_the_fixed_part() -> None:
    data = header(tlvs=bytes(300))
    assert header_length(data[:16]) == len(data)
    with pytest.raises(ProxyError):
        header_length(data[:15])


def test_what_starts_like_a_proxy_header() -> None:
    for data in (header(), header()[:1], header()[:5], b"PROXY TCP4 ", b"PRO"):
        assert starts_like_proxy(data)
    for data in (b"\x01\x00\x00\x00", b"\x16\x03\x01", b"", b"GET / HTTP/1.1"):
        assert not starts_like_proxy(data)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_read_header_consumes_exactly_the_header(chunk: int) -> None:
    """Fed in pieces, the header is read whole and not one byte of what follows."""
    data = header(tlvs=b"\x04\x00\x02ab")
    after = b"\x01\x00the association request"

    async def main() -> tuple[object, bytes]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        loop = asyncio.get_running_loop()

        async def feed() -> None:
            payload = data + after
            for start in range(0, len(payload), chunk):
                theirs.send(payload[start:start + chunk])
                await asyncio.sleep(0)

        feeder = loop.create_task(feed())
        got = await read_header(ours, timeout=5)
        await feeder
        rest = await loop.sock_recv(ours, 100)
        ours.close()
        theirs.close()
        return got, rest

    got, rest = run(main())
    assert got.source == ("192.0.2.5", 4242)  # type: ignore[attr-defined]
    assert rest == after


def test_read_header_gives_up_after_its_timeout() -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.send(header()[:10])
        try:
            with pytest.raises(ProxyError, match="within"):
                await read_header(ours, timeout=0.2)
        finally:
            ours.close()
            theirs.close()

    run(main())


# ----------------------------------------------------------------------------- a node behind a relay


BALANCER = "127.0.0.2"


class Relay:
    """A one-connection-at-a-time TCP relay to ``port`` from ``source``, writing ``prefix``
    (a PROXY header, or nothing) before the client's bytes."""

    def __init__(self, port: int, source: str, prefix: bytes) -> None:
        self.port = port
        self.source = source
        self.prefix = prefix
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, HOST, 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.port, local_addr=(self.source, 0))
        except OSError:
            writer.close()
            return
        up_writer.write(self.prefix)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


def test_a_node_takes_the_client_address_from_its_balancer_only(node_factory, tiny_files: list[Path]) -> None:
    node = node_factory("--workers", "1", "--proxy-protocol-from", f"{BALANCER}/32",
                        "--allow-address", "192.0.2.0/24", "--allow-address", "127.0.0.1/32",
                        "--acse-timeout", "5")
    files = tiny_files[:2]
    contexts = _contexts(files)

    async def through(source: str, prefix: bytes) -> tuple[bool, int | None, int]:
        relay = Relay(node.port, source, prefix)
        port = await relay.start()
        try:
            assoc = await associate(port, contexts)
            established, status = assoc.is_established, None
            if established:
                rsp = await assoc.send_c_store(files[0])
                status = int(rsp.Status)
                await assoc.release()
            return established, status, assoc.requestor.port
        finally:
            await relay.close()

    async def direct() -> bool:
        assoc = await associate(node.port, contexts)
        established = assoc.is_established
        if established:
            await assoc.release()
        return established

    async def main() -> dict[str, tuple[bool, int | None, int] | bool]:
        return {
            "balancer, allowed client": await through(BALANCER, header(("192.0.2.5", 4242))),
            "balancer, client not allowed": await through(BALANCER, header(("198.51.100.1", 4242))),
            "balancer, LOCAL": await through(BALANCER, header(None, command=0)),
            "balancer, no header": await through(BALANCER, b""),
            "not a balancer, with a header": await through("127.0.0.1", header(("192.0.2.5", 4242))),
            "not a balancer, no header": await direct(),
        }

    got = run(main())
    assert got["balancer, allowed client"][:2] == (True, 0x0000)
    assert not got["balancer, client not allowed"][0]  # the allow-list judged the client
    assert not got["balancer, LOCAL"][0]  # the balancer's own address is not allowed
    assert not got["balancer, no header"][0]
    assert not got["not a balancer, with a header"][0]
    assert got["not a balancer, no header"] is True
    log = node.log()
    assert "assoc peer=192.0.2.5:4242 " in log  # the client's address in the association's line
    assert "PROXY header from an address not in proxy-protocol-from" in log
    assert "no PROXY protocol version 2 signature" in log
    assert "peer address ('198.51.100.1', 4242) is not allowed" in log
    assert not [line for line in node.association_lines() if f"peer={BALANCER}:" in line and "outcome=released" in line]
    # The index, too, names the client, not the balancer: the one instance stored went
    # through the balancer for 192.0.2.5.
    node.wait_for(lambda: len(node.index_senders()) == 1, what="the stored instance indexed")
    [(_, address)] = node.index_senders().values()
    assert address == "192.0.2.5"
