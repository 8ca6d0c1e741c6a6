"""The checks themselves: thin asyncio adapters that run one :class:`CheckSpec` against a
real server and report what happened. They decide nothing about up or down; that is
:mod:`.nanny`'s job.

* TCP: non-blocking connect (``timeout``), write ``send``, one read (``timeout``) of as
  many bytes as the matcher wants, compare; the socket is closed with a reset so neither
  side keeps a TIME_WAIT per check.
* UDP: connect (sets the peer), send ``send`` (an empty datagram when there is none),
  wait ``timeout`` for one datagram: a reply is judged by ``expect``; an ICMP port
  unreachable fails; silence fails when ``expect`` is set and passes without one.
* send_program: run without a shell in its own session, stdin/stderr on /dev/null; the
  whole process group is killed after ``timeout``; a non-zero exit fails; the output
  without its trailing newline must equal ``expect`` exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import signal
import socket
import struct
from dataclasses import dataclass

from .check import CheckSpec
from .expect import program_output

_LINGER_RESET = struct.pack("ii", 1, 0)
_BUSY = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One check's outcome: ``ok``; ``latency`` in seconds (connect to verdict, or the
    program's run time); ``detail``: why it failed, or what passed."""

    ok: bool
    latency: float
    detail: str


async def probe(spec: CheckSpec) -> ProbeResult:
    """Run ``spec`` once."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        if spec.kind == "program":
            ok, detail = await _program(spec)
        else:
            ok, detail = await _socket_check(loop, spec)
    except OSError as err:
        ok, detail = False, _oserror(err)
    return ProbeResult(ok, loop.time() - start, detail)


def _oserror(err: OSError) -> str:
    if err.errno is not None:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


async def _address(loop: asyncio.AbstractEventLoop, spec: CheckSpec, kind: int) -> tuple:
    """(family, sockaddr) of the real server; a host name is resolved at each check."""
    try:
        ip = ipaddress.ip_address(spec.host)
    except ValueError:
        infos = await loop.getaddrinfo(spec.host, spec.port, type=kind)
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr
    if ip.version == 6:
        return socket.AF_INET6, (spec.host, spec.port, 0, 0)
    return socket.AF_INET, (spec.host, spec.port)


async def _wait_fd(
    loop: asyncio.AbstractEventLoop, fd: int, writable: bool, timeout: float
) -> bool:
    """Wait until ``fd`` is writable / readable; False on timeout."""
    future = loop.create_future()

    def ready() -> None:
        if not future.done():
            future.set_result(True)

    def expired() -> None:
        if not future.done():
            future.set_result(False)

    (loop.add_writer if writable else loop.add_reader)(fd, ready)
    timer = loop.call_later(timeout, expired)
    try:
        return await future
    finally:
        timer.cancel()
        (loop.remove_writer if writable else loop.remove_reader)(fd)


async def _socket_check(loop: asyncio.AbstractEventLoop, spec: CheckSpec) -> tuple[bool, str]:
    udp = spec.kind == "udp"
    kind = socket.SOCK_DGRAM if udp else socket.SOCK_STREAM
    family, sockaddr = await _address(loop, spec, kind)
    sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if not udp:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        err = sock.connect_ex(sockaddr)
        if err in _BUSY:
            if not await _wait_fd(loop, sock.fileno(), True, spec.timeout):
                return False, f"connect: timed out after {spec.timeout} s"
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            return False, f"connect: {os.strerror(err).lower()}"
        if udp:
            return await _udp_exchange(loop, sock, spec)
        if spec.send:
            try:
                sock.send(spec.send)  # a probe fits in the socket buffer of a new socket
            except OSError as e:
                return False, f"send: {_oserror(e)}"
        if spec.expect is None:
            return True, "connected" if not spec.send else "connected, sent"
        data = await _read_once(loop, sock, spec.expect.read_size, spec.timeout)
        if isinstance(data, str):
            return False, data
        why = spec.expect.match(data)
        return (False, why) if why else (True, f"reply {data[:40]!r}")
    finally:
        sock.close()


async def _read_once(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int, timeout: float
) -> bytes | str:
    """One read of at most ``size`` bytes after waiting ``timeout`` for the socket to be
    readable (nanny's poll + read); a string says why there is nothing."""
    if not await _wait_fd(loop, sock.fileno(), False, timeout):
        return f"read: timed out after {timeout:g} s"
    try:
        return sock.recv(size)
    except ConnectionRefusedError:
        return "read: connection refused (ICMP port unreachable)"
    except OSError as e:
        return f"read: {_oserror(e)}"


async def _udp_exchange(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, spec: CheckSpec
) -> tuple[bool, str]:
    try:
        sock.send(spec.send or b"")
    except OSError as e:
        return False, f"send: {_oserror(e)}"
    size = spec.expect.read_size if spec.expect is not None else 65535
    data = await _read_once(loop, sock, size, spec.timeout)
    if isinstance(data, str):
        if spec.expect is None and "timed out" in data:
            return True, "no reply and no ICMP error (UDP without expect)"
        return False, data
    if spec.expect is None:
        return True, f"reply {data[:40]!r}"
    why = spec.expect.match(data)
    return (False, why) if why else (True, f"reply {data[:40]!r}")


async def _program(spec: CheckSpec) -> tuple[bool, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as e:
        return False, f"send_program {spec.argv[0]!r}: {_oserror(e)}"
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), spec.timeout)
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        return False, f"send_program: killed after {spec.timeout} s"
    except asyncio.CancelledError:
        _kill_group(proc.pid)
        await proc.wait()
        raise
    if proc.returncode != 0:
        return False, f"send_program: exit status {proc.returncode}"
    output = program_output(stdout)
    if spec.program_expect is None:
        return True, "send_program: exit status 0"
    if output != spec.program_expect:
        return False, f"send_program printed {output[:60]!r}, expected {spec.program_expect!r}"
    return True, f"send_program printed {output[:40]!r}"


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
