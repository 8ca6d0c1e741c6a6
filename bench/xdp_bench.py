"""XDP dataplane benchmark: ns/packet through BPF_PROG_RUN and control-plane costs.

Prints, in one run: an empty XDP_PASS program (the floor: timer and call overhead),
a MAC-swap XDP_TX program (the baseline), and the load balancer on a non-VIP packet,
an established flow (conntrack hit, direct routing), a new flow (SYN: hash, Maglev
slot, conntrack insert) and tunnel encapsulation of an established UDP flow; then a
Maglev rebuild for 100 real servers and "server down -> maps updated".

BPF_PROG_RUN with repeat=1 in a loop (the program rewrites packets, and with
repeat > 1 the kernel would feed it its own output), pinned to one CPU; medians of
kernel-reported durations. Needs root, bcc and kernel headers (make setup).
Run: .venv/bin/python bench/xdp_bench.py [--calls N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bcc import BPF  # noqa: E402

from compiler import compile_text  # noqa: E402
from dataplane import maglev  # noqa: E402
from dataplane.libbpf import prog_run  # noqa: E402
from dataplane.plan import Sizes, plan  # noqa: E402
from dataplane.xdp import RealState, XdpDataplane  # noqa: E402
from tests.bpf.packets import ACK, SYN, tcp_packet, udp_packet  # noqa: E402

XDP_PASS, XDP_TX = 2, 3
CONFIG = """network = direct
virtual web {
 active = 1
 address = 198.18.0.10 eth0:1
 port = 80
 scheduler = wrr
%s}
virtual dns {
 active = 1
 address = 198.18.0.10 eth0:1
 port = 53
 protocol = udp
 network = tunnel
 scheduler = wrr
 send = "x"
 expect = "y"
%s}
"""
SERVER = " server s%d {\n  address = 198.18.%d.%d\n  active = 1\n  weight = %d\n }\n"
EMPTY = "int xdp_empty(struct xdp_md *ctx) { return XDP_PASS; }"
SWAP = """
int xdp_swap(struct xdp_md *ctx) {
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    unsigned char *p = data, t[6];
    if (data + 14 > end) return XDP_DROP;
    __builtin_memcpy(t, p, 6); __builtin_memcpy(p, p + 6, 6); __builtin_memcpy(p + 6, t, 6);
    return XDP_TX;
}"""


def servers(n: int) -> str:
    return "".join(SERVER % (i, 1 + i // 250, 1 + i % 250, 1 + i % 4) for i in range(n))


def measure(fd: int, packet: bytes, want: int, calls: int, rounds: int) -> list[int]:
    samples = []
    for _ in range(rounds):
        for _ in range(calls):
            r = prog_run(fd, packet)
            if r.retval != want:
                raise SystemExit(f"unexpected verdict {r.retval} (want {want})")
            samples.append(r.duration_ns)
    return samples


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=10)
    args = ap.parse_args()
    os.sched_setaffinity(0, {0})

    result = compile_text("bench.cf", CONFIG % (servers(3), servers(3)))
    assert result.ok, result.diagnostics
    p = plan(result.config, Sizes(max_services=4, max_reals=16, ct_size=65521))
    t = time.perf_counter()
    dp = XdpDataplane(p, pin_dir=None)
    compile_s = time.perf_counter() - t
    macs = {r.address: bytes.fromhex(f"0200000001{r.index:02x}") for r in p.reals}
    dp.sync(macs)
    empty = BPF(text=EMPTY.encode()).load_func(b"xdp_empty", BPF.XDP).fd
    swap = BPF(text=SWAP.encode()).load_func(b"xdp_swap", BPF.XDP).fd

    client, vip = "198.18.9.5", "198.18.0.10"
    syn = tcp_packet(client, vip, 40000, 80, SYN)
    ack = tcp_packet(client, vip, 40000, 80, ACK)
    dns = udp_packet(client, vip, 5353, 53, b"query")
    other = tcp_packet(client, "198.18.0.99", 40000, 80, SYN)
    prog_run(dp.prog_fd, ack)  # creates the flow
    prog_run(dp.prog_fd, dns)

    cases = [
        ("empty XDP_PASS program (floor)", empty, ack, XDP_PASS),
        ("MAC-swap XDP_TX program (baseline)", swap, ack, XDP_TX),
        ("non-VIP packet -> XDP_PASS", dp.prog_fd, other, XDP_PASS),
        ("established flow, direct routing", dp.prog_fd, ack, XDP_TX),
        ("new flow (SYN), direct routing", dp.prog_fd, syn, XDP_TX),
        ("established flow, IPIP tunnel", dp.prog_fd, dns, XDP_TX),
    ]
    rows = []
    for name, fd, packet, want in cases:
        s = measure(fd, packet, want, args.calls, args.rounds)
        rows.append((name, statistics.median(s), *statistics.quantiles(s, n=10)[::8]))
    floor, base = rows[0][1], rows[1][1]
    print(f"bcc compile+load of the LB program: {compile_s:.2f} s")
    print(f"{'case':40} {'median':>7} {'p10':>5} {'p90':>5} {'-floor':>7} {'x base':>6}  (ns)")
    for name, med, p10, p90 in rows:
        print(f"{name:40} {med:7.0f} {p10:5.0f} {p90:5.0f} {med - floor:7.0f} {med / base:6.2f}")

    members = [
        maglev.Member(f"198.18.{1 + i // 250}.{1 + i % 250}:80", 1 + i % 4) for i in range(100)
    ]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        maglev.build(members)
        times.append(time.perf_counter() - t)
    print(f"Maglev build, 100 real servers, M=65537: {min(times) * 1e3:.1f} ms (best of 5)")

    big = plan(
        compile_text("big.cf", CONFIG % (servers(100), servers(3))).config,
        Sizes(max_services=4, max_reals=128, ct_size=65521),
    )
    dp2 = XdpDataplane(big, pin_dir=None)
    macs2 = {r.address: b"\x02\0\0\0\0\x01" for r in big.reals}
    dp2.sync(macs2)
    web = big.services[0]
    down = []
    for i in range(5):
        victim = web.reals[10 + i].index
        t = time.perf_counter()
        dp2.sync(macs2, {victim: RealState(failed=True)})
        down.append(time.perf_counter() - t)
        dp2.sync(macs2)
    print(f"server down -> maps updated (100 servers, sync): {min(down) * 1e3:.1f} ms (best of 5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
