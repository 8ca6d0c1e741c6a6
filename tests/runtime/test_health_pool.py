"""The FastReactor lends TcpChecks reset sockets instead of a new socket per check:
a socket going from check to check must carry nothing over (no pending error, no
stale readiness), the peer must still see a reset, and no descriptor may leak.
Real servers on 127.0.0.1, real sockets."""

from __future__ import annotations

import asyncio
import os
import socket

from runtime.health.check import CheckSpec
from runtime.health.probes import ProbeResult, TcpCheck, literal_address
from runtime.health.reactor import FastReactor
from tests.runtime.test_health_probes import HOST, close_at_once, reply, silent, tcp


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def check(reactor: FastReactor, spec: CheckSpec) -> tuple[ProbeResult, int]:
    """(result, the descriptor the check used)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[ProbeResult] = loop.create_future()
    family, sockaddr = literal_address(spec)  # type: ignore[misc]
    c = TcpCheck(reactor, spec, family, sockaddr, future.set_result)
    c.start()
    return await asyncio.wait_for(future, 5), c.fd


def test_a_thousand_checks_alternating_up_and_refused_reuse_and_leak_nothing() -> None:
    async def go() -> tuple[list[ProbeResult], set[int], int, int]:
        server = await asyncio.start_server(close_at_once, HOST, 0)
        up = server.sockets[0].getsockname()[1]
        with socket.socket() as s:  # bound, not listening: RST to the SYN
            s.bind((HOST, 0))
            down = s.getsockname()[1]
            reactor = FastReactor(asyncio.get_running_loop())
            before = open_fds()
            results, fds = [], set()
            for i in range(1000):
                r, fd = await check(reactor, tcp(down if i % 3 == 2 else up))
                results.append(r)
                fds.add(fd)
            await asyncio.sleep(0.2)  # the server side closes its last accepted socket
            during = open_fds()
            reactor.close()
            after = open_fds()
        server.close()
        await server.wait_closed()
        return results, fds, during - before, after - before

    results, fds, held, left = asyncio.run(go())
    for i, r in enumerate(results):
        if i % 3 == 2:
            assert not r.ok and r.detail == "connect: connection refused", (i, r)
        else:
            assert r.ok and r.detail == "connected", (i, r)
    assert len(fds) == 1  # one check at a time: one socket, reset and lent again
    assert held <= 1  # that socket, idle in the reactor
    assert left <= 0  # closing the reactor closes it


def test_the_peer_sees_a_reset_and_no_time_wait_is_left() -> None:
    async def go() -> tuple[ProbeResult, BaseException | bytes]:
        accepted: asyncio.Future[socket.socket] = asyncio.get_running_loop().create_future()
        with socket.socket() as lst:
            lst.bind((HOST, 0))
            lst.listen(8)
            reactor = FastReactor(asyncio.get_running_loop())
            try:
                r, _ = await check(reactor, tcp(lst.getsockname()[1]))
                conn, _ = lst.accept()
                accepted.set_result(conn)
            finally:
                reactor.close()
        with accepted.result() as conn:
            try:
                got: BaseException | bytes = conn.recv(10)
            except OSError as err:
                got = err
        return r, got

    r, got = asyncio.run(go())
    assert r.ok
    assert isinstance(got, ConnectionResetError), got


def test_a_socket_after_a_timeout_a_refusal_or_a_read_serves_the_next_check() -> None:
    # each disconnect leaves something behind (ECONNRESET pending, a readiness event
    # queued); the next check on the same socket must not see it
    async def go() -> list[tuple[ProbeResult, int]]:
        loop = asyncio.get_running_loop()
        out = []
        banner = await asyncio.start_server(reply(b"220 x\r\n"), HOST, 0)
        quiet = await asyncio.start_server(silent, HOST, 0)
        with socket.socket() as full, socket.socket() as filler, socket.socket() as shut:
            full.bind((HOST, 0))
            full.listen(0)
            filler.connect(full.getsockname())  # the queue is full: SYNs are dropped
            shut.bind((HOST, 0))
            reactor = FastReactor(loop)
            try:
                for spec in (
                    tcp(full.getsockname()[1]),  # connect times out (SYN_SENT reset)
                    tcp(quiet.sockets[0].getsockname()[1]),
                    tcp(banner.sockets[0].getsockname()[1], None, "220"),  # edge path
                    tcp(quiet.sockets[0].getsockname()[1], None, "220"),  # read times out
                    tcp(banner.sockets[0].getsockname()[1], None, "220"),
                    tcp(shut.getsockname()[1]),
                    tcp(quiet.sockets[0].getsockname()[1]),
                ):
                    out.append(await check(reactor, spec))
            finally:
                reactor.close()
        banner.close()
        quiet.close()
        return out

    out = asyncio.run(go())
    details = [(r.ok, r.detail) for r, _ in out]
    assert details == [
        (False, "connect: timed out after 1 s"),
        (True, "connected"),
        (True, "reply b'220'"),
        (False, "read: timed out after 1 s"),
        (True, "reply b'220'"),
        (False, "connect: connection refused"),
        (True, "connected"),
    ]
    assert len({fd for _, fd in out}) == 1


def test_one_check_object_started_again_ignores_its_stale_deadlines() -> None:
    """The monitor reuses a TcpCheck per server, and the reactor's shared timeout queue
    never cancels an entry: the deadlines left by a run that ended must neither end a
    later run early nor call ``done`` twice."""

    async def go() -> list[ProbeResult]:
        loop = asyncio.get_running_loop()
        banner = await asyncio.start_server(reply(b"220 x\r\n"), HOST, 0)
        quiet = await asyncio.start_server(silent, HOST, 0)
        reactor = FastReactor(loop)
        results: list[ProbeResult] = []
        got = asyncio.Event()

        def done(r: ProbeResult) -> None:
            results.append(r)
            got.set()

        async def run(c: TcpCheck) -> None:
            got.clear()
            c.start()
            await asyncio.wait_for(got.wait(), 5)

        try:
            good = tcp(banner.sockets[0].getsockname()[1], None, "220")
            family, sockaddr = literal_address(good)  # type: ignore[misc]
            ok = TcpCheck(reactor, good, family, sockaddr, done)
            mute = tcp(quiet.sockets[0].getsockname()[1], None, "220")
            family, sockaddr = literal_address(mute)  # type: ignore[misc]
            hang = TcpCheck(reactor, mute, family, sockaddr, done)
            await run(ok)  # leaves a connect and a read deadline behind, ~1 s ahead
            await run(ok)
            await asyncio.sleep(0.3)
            await run(hang)  # runs past the stale ones: must still wait its own second
            await run(hang)  # reused right after its own timeout
            await run(ok)
            await asyncio.sleep(1.2)  # any stale entry left has passed: no extra call
        finally:
            reactor.close()
            banner.close()
            quiet.close()
        return results

    results = asyncio.run(go())
    assert [(r.ok, r.detail) for r in results] == [
        (True, "reply b'220'"),
        (True, "reply b'220'"),
        (False, "read: timed out after 1 s"),
        (False, "read: timed out after 1 s"),
        (True, "reply b'220'"),
    ]
    # a timeout never comes early (the stale deadlines were ~0.7 s into the first)
    assert all(r.latency >= 1.0 for r in results[2:4])
