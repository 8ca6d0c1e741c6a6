"""TcpCheck on the monitor's FastReactor: checks follow their socket with one
edge-triggered registration (connect and read); same verdicts as the one-shot path of
test_health_probes.py, against the same real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

from runtime.health.check import CheckSpec
from runtime.health.probes import ProbeResult, TcpCheck, literal_address
from runtime.health.reactor import FastReactor
from tests.runtime.test_health_probes import HOST, Handler, close_at_once, reply, silent, tcp


async def fast_probe(spec: CheckSpec) -> tuple[ProbeResult, bool]:
    """(result, whether the check took the edge-triggered path)."""
    loop = asyncio.get_running_loop()
    reactor = FastReactor(loop)
    future: asyncio.Future[ProbeResult] = loop.create_future()
    family, sockaddr = literal_address(spec)  # type: ignore[misc]
    check = TcpCheck(reactor, spec, family, sockaddr, future.set_result)
    check.start()
    try:
        return await asyncio.wait_for(future, 5), check.edge
    finally:
        reactor.close()


async def with_tcp(handler: Handler, spec) -> tuple[ProbeResult, bool]:
    server = await asyncio.start_server(handler, HOST, 0)
    try:
        return await fast_probe(spec(server.sockets[0].getsockname()[1]))
    finally:
        server.close()


def late(data: bytes, delay: float) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(delay)
        writer.write(data)
        await writer.drain()
        writer.close()

    return handler


def echo_after_request(reader_prefix: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.readline()
        writer.write(reader_prefix + got)
        await writer.drain()
        writer.close()

    return handler


def test_reads_and_connect_only_checks_take_the_edge_path() -> None:
    # connect-only too: the FastReactor's lent sockets keep one edge-triggered
    # registration from check to check
    async def go() -> tuple[tuple[ProbeResult, bool], tuple[ProbeResult, bool]]:
        return (
            await with_tcp(silent, lambda p: tcp(p)),
            await with_tcp(reply(b"220 x\r\n"), lambda p: tcp(p, None, "220")),
        )

    (plain, plain_edge), (read, read_edge) = asyncio.run(go())
    assert plain.ok and plain.detail == "connected" and plain_edge
    assert read.ok and read.detail == "reply b'220'" and read_edge


def test_banner_match_mismatch_short_and_late() -> None:
    async def go() -> list[ProbeResult]:
        out = []
        for handler in (
            reply(b"220 mail ESMTP\r\n"),
            reply(b"554 go away\r\n"),
            reply(b"22"),
            late(b"220 slow\r\n", 0.3),  # connect edge first, data edge later
        ):
            out.append((await with_tcp(handler, lambda p: tcp(p, None, "220")))[0])
        return out

    good, wrong, short, slow = asyncio.run(go())
    assert good.ok and good.detail == "reply b'220'"
    assert not wrong.ok and "does not start with b'220'" in wrong.detail
    assert not short.ok and "too short" in short.detail
    assert slow.ok and slow.latency >= 0.3


def test_send_then_read_the_answer() -> None:
    r, edge = asyncio.run(with_tcp(echo_after_request(b"+"), lambda p: tcp(p, b"ping\n", "+ping")))
    assert edge and r.ok, r


def test_refused_read_timeout_and_closed_without_reply() -> None:
    async def go() -> tuple[ProbeResult, ProbeResult, ProbeResult]:
        with socket.socket() as s:  # bound, not listening: RST to the SYN
            s.bind((HOST, 0))
            refused, _ = await fast_probe(tcp(s.getsockname()[1], None, "220"))
        timeout, _ = await with_tcp(silent, lambda p: tcp(p, b"hello\n", "220"))
        closed, _ = await with_tcp(close_at_once, lambda p: tcp(p, None, "*"))
        return refused, timeout, closed

    refused, timeout, closed = asyncio.run(go())
    assert not refused.ok and refused.detail == "connect: connection refused"
    assert not timeout.ok and timeout.detail == "read: timed out after 1 s"
    assert not closed.ok and closed.detail == "connection closed without a reply"


def test_connect_timeout_with_expect() -> None:
    # listen(0) with one unaccepted connection: the kernel drops further SYNs
    with socket.socket() as lst, socket.socket() as filler:
        lst.bind((HOST, 0))
        lst.listen(0)
        filler.connect(lst.getsockname())
        r, _ = asyncio.run(fast_probe(tcp(lst.getsockname()[1], None, "220")))
    assert not r.ok and r.detail == "connect: timed out after 1 s"
