"""Timers and socket readiness for health checks, on top of an asyncio loop.

:class:`TcpCheck <runtime.health.probes.TcpCheck>` needs three things: the time,
one-shot timers and one-shot "this socket is writable/readable" callbacks. Two
implementations give them:

* :class:`LoopReactor` maps them straight onto the asyncio loop (``call_at``,
  ``add_writer``/``add_reader``): simple, used for single probes.
* :class:`FastReactor` is what the monitor uses for thousands of checks a second.
  asyncio keeps its timers in a heap of Python objects compared by a Python
  ``__lt__``, and registers each socket through several layers of selector
  bookkeeping; at 10,000 checks a second that cost more than the checks. Here timers
  fall into 1 ms buckets (a heap of plain integers, one loop timer for the earliest
  bucket), and check sockets live in a private epoll set armed one-shot, which the
  loop watches as a single file descriptor. A timer fires at most one resolution
  step late, never early. It also lends the checks their TCP sockets: a finished
  check's socket is reset with ``connect(AF_UNSPEC)`` (the kernel's
  ``tcp_disconnect``, which is what ``close()`` with ``SO_LINGER`` 0 does: an RST if
  connected) and kept, still in the epoll set, for a later check. That saves the
  ``socket``, ``setsockopt``, ``close`` and the kernel's socket set-up and tear-down
  of every check (one system call, that connect, takes their place). And it keeps
  the time limits of all checks of one length in one :class:`Expiry`, a queue in
  time order swept by a single timer, instead of a timer per check.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import heapq
import math
import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from .schedule import DeadlineQueue


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Reactor(Protocol):
    def time(self) -> float: ...

    def call_at(self, when: float, fn: Callable[..., object], *args: object) -> Cancellable: ...

    def watch(self, fd: int, writable: bool, fn: Callable[[int], object]) -> None:
        """Call ``fn`` once when ``fd`` is writable (or readable); the watch then ends.
        ``fn`` gets the epoll event mask when known (``EPOLLOUT`` alone: a connect
        succeeded), else 0."""

    def forget(self, fd: int) -> None:
        """Drop a pending watch (before the socket is closed)."""


class LoopReactor:
    """The asyncio loop itself."""

    __slots__ = ("loop", "watching")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watching: dict[int, bool] = {}

    def time(self) -> float:
        return self.loop.time()

    def call_at(self, when: float, fn: Callable[..., object], *args: object) -> Cancellable:
        return self.loop.call_at(when, fn, *args)

    def watch(self, fd: int, writable: bool, fn: Callable[[int], object]) -> None:
        def once() -> None:
            self.forget(fd)
            fn(0)

        self.watching[fd] = writable
        (self.loop.add_writer if writable else self.loop.add_reader)(fd, once)

    def forget(self, fd: int) -> None:
        writable = self.watching.pop(fd, None)
        if writable is not None:
            (self.loop.remove_writer if writable else self.loop.remove_reader)(fd)


class Expires(Protocol):
    """What :class:`Expiry` times out: ``deadline`` is its time limit in force; an
    entry whose deadline differs from it is stale (entries are never cancelled) and
    dropped without a call."""

    deadline: float

    def expired(self, deadline: float) -> None:
        """``deadline``, still the one in force, has come."""


class Expiry(DeadlineQueue["Expires"]):
    """All the timeouts of one length on a :class:`FastReactor`: a
    :class:`~runtime.health.schedule.DeadlineQueue` swept by one reactor timer set for
    its front entry, instead of a timer per check (see the module docstring)."""

    __slots__ = ("_armed", "_reactor", "delay")

    def __init__(self, reactor: FastReactor, delay: float) -> None:
        super().__init__()
        self._reactor = reactor
        self._armed = False  # a sweep is set (or running)
        self.delay = delay

    def add(self, deadline: float, owner: Expires) -> None:
        """Call ``owner.expired(deadline)`` once ``deadline`` has passed."""
        self._entries.append((deadline, owner))
        if not self._armed:
            self._armed = True
            self._reactor.call_at(deadline, self._sweep)

    def _sweep(self) -> None:
        reactor = self._reactor
        try:
            for deadline, owner in self.due(reactor.time() + _SLACK):
                if owner.deadline != deadline:
                    continue  # stale: that check ended, or moved on to its read
                try:
                    owner.expired(deadline)
                except Exception as err:
                    reactor._failed(err)
        finally:
            head = self.head()
            self._armed = head is not None
            if head is not None:
                reactor.call_at(head, self._sweep)

    def clear(self) -> None:
        super().clear()
        self._armed = False


class _Timer:
    __slots__ = ("args", "cancelled", "fn")

    def __init__(self, fn: Callable[..., object], args: tuple) -> None:
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


_ONESHOT_OUT = select.EPOLLOUT | select.EPOLLONESHOT
_ONESHOT_IN = select.EPOLLIN | select.EPOLLONESHOT
_EDGE_BOTH = select.EPOLLIN | select.EPOLLOUT | select.EPOLLET
_BATCH = 4096  # events per epoll_wait
_BUSY = (errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY)
_SLACK = 1e-6  # a bucket fires when its time is within this of the clock

_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
_LINGER_RESET = struct.pack("ii", 1, 0)
_POOL_MAX = 4096  # idle sockets kept per address family
# connect(fd, {AF_UNSPEC}) dissolves a TCP socket's association (tcp_disconnect);
# Python's socket.connect cannot pass that address, so it goes through libc
# (no argtypes, no errno copy: ~0.3 µs less per call; ints and the buffer convert as is)
_libc_connect = ctypes.CDLL(None).connect
_UNSPEC = ctypes.create_string_buffer(32)  # zeroed: sa_family = AF_UNSPEC


class FastReactor:
    """Bucketed timers and a private one-shot epoll set (see the module docstring).
    ``close()`` releases the epoll descriptor."""

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.001) -> None:
        self.loop = loop
        # the loop's clock; called for every check, so skip the method when it is
        # the standard loop's plain time.monotonic()
        self.time: Callable[[], float] = (
            time.monotonic if type(loop).time is asyncio.BaseEventLoop.time else loop.time
        )
        self.resolution = resolution
        self._buckets: dict[int, list[_Timer]] = {}
        self._keys: list[int] = []
        self._armed: int | None = None  # bucket the loop timer is set for
        self._handle: asyncio.TimerHandle | None = None
        self._firing = False
        self._epoll = select.epoll()
        self._registered: set[int] = set()
        self._edge: set[int] = set()  # registered edge-triggered, in and out
        self._callbacks: dict[int, Callable[[int], object]] = {}
        self._following: dict[int, Callable[[int], object]] = {}
        self._idle: dict[int, list[socket.socket]] = {}  # family -> reset sockets
        self._expiries: dict[float, Expiry] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        if self._handle is not None:
            self._handle.cancel()
        for idle in self._idle.values():
            for sock in idle:
                sock.close()
            idle.clear()
        self._idle.clear()
        self._registered.clear()
        self._edge.clear()
        self._epoll.close()
        self._buckets.clear()
        self._keys.clear()
        self._callbacks.clear()
        self._following.clear()
        for expiry in self._expiries.values():
            expiry.clear()
        self._expiries.clear()

    # -- timers

    def expiry(self, delay: float) -> Expiry:
        """The shared queue of the timeouts of length ``delay``."""
        expiry = self._expiries.get(delay)
        if expiry is None:
            expiry = self._expiries[delay] = Expiry(self, delay)
        return expiry

    def call_at(self, when: float, fn: Callable[..., object], *args: object) -> Cancellable:
        timer = _Timer(fn, args)
        key = math.ceil(when / self.resolution)
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.append(timer)
            return timer
        self._buckets[key] = [timer]
        heapq.heappush(self._keys, key)
        if not self._firing and (self._armed is None or key < self._armed):
            self._arm(key)
        return timer

    def _arm(self, key: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = key
        self._handle = self.loop.call_at(key * self.resolution, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed = None
        self._firing = True
        keys, buckets = self._keys, self._buckets
        try:
            # sockets that became ready go first: after a stall (a busy or starved
            # process) a check whose answer is waiting must not time out
            self._ready()
            limit = (self.time() + _SLACK) / self.resolution
            while keys and keys[0] <= limit:
                for timer in buckets.pop(heapq.heappop(keys)):
                    if not timer.cancelled:
                        try:
                            timer.fn(*timer.args)
                        except Exception as err:
                            self._failed(err)
        finally:
            self._firing = False
            if keys:
                self._arm(keys[0])

    def _failed(self, err: Exception) -> None:
        self.loop.call_exception_handler(
            {"message": "health check callback failed", "exception": err}
        )

    # -- sockets

    def watch(self, fd: int, writable: bool, fn: Callable[[int], object]) -> None:
        mask = _ONESHOT_OUT if writable else _ONESHOT_IN
        self._edge.discard(fd)
        if fd in self._registered:
            try:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:  # closed without forget(): the number was reused
                self._epoll.register(fd, mask)
        else:
            try:
                self._epoll.register(fd, mask)
            except FileExistsError:
                self._epoll.modify(fd, mask)
            self._registered.add(fd)
        self._following.pop(fd, None)
        self._callbacks[fd] = fn

    def follow(self, fd: int, fn: Callable[[int], object]) -> None:
        """Call ``fn(events)`` on every readiness change of ``fd`` (edge-triggered, in
        and out) until :meth:`forget`: one registration serves a connect and the read
        after it, where :meth:`watch` needs a second ``epoll_ctl`` to re-arm. ``fn``
        may be called with nothing new to read (it must then wait for the next call).
        A lent socket keeps its edge-triggered registration from check to check: no
        ``epoll_ctl`` at all then."""
        self._callbacks.pop(fd, None)
        self._following[fd] = fn
        if fd not in self._edge:
            self._register_edge(fd)

    def _register_edge(self, fd: int) -> None:
        self._edge.add(fd)
        if fd in self._registered:
            try:
                self._epoll.modify(fd, _EDGE_BOTH)
            except FileNotFoundError:
                self._epoll.register(fd, _EDGE_BOTH)
        else:
            try:
                self._epoll.register(fd, _EDGE_BOTH)
            except FileExistsError:
                self._epoll.modify(fd, _EDGE_BOTH)
            self._registered.add(fd)

    def forget(self, fd: int) -> None:
        """Drop the watch of a socket about to be closed (closing removes it from the
        epoll set; a later socket may reuse the number)."""
        self._callbacks.pop(fd, None)
        self._following.pop(fd, None)
        self._registered.discard(fd)
        self._edge.discard(fd)

    # -- sockets lent to checks

    def tcp_socket(self, family: int) -> socket.socket:
        """A non-blocking TCP socket with ``SO_LINGER`` 0, not connected: a reset one
        from an earlier check when there is one. Give it back with
        :meth:`release`, never close it."""
        idle = self._idle.get(family)
        if idle:
            return idle.pop()
        # the C socket type: no Python-level __init__/close wrapper
        sock = socket.SocketType(family, _STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            sock.close()
            raise
        return sock

    def connect_tcp(
        self, family: int, sockaddr: tuple, fn: Callable[[int], object]
    ) -> tuple[socket.socket, int]:
        """A check's start in one call: :meth:`tcp_socket`, a non-blocking connect, and
        while it is in progress :meth:`follow` with ``fn``. Returns the socket and the
        connect's errno (0: connected at once; ``EINPROGRESS``: followed). Raises
        OSError only when no socket could be had."""
        idle = self._idle.get(family)
        sock = idle.pop() if idle else self.tcp_socket(family)
        try:
            err = sock.connect_ex(sockaddr)
        except OSError as e:
            err = e.errno or errno.EINVAL
        if err in _BUSY:
            fd = sock.fileno()
            self._following[fd] = fn
            if fd not in self._edge:
                self._register_edge(fd)
        return sock, err

    def release(self, sock: socket.socket) -> None:
        """A check is done with ``sock``: drop its watch, reset the connection (an RST
        if it was established, as ``close()`` with ``SO_LINGER`` 0 would send) and keep
        the socket, still registered, for :meth:`tcp_socket`. A stale readiness event
        of it is harmless: epoll re-reads the state before reporting, and a socket
        connecting anew has none. Closed instead if the reset fails or enough are
        idle."""
        fd = sock.fileno()
        self._callbacks.pop(fd, None)
        self._following.pop(fd, None)
        idle = self._idle.get(sock.family)
        if idle is None:
            idle = self._idle[sock.family] = []
        # the reset leaves ECONNRESET pending on the socket; the next connect clears it
        # (tcp_connect_init) before it can be reported (tests/runtime/test_health_pool.py)
        if len(idle) < _POOL_MAX and _libc_connect(fd, _UNSPEC, 16) == 0:
            idle.append(sock)
            return
        self._registered.discard(fd)
        self._edge.discard(fd)
        sock.close()

    def _ready(self) -> None:
        callbacks, following = self._callbacks, self._following
        while True:
            ready = self._epoll.poll(0, _BATCH)
            for fd, events in ready:
                # a descriptor is either followed or watched once, never both
                fn = following.get(fd)
                if fn is None:
                    fn = callbacks.pop(fd, None)
                if fn is not None:
                    try:
                        fn(events)
                    except Exception as err:
                        self._failed(err)
            if len(ready) < _BATCH:
                return
