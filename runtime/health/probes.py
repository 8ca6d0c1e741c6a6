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
import select
import signal
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from .check import CheckSpec
from .expect import program_output
from .reactor import Cancellable, Expiry, LoopReactor, Reactor

_LINGER_RESET = struct.pack("ii", 1, 0)
_BUSY = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_TROUBLE = select.EPOLLERR | select.EPOLLHUP
_READ_READY = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
_OUT = select.EPOLLOUT


class ProbeResult(NamedTuple):
    """One check's outcome: ``ok``; ``latency`` in seconds (connect to verdict, or the
    program's run time); ``detail``: why it failed, or what passed. (A named tuple:
    ten thousand a second are made.)"""

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
            family, sockaddr = await resolve(loop, spec)
            if spec.kind == "tcp":
                future: asyncio.Future[ProbeResult] = loop.create_future()
                check = TcpCheck(LoopReactor(loop), spec, family, sockaddr, future.set_result)
                check.start()
                try:
                    return await future
                except asyncio.CancelledError:
                    check.cancel()
                    raise
            ok, detail = await _udp_check(loop, spec, family, sockaddr)
    except OSError as err:
        ok, detail = False, _oserror(err)
    return ProbeResult(ok, loop.time() - start, detail)


_new_tuple = tuple.__new__


def _oserror(err: OSError) -> str:
    if err.errno is not None:
        return os.strerror(err.errno).lower()
    return str(err) or type(err).__name__


def literal_address(spec: CheckSpec) -> tuple[int, tuple] | None:
    """(family, sockaddr) when the host is an IP address, None for a name."""
    try:
        ip = ipaddress.ip_address(spec.host)
    except ValueError:
        return None
    if ip.version == 6:
        return socket.AF_INET6, (spec.host, spec.port, 0, 0)
    return socket.AF_INET, (spec.host, spec.port)


async def resolve(loop: asyncio.AbstractEventLoop, spec: CheckSpec) -> tuple[int, tuple]:
    """(family, sockaddr) of the real server; a host name is resolved at each check."""
    literal = literal_address(spec)
    if literal is not None:
        return literal
    kind = socket.SOCK_DGRAM if spec.kind == "udp" else socket.SOCK_STREAM
    infos = await loop.getaddrinfo(spec.host, spec.port, type=kind)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


