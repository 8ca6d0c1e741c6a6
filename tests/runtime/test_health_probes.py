"""The probes against real TCP and UDP servers on 127.0.0.1 and real check programs."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address
from pathlib import Path

from compiler.model import Protocol, RealServer, VirtualService
from runtime.health.check import CheckSpec, check_spec
from runtime.health.expect import matcher
from runtime.health.probes import ProbeResult, probe

HOST = "127.0.0.1"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro: Awaitable) -> ProbeResult:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def with_tcp(handler: Handler, make: Callable[[int], CheckSpec]) -> ProbeResult:
    server = await asyncio.start_server(handler, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    try:
        return await probe(make(port))
    finally:
        server.close()


def tcp(port: int, send: bytes | None = None, expect: str | None = None, regex: bool = False):
    m = None if expect is None else matcher(expect, regex)
    return CheckSpec(kind="tcp", host=HOST, port=port, timeout=1, send=send, expect=m)


def reply(data: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return handler


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)
    writer.close()


async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


# -- TCP


def test_tcp_connect_only_passes() -> None:
    r = run(with_tcp(silent, lambda p: tcp(p)))
    assert r.ok and r.detail == "connected" and r.latency >= 0


def test_tcp_refused_fails() -> None:
    # a bound socket that does not listen answers SYN with RST, without any race
    with socket.socket() as s:
        s.bind((HOST, 0))
        r = run(probe(tcp(s.getsockname()[1])))
    assert not r.ok and r.detail == "connect: connection refused"


def test_tcp_connect_timeout() -> None:
    # listen(0) with one unaccepted connection: the kernel drops further SYNs
    with socket.socket() as lst, socket.socket() as filler:
        lst.bind((HOST, 0))
        lst.listen(0)
        filler.connect(lst.getsockname())
        r = run(probe(tcp(lst.getsockname()[1])))
    assert not r.ok and r.detail == "connect: timed out after 1 s"


def test_tcp_read_timeout_when_the_server_never_answers() -> None:
    r = run(with_tcp(silent, lambda p: tcp(p, b"hello\n", "220")))
    assert not r.ok and r.detail == "read: timed out after 1 s"


def test_tcp_expect_prefix() -> None:
    async def go() -> tuple[ProbeResult, ...]:
        return (
            await with_tcp(reply(b"220 mail ESMTP\r\n"), lambda p: tcp(p, None, "220")),
            await with_tcp(reply(b"554 go away\r\n"), lambda p: tcp(p, None, "220")),
            await with_tcp(reply(b"22"), lambda p: tcp(p, None, "220")),
        )

    good, wrong, short = asyncio.run(go())
    assert good.ok and good.detail == "reply b'220'"
    assert not wrong.ok and "does not start with b'220'" in wrong.detail
    assert not short.ok and "too short" in short.detail


def test_tcp_regex_anywhere_in_the_first_read() -> None:
    async def go() -> tuple[ProbeResult, ProbeResult]:
        banner = b"+OK Dovecot (Debian) ready.\r\n"
        return (
            await with_tcp(reply(banner), lambda p: tcp(p, None, "Dove(cot|coat)", True)),
            await with_tcp(reply(banner), lambda p: tcp(p, None, "^ready", True)),
        )

    found, anchored = asyncio.run(go())
    assert found.ok
    assert not anchored.ok and "does not match" in anchored.detail


def test_tcp_star_any_byte_but_not_a_closed_connection() -> None:
    async def go() -> tuple[ProbeResult, ProbeResult]:
        return (
            await with_tcp(reply(b"\x00"), lambda p: tcp(p, b"\n", "*")),
            await with_tcp(close_at_once, lambda p: tcp(p, None, "*")),
        )

    any_byte, closed = asyncio.run(go())
    assert any_byte.ok
    assert not closed.ok and closed.detail == "connection closed without a reply"


def model(rport: int, **kw) -> tuple[VirtualService, RealServer]:
    rs = RealServer(name="rs", address=IPv4Address(HOST), active=True, port=rport)
    fields = {"name": "v", "active": True, "port": 80, "timeout": 1, "servers": (rs,)} | kw
    return VirtualService(**fields), rs


def test_escapes_reach_the_wire() -> None:
    got: list[bytes] = []

    async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.readexactly(9)
        got.append(data)
        writer.write(data)
        await writer.drain()
        writer.close()

    def make(port: int) -> CheckSpec:
        v, rs = model(port, port=7, send=r"a\tb\r\n\'q\"\\", expect=r"a\tb\r")
        return check_spec(v, rs)

    r = run(with_tcp(echo_once, make))
    assert got == [b"a\tb\r\n'q\"\\"]
    assert r.ok


def test_default_http_probe() -> None:
    requests: list[bytes] = []

    async def web(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nhello")
        await writer.drain()
        writer.close()

    r = run(with_tcp(web, lambda port: check_spec(*model(port))))
    assert requests == [b"GET / HTTP/1.0\r\n\r\n"]
    assert r.ok and r.detail == "reply b'HTTP'"


def test_default_http_probe_fails_on_a_non_http_service() -> None:
    r = run(with_tcp(_ssh, lambda p: check_spec(*model(p))))
    assert not r.ok and "does not start with b'HTTP'" in r.detail


async def _ssh(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
    await writer.drain()
    await asyncio.sleep(2)
    writer.close()


# -- UDP


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.seen: list[bytes] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.seen.append(data)
        if self.answer is not None:
            self.transport.sendto(self.answer, addr)


async def with_udp(answer: bytes | None, spec: Callable[[int], CheckSpec]):
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _Udp(answer), local_addr=(HOST, 0)
    )
    port = transport.get_extra_info("sockname")[1]
    try:
        return await probe(spec(port)), proto.seen
    finally:
        transport.close()


def udp(port: int, send: bytes | None, expect: str | None) -> CheckSpec:
    m = None if expect is None else matcher(expect, False)
    return CheckSpec(kind="udp", host=HOST, port=port, timeout=1, send=send, expect=m)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def test_udp_with_expect() -> None:
    async def go():
        return (
            await with_udp(b"PONG ok", lambda p: udp(p, b"PING", "PONG")),
            await with_udp(b"NOPE", lambda p: udp(p, b"PING", "PONG")),
            await with_udp(None, lambda p: udp(p, b"PING", "PONG")),
        )

    (good, seen), (wrong, _), (silence, _) = asyncio.run(go())
    assert good.ok and seen == [b"PING"]
    assert not wrong.ok and "does not start with" in wrong.detail
    assert not silence.ok and silence.detail == "read: timed out after 1 s"


def test_udp_without_expect_silence_passes_any_reply_passes() -> None:
    async def go():
        return (
            await with_udp(None, lambda p: udp(p, b"hi", None)),
            await with_udp(b"x", lambda p: udp(p, None, None)),
        )

    (quiet, seen_quiet), (answered, seen_empty) = asyncio.run(go())
    assert quiet.ok and "no reply" in quiet.detail and seen_quiet == [b"hi"]
    assert answered.ok and seen_empty == [b""]  # an empty datagram when there is no send


def test_udp_port_unreachable_fails() -> None:
    port = free_udp_port()
    for expect in (None, "PONG"):
        r = run(probe(udp(port, b"PING", expect)))
        assert not r.ok and "connection refused" in r.detail, r


def test_udp_model_spec() -> None:
    v, rs = model(0, protocol=Protocol.UDP, port=53, expect="*")
    spec = check_spec(v, rs)
    assert spec.kind == "udp" and spec.send is None


# -- send_program


def script(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def program(argv: tuple[str, ...], expect: bytes | None, timeout: int = 2) -> CheckSpec:
    return CheckSpec(
        kind="program", host=HOST, port=0, timeout=timeout, argv=argv, program_expect=expect
    )


def test_program_output_matches(tmp_path: Path) -> None:
    ok = script(tmp_path, "ok.sh", 'echo "$1:$2"\n')
    v, rs = model(8080, send_program=f"{ok} %h %p", expect="127.0.0.1:8080")
    r = run(probe(check_spec(v, rs)))
    assert r.ok and r.detail == "send_program printed b'127.0.0.1:8080'"


def test_program_wrong_output_fails(tmp_path: Path) -> None:
    fail = script(tmp_path, "fail.sh", "echo FAIL\n")
    r = run(probe(program((fail,), b"OK")))
    assert not r.ok and r.detail == "send_program printed b'FAIL', expected b'OK'"


def test_program_output_without_newline_and_with_two(tmp_path: Path) -> None:
    bare = script(tmp_path, "bare.sh", "printf OK\n")
    two = script(tmp_path, "two.sh", "printf 'OK\\n\\n'\n")
    assert run(probe(program((bare,), b"OK"))).ok
    assert not run(probe(program((two,), b"OK"))).ok


def test_program_nonzero_exit_fails_even_with_the_right_output(tmp_path: Path) -> None:
    # piranha counted a failing program as a *good* check when expect was set
    bad = script(tmp_path, "bad.sh", "echo OK\nexit 3\n")
    r = run(probe(program((bad,), b"OK")))
    assert not r.ok and r.detail == "send_program: exit status 3"


def test_program_without_expect_passes_on_exit_zero(tmp_path: Path) -> None:
    good = script(tmp_path, "good.sh", "echo whatever\n")
    bad = script(tmp_path, "bad.sh", "exit 1\n")
    assert run(probe(program((good,), None))).ok
    assert not run(probe(program((bad,), None))).ok


def test_program_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hang = script(tmp_path, "hang.sh", f"sleep 30 &\necho $$ $! > {pids}\nwait\n")
    # 2 s: time for the shell to start and write its pids on a loaded machine
    r = run(probe(program((hang,), b"OK", timeout=2)))
    assert not r.ok and r.detail == "send_program: killed after 2 s"
    for pid in pids.read_text().split():
        # SIGKILL is sent to the group at once; give a busy kernel a moment to act on it
        for _ in range(50):
            if not _alive(int(pid)):
                break
            time.sleep(0.1)
        assert not _alive(int(pid)), pid


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return status != "Z"


def test_program_not_found_fails(tmp_path: Path) -> None:
    r = run(probe(program((str(tmp_path / "missing"),), b"OK")))
    assert not r.ok and r.detail.startswith("send_program") and "no such file" in r.detail


def test_program_runs_without_a_shell(tmp_path: Path) -> None:
    echo = script(tmp_path, "args.sh", 'printf "%s|" "$@"\n')
    r = run(probe(program((echo, "$HOME", "a;b", "*"), b"$HOME|a;b|*|")))
    assert r.ok, r
    assert os.environ.get("HOME") != "$HOME"


def test_program_stdin_is_empty_and_stderr_is_not_output(tmp_path: Path) -> None:
    body = 'echo "$(readlink /proc/$$/fd/0) $(readlink /proc/$$/fd/2)"\necho noise >&2\n'
    chk = script(tmp_path, "io.sh", body)
    r = run(probe(program((chk,), b"/dev/null /dev/null")))
    assert r.ok, r
