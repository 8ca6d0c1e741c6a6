"""IPIP (and IP6IP6) decapsulation in XDP for the real servers of a tunnelled service.

Where a real server's kernel has the ``ipip`` module, it decapsulates the load
balancer's packets itself. Where it has not (the kernel these tests run on), the
small program in ``bpf/decap.bpf.c`` strips the outer IPv4 header on the real
server's interface and passes the inner packet (client -> VIP) to the stack.
Only packets addressed to one of the given ``endpoints`` (the real server's own
addresses) are touched; everything else passes unchanged.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from .xdp import _bcc, attach_xdp, detach_xdp

SOURCE = Path(__file__).resolve().parent / "bpf" / "decap.bpf.c"
PROGRAM = "decap_ingress"
COUNTERS = ("decapsulated", "not_ours", "malformed")


class Decap:
    """One compiled decap program (one ``BPF()``) and its endpoint map; the same
    program may be attached to several interfaces (in several namespaces)."""

    def __init__(self, endpoints: Iterable[IPv4Address | IPv6Address] = ()):
        BPF = _bcc()
        self.bpf = BPF(text=SOURCE.read_bytes())
        self.fn = self.bpf.load_func(PROGRAM.encode(), BPF.XDP)
        self._endpoints = self.bpf[b"endpoints"]
        self._endpoints6 = self.bpf[b"endpoints6"]  # IP6IP6
        self._stats = self.bpf[b"decap_stats"]
        for addr in endpoints:
            self.add_endpoint(addr)

    @property
    def prog_fd(self) -> int:
        return self.fn.fd

    def _key(self, addr: IPv4Address | IPv6Address) -> tuple[object, object]:
        if isinstance(addr, IPv6Address):
            t = self._endpoints6
            return t, t.Key.from_buffer_copy(addr.packed)
        t = self._endpoints
        return t, t.Key(socket.htonl(int(addr)))

    def add_endpoint(self, addr: IPv4Address | IPv6Address) -> None:
        t, k = self._key(addr)
        t[k] = t.Leaf(1)  # type: ignore[index,attr-defined]

    def remove_endpoint(self, addr: IPv4Address | IPv6Address) -> None:
        t, k = self._key(addr)
        del t[k]  # type: ignore[attr-defined]

    def endpoints(self) -> set[IPv4Address | IPv6Address]:
        out: set[IPv4Address | IPv6Address] = {
            IPv4Address(socket.ntohl(k.value))
            for k in self._endpoints.keys()  # noqa: SIM118
        }
        out |= {IPv6Address(bytes(k)) for k in self._endpoints6.keys()}  # noqa: SIM118
        return out

    def counters(self) -> dict[str, int]:
        t = self._stats
        return {name: sum(int(x) for x in t[t.Key(i)]) for i, name in enumerate(COUNTERS)}

    def attach(self, ifname: str, mode: str = "native") -> str:
        return attach_xdp(self.fn, ifname, mode)

    @staticmethod
    def detach(ifname: str, mode: str = "native") -> None:
        detach_xdp(ifname, mode)

    def close(self) -> None:
        self.bpf.cleanup()