class TcpCheck:
    """One TCP check driven by callbacks of a :class:`~runtime.health.reactor.Reactor`,
    so that ten thousand checks a second cost no task, coroutine or future each:
    connect (``timeout``), send, one read (``timeout``), compare, close with a reset.
    After :meth:`start`, ``done`` gets the result exactly once, unless :meth:`cancel`
    comes first. Once done (or cancelled) the same object may be started again: the
    monitor keeps one per server.

    On a :class:`~runtime.health.reactor.FastReactor` the socket is lent by the reactor
    and followed edge-triggered, and the time limits go to the reactor's shared
    :class:`~runtime.health.reactor.Expiry` of this timeout instead of a timer each:
    an entry there is never cancelled, it is stale once ``deadline`` has moved on."""

    __slots__ = (
        "active",
        "deadline",
        "done",
        "edge",
        "expiry",
        "family",
        "fast",
        "fd",
        "on_edge",
        "phase",
        "plain",
        "pooled",
        "reactor",
        "read_deadline",
        "sock",
        "sockaddr",
        "spec",
        "started",
        "timer",
    )

    def __init__(
        self,
        reactor: Reactor,
        spec: CheckSpec,
        family: int,
        sockaddr: tuple,
        done: Callable[[ProbeResult], object],
    ) -> None:
        self.reactor = reactor
        self.spec = spec
        self.family = family
        self.sockaddr = sockaddr
        self.done = done
        # the FastReactor lends a reset socket (no socket/setsockopt/close per check)
        self.pooled = hasattr(reactor, "tcp_socket")
        # on a reactor that can follow a socket: one edge-triggered registration for
        # the connect and the read (saves re-arming in between), which a lent socket
        # keeps for its next check (saves the epoll_ctl of every check)
        self.edge = hasattr(reactor, "follow")
        self.expiry: Expiry | None = (
            reactor.expiry(spec.timeout) if hasattr(reactor, "expiry") else None  # type: ignore[attr-defined]
        )
        # all three: the FastReactor (one call to lend, connect and follow)
        self.fast = self.pooled and self.edge and self.expiry is not None
        self.on_edge = self._on_edge  # bound once, not per check
        self.plain = not spec.send and spec.expect is None  # connect only
        self.sock: socket.socket | None = None
        self.fd = -1
        self.timer: Cancellable | None = None
        self.active = False
        self.phase = "connect"
        self.started = 0.0
        self.deadline = 0.0  # the time limit in force (stale Expiry entries differ)
        self.read_deadline = 0.0

    def start(self) -> None:
        reactor = self.reactor
        self.started = now = reactor.time()
        self.phase = "connect"
        self.active = True
        if self.fast:
            try:
                sock, err = reactor.connect_tcp(self.family, self.sockaddr, self.on_edge)  # type: ignore[attr-defined]
            except OSError as e:  # no socket (EMFILE...): a failed check
                self._finish(False, f"socket: {_oserror(e)}")
                return
            self.sock = sock
            self.fd = sock.fileno()
            if err in _BUSY:  # followed: arm the time limit
                deadline = self.deadline = now + self.spec.timeout
                self.expiry.add(deadline, self)  # type: ignore[union-attr]
                return
            if not err and self.spec.expect is not None:
                # connected at once (rare): follow it for the read
                reactor.follow(self.fd, self.on_edge)  # type: ignore[attr-defined]
            self._connected(err)
            return
        try:
            if self.pooled:
                sock = reactor.tcp_socket(self.family)  # type: ignore[attr-defined]
            else:
                # the C socket type: no Python-level __init__/close wrapper per check
                sock = socket.SocketType(self.family, _STREAM)
                self.sock = sock
                self.fd = sock.fileno()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError as e:  # no socket (EMFILE...): a failed check
            self._finish(False, f"socket: {_oserror(e)}")
            return
        self.sock = sock
        self.fd = fd = sock.fileno()
        try:
            err = sock.connect_ex(self.sockaddr)
        except OSError as e:
            self._finish(False, f"connect: {_oserror(e)}")
            return
        if err in _BUSY:
            if self.edge:
                reactor.follow(fd, self.on_edge)  # type: ignore[attr-defined]
            else:
                reactor.watch(fd, True, self._on_connect)
            deadline = self.deadline = now + self.spec.timeout
            expiry = self.expiry
            if expiry is not None:
                expiry.add(deadline, self)
            else:
                self.timer = reactor.call_at(deadline, self._on_timeout)
            return
        if self.edge and not err and self.spec.expect is not None:
            # connected at once (rare): follow it for the read
            reactor.follow(fd, self.on_edge)  # type: ignore[attr-defined]
        self._connected(err)

    def _on_edge(self, events: int) -> None:
        """Edge-triggered path: the connect's outcome, then readiness for the read
        (both may arrive in one event)."""
        if self.phase == "connect":
            if events & _TROUBLE:
                err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
            elif events & _OUT:
                if self.plain:  # the common case, in short
                    self._finish(True, "connected")
                    return
                err = 0
            else:
                return  # nothing about the connect yet
            self._connected(err)
            if not self.active or not events & _READ_READY:
                return
        self._on_readable(events)

    def _on_connect(self, events: int) -> None:
        # writable without an error flag means connected: skip the getsockopt
        if events == select.EPOLLOUT:
            self._connected(0)
        else:
            self._connected(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))  # type: ignore[union-attr]

    def _connected(self, err: int) -> None:
        if err:
            self._finish(False, f"connect: {os.strerror(err).lower()}")
            return
        spec = self.spec
        if spec.send:
            try:
                self.sock.send(spec.send)  # type: ignore[union-attr]  # fits a new socket's buffer
            except OSError as e:
                self._finish(False, f"send: {_oserror(e)}")
                return
        if spec.expect is None:
            self._finish(True, "connected, sent" if spec.send else "connected")
            return
        self.phase = "read"
        reactor = self.reactor
        if not self.edge:
            reactor.watch(self.fd, False, self._on_readable)
        self.read_deadline = reactor.time() + spec.timeout
        expiry = self.expiry
        if expiry is not None:
            # a new entry; the connect's one is stale from now on
            self.deadline = self.read_deadline
            expiry.add(self.read_deadline, self)
        elif self.timer is None:
            self.timer = reactor.call_at(self.read_deadline, self._on_timeout)
        # else the connect timer stays: it re-arms itself for the read deadline when
        # it fires first (most reads end long before), saving a timer per check

    def _on_readable(self, _events: int) -> None:
        expect = self.spec.expect
        assert expect is not None
        try:
            data = self.sock.recv(expect.read_size)  # type: ignore[union-attr]
        except BlockingIOError:  # woken with nothing to read yet: keep waiting
            if not self.edge:
                self.reactor.watch(self.fd, False, self._on_readable)
            return
        except OSError as e:
            self._finish(False, f"read: {_oserror(e)}")
            return
        why = expect.match(data)
        if why:
            self._finish(False, why)
        else:
            self._finish(True, f"reply {data[:40]!r}")

    def expired(self, deadline: float) -> None:
        """The reactor's :class:`~runtime.health.reactor.Expiry` reached ``deadline``."""
        if self.active and deadline == self.deadline:
            self._finish(False, f"{self.phase}: timed out after {self.spec.timeout} s")

    def _on_timeout(self) -> None:
        self.timer = None
        if self.phase == "read" and self.reactor.time() < self.read_deadline:
            self.timer = self.reactor.call_at(self.read_deadline, self._on_timeout)
            return
        self._finish(False, f"{self.phase}: timed out after {self.spec.timeout} s")

    def _release(self) -> None:
        self.active = False
        self.deadline = 0.0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if self.pooled:
            self.reactor.release(sock)  # type: ignore[attr-defined]
        else:
            self.reactor.forget(self.fd)
            sock.close()

    def _finish(self, ok: bool, detail: str) -> None:
        if not self.active:
            return
        if self.fast:  # _release in short
            self.active = False
            self.deadline = 0.0  # its Expiry entries are stale now
            sock, self.sock = self.sock, None
            if sock is not None:
                self.reactor.release(sock)  # type: ignore[attr-defined]
        else:
            self._release()
        # tuple.__new__ straight: the named tuple's own __new__ is a Python function
        self.done(_new_tuple(ProbeResult, (ok, self.reactor.time() - self.started, detail)))

    def cancel(self) -> None:
        """Abandon the check: give back or close the socket, never call ``done``."""
        if self.active:
            self._release()


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


async def _udp_check(
    loop: asyncio.AbstractEventLoop, spec: CheckSpec, family: int, sockaddr: tuple
) -> tuple[bool, str]:
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        err = sock.connect_ex(sockaddr)  # sets the peer; ICMP errors now reach us
        if err:
            return False, f"connect: {os.strerror(err).lower()}"
        return await _udp_exchange(loop, sock, spec)
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
