"""The least-connection family (lc, wlc, sed, nq, lblc) through BPF_PROG_RUN: the
per-real connection counts (a new flow +1, its end -1 exactly once: FIN, RST,
replacement, eviction, rescheduling) and the choice between the two candidates
(the Maglev slot of the flow hash, A, and of a second hash, B)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path

import pytest

from compiler import compile_file
from dataplane.bpf.render import CT_WAYS, ct_sets
from dataplane.libbpf import RunResult, prog_run
from dataplane.maps import ct_hash, lc_second_hash
from dataplane.plan import (
    REAL_F_FAILED,
    REAL_F_QUIESCED,
    Plan,
    RealPlan,
    addr_hash,
    flow_hash,
    plan,
)
from dataplane.xdp import RealState, XdpDataplane

from .conftest import MACS, SIZES
from .packets import ACK, RST, SYN, TCP, tcp_packet
from .test_nat_packets import CONFIG as NAT_CONFIG
from .test_nat_packets import MACS as NAT_MACS
from .test_nat_packets import PRIVATE_MAC, PUBLIC_MAC, nat_plan, to_vip

pytestmark = pytest.mark.bpf
XDP_TX = 3
FIN_ACK = 0x11
CLIENT = "198.18.9.5"
HERE = Path(__file__).resolve().parent
VIPS = {"lc": "198.18.0.20", "wlc": "198.18.0.21", "sed": "198.18.0.22", "nq": "198.18.0.23"}
VIPS["lblc"] = "198.18.0.24"
VIPS["sticky"] = "198.18.0.25"


@dataclass
class LcLb:
    dp: XdpDataplane
    plan: Plan
    state: dict[int, RealState]

    def sync(self, state: dict[int, RealState]) -> None:
        self.state = state
        self.dp.sync(MACS, state)

    def run(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.prog_fd, packet)

    def real(self, service: str, name: str) -> RealPlan:
        svc = next(s for s in self.plan.services if s.name == service)
        return next(r for r in svc.reals if r.name == name)

    def slot_real(self, service: str, h: int) -> RealPlan:
        svc = next(s for s in self.plan.services if s.name == service)
        rid = int(self.dp.table(svc, self.state)[h % self.plan.sizes.ring_size])
        return next(r for r in svc.reals if r.index == rid)

    def candidates(self, service: str, sport: int) -> tuple[RealPlan, RealPlan]:
        """(A, B) for a client port: the Maglev slots of the first and second hash
        (lblc: A by the destination address, B by the flow)."""
        vip = IPv4Address(VIPS[service])
        fh = flow_hash(IPv4Address(CLIENT), vip, sport, 80, TCP)
        first = addr_hash(vip) if service == "lblc" else fh
        return self.slot_real(service, first), self.slot_real(service, lc_second_hash(fh))

    def port_with(self, service: str, a: str, b: str, start: int = 1024) -> int:
        for sport in range(start, 65536):
            ca, cb = self.candidates(service, sport)
            if (ca.name, cb.name) == (a, b):
                return sport
        raise AssertionError((service, a, b))

    def conns(self, service: str) -> dict[str, int]:
        counts = self.dp.maps.real_conns()
        svc = next(s for s in self.plan.services if s.name == service)
        return {r.name: counts.get(r.index, 0) for r in svc.reals}

    def load(self, service: str, **conns: int) -> None:
        for name, n in conns.items():
            self.dp.maps.set_real_conns(self.real(service, name).index, n)

    def send(self, service: str, sport: int, flags: int = SYN) -> str:
        """The real server the packet went to (by its destination MAC)."""
        res = self.run(tcp_packet(CLIENT, VIPS[service], sport, 80, flags))
        assert res.retval == XDP_TX
        return next(r.name for r in self._reals(service) if MACS[r.address] == res.data[:6])

    def _reals(self, service: str):
        return next(s for s in self.plan.services if s.name == service).reals

    def second(self) -> int:
        return self.dp.maps.global_counters()["lc_second"]


@pytest.fixture(scope="module")
def compiled() -> Iterator[LcLb]:
    result = compile_file(str(HERE / "lc.cf"))
    assert result.ok
    p = plan(result.config, SIZES)
    assert "lc" in p.features
    dp = XdpDataplane(p, pin_dir=None)
    yield LcLb(dp, p, {})
    dp.close()


@pytest.fixture
def lb(compiled: LcLb) -> LcLb:
    compiled.dp.maps.clear_flows()
    compiled.dp.maps.reset_counters()
    for i in range(1, SIZES.max_reals):
        compiled.dp.maps.set_real_conns(i, 0)
    compiled.sync({})
    return compiled


def test_sync_writes_each_reals_weight(lb: LcLb) -> None:
    for name, weight in (("a", 1), ("b", 2), ("c", 3)):
        assert lb.dp.maps.real_weight(lb.real("wlc", name).index) == weight
    c = lb.real("wlc", "c").index
    lb.sync({c: RealState(weight=7)})  # a run-time weight (the health checks' own)
    assert lb.dp.maps.real_weight(c) == 7


def test_a_syn_counts_one_connection_on_its_real(lb: LcLb) -> None:
    sport = lb.port_with("wlc", "c", "a")  # both idle: a tie keeps A
    assert lb.send("wlc", sport) == "c"
    assert lb.conns("wlc") == {"a": 0, "b": 0, "c": 1}
    assert lb.send("wlc", sport, ACK) == "c"  # packets of the flow count nothing
    assert lb.conns("wlc") == {"a": 0, "b": 0, "c": 1}
    assert lb.second() == 0


def test_fin_and_rst_release_the_count_exactly_once(lb: LcLb) -> None:
    fin_port = lb.port_with("lc", "b", "b")
    rst_port = lb.port_with("lc", "b", "b", fin_port + 1)
    lb.send("lc", fin_port)
    lb.send("lc", rst_port)
    assert lb.conns("lc")["b"] == 2
    for _ in range(3):  # retransmitted FINs, then the last ACK, then an RST
        assert lb.send("lc", fin_port, FIN_ACK) == "b"
    lb.send("lc", fin_port, ACK)
    lb.send("lc", fin_port, RST)
    assert lb.conns("lc")["b"] == 1
    lb.send("lc", rst_port, RST)
    lb.send("lc", rst_port, RST)
    assert lb.conns("lc") == {"a": 0, "b": 0, "c": 0}


def test_a_release_at_zero_does_not_wrap(lb: LcLb) -> None:
    sport = lb.port_with("lc", "a", "a")
    lb.send("lc", sport)
    lb.load("lc", a=0)  # the count drifted (a reused index, a resized table)
    lb.send("lc", sport, FIN_ACK)
    assert lb.conns("lc")["a"] == 0
    t = lb.dp.bpf[b"real_conns"]
    assert t[t.Key(lb.real("lc", "a").index)].value == 0  # not 0xffffffff


def test_a_syn_for_a_tracked_flow_replaces_its_count(lb: LcLb) -> None:
    sport = lb.port_with("lc", "a", "a")
    lb.send("lc", sport)
    lb.send("lc", sport)  # the same 5-tuple starts again: one entry, one count
    assert lb.conns("lc") == {"a": 1, "b": 0, "c": 0}


def test_an_evicted_flow_releases_its_count(lb: LcLb) -> None:
    sets = ct_sets(SIZES)
    vip = IPv4Address(VIPS["lc"])
    by_set: dict[int, list[int]] = {}
    for sport in range(20000, 65536):
        s = ct_hash(IPv4Address(CLIENT), vip, sport, 80, TCP) & (sets - 1)
        by_set.setdefault(s, []).append(sport)
        if len(by_set[s]) == CT_WAYS + 3:
            ports = by_set[s]
            break
    for sport in ports:
        lb.send("lc", sport)
    assert lb.dp.maps.global_counters()["ct_evicted"] == 3
    assert sum(lb.conns("lc").values()) == CT_WAYS  # three counts released


def test_a_rescheduled_flow_moves_its_count(lb: LcLb) -> None:
    sport = lb.port_with("lc", "a", "b")
    assert lb.send("lc", sport) == "a"
    lb.sync({lb.real("lc", "a").index: RealState(failed=True)})
    moved = lb.send("lc", sport, ACK)
    assert moved != "a"
    assert lb.dp.maps.global_counters()["rescheduled"] == 1
    assert lb.conns("lc") == {"a": 0, "b": 0, "c": 0} | {moved: 1}


def test_the_less_loaded_candidate_takes_the_syn(lb: LcLb) -> None:
    sport = lb.port_with("lc", "a", "c")
    lb.load("lc", a=5, c=4)
    assert lb.send("lc", sport) == "c"
    assert lb.second() == 1
    assert lb.conns("lc") == {"a": 5, "b": 0, "c": 5}
    other = lb.port_with("lc", "a", "c", sport + 1)
    lb.load("lc", a=5, c=6)
    assert lb.send("lc", other) == "a"
    lb.load("lc", a=7, c=7)  # a tie keeps A
    assert lb.send("lc", lb.port_with("lc", "a", "c", other + 1)) == "a"
    assert lb.second() == 1


def test_a_failed_or_quiesced_second_candidate_is_never_taken(lb: LcLb) -> None:
    sport = lb.port_with("lc", "a", "c")
    lb.load("lc", a=50)
    c = lb.real("lc", "c")
    mac = MACS[c.address]
    for flags in (REAL_F_FAILED, REAL_F_QUIESCED):
        # the entry says so before the table is rewritten (sync writes it first)
        lb.dp.maps.set_real(c.index, c.address, mac, flags)
        assert lb.send("lc", sport) == "a"
    lb.dp.maps.set_real(c.index, c.address, mac, 0)
    assert lb.send("lc", lb.port_with("lc", "a", "c", sport + 1)) == "c"
    assert lb.conns("lc") == {"a": 51, "b": 0, "c": 1}  # sport's SYN again: replaced


def test_wlc_divides_by_weight(lb: LcLb) -> None:
    # A = c (weight 3) with 5, B = a (weight 1) with 2: 5/3 < 2/1, A stays
    sport = lb.port_with("wlc", "c", "a")
    lb.load("wlc", c=5, a=2)
    assert lb.send("wlc", sport) == "c"
    # the same loads under lc (no weights) go to B
    lc_port = lb.port_with("lc", "c", "a")
    lb.load("lc", c=5, a=2)
    assert lb.send("lc", lc_port) == "a"
    # A = a (weight 1) with 1, B = c (weight 3) with 2: 2/3 < 1/1, B
    other = lb.port_with("wlc", "a", "c")
    lb.load("wlc", a=1, c=2)
    assert lb.send("wlc", other) == "c"


def test_sed_counts_the_new_connection_too(lb: LcLb) -> None:
    # A = a (weight 1) idle, B = c (weight 3) with 1: wlc 0/1 < 1/3 keeps A,
    # sed (0+1)/1 > (1+1)/3 takes B
    sport = lb.port_with("sed", "a", "c")
    lb.load("sed", c=1)
    assert lb.send("sed", sport) == "c"
    wlc_port = lb.port_with("wlc", "a", "c")
    lb.load("wlc", c=1)
    assert lb.send("wlc", wlc_port) == "a"


def test_nq_prefers_an_idle_server(lb: LcLb) -> None:
    # A = c (weight 3) with 1, B = a (weight 1) idle: sed (1+1)/3 < (0+1)/1 keeps A,
    # nq takes the idle B
    sport = lb.port_with("nq", "c", "a")
    assert lb.send("nq", sport) == "c"  # both idle: A
    lb.send("nq", sport, RST)
    lb.load("nq", c=1)
    assert lb.send("nq", lb.port_with("nq", "c", "a", sport + 1)) == "a"
    sed_port = lb.port_with("sed", "c", "a")
    lb.load("sed", c=1)
    assert lb.send("sed", sed_port) == "c"
    # neither idle: as sed
    lb.load("nq", c=1, a=1)
    assert lb.send("nq", lb.port_with("nq", "c", "a", sport + 1)) == "c"


def test_lblc_leaves_the_destinations_server_only_when_overloaded(lb: LcLb) -> None:
    a_name = lb.candidates("lblc", 1024)[0].name  # one destination: one A for all
    b_name = next(n for n in "abc" if n != a_name)
    weight = {"a": 1, "b": 2, "c": 3}
    sport = lb.port_with("lblc", a_name, b_name)
    lb.load("lblc", **{a_name: weight[a_name]})  # at its weight: not overloaded
    assert lb.send("lblc", sport) == a_name
    lb.load("lblc", **{a_name: weight[a_name] + 1})  # above it, and B below half
    assert lb.send("lblc", lb.port_with("lblc", a_name, b_name, sport + 1)) == b_name
    lb.load("lblc", **{a_name: 10, b_name: weight[b_name]})  # B not below half
    assert lb.send("lblc", lb.port_with("lblc", a_name, b_name, sport + 2)) == a_name


def test_a_persistent_clients_first_flow_takes_the_less_loaded_then_sticks(lb: LcLb) -> None:
    # persistence: the candidates come from the client's address (A: its Maglev slot,
    # B: the second hash of it); the template then holds whatever was chosen
    client = next(
        f"198.18.9.{i}"
        for i in range(1, 255)
        if lb.slot_real("sticky", addr_hash(IPv4Address(f"198.18.9.{i}"))).name == "a"
        and lb.slot_real("sticky", lc_second_hash(addr_hash(IPv4Address(f"198.18.9.{i}")))).name
        == "b"
    )
    lb.load("sticky", a=3, b=1)

    def send(sport: int) -> bytes:
        res = lb.run(tcp_packet(client, VIPS["sticky"], sport, 80, SYN))
        assert res.retval == XDP_TX
        return res.data[:6]

    b_mac = MACS[lb.real("sticky", "b").address]
    assert send(30000) == b_mac
    lb.load("sticky", a=0, b=9)  # the template decides now, not the counts
    assert send(30001) == b_mac
    assert lb.dp.maps.global_counters()["persist_hit"] == 1
    assert lb.conns("sticky") == {"a": 0, "b": 10}


def test_a_nat_flow_is_counted_until_its_fin() -> None:
    p = nat_plan(NAT_CONFIG.replace("scheduler = wrr", "scheduler = wlc", 1))
    assert "lc" in p.features
    dp = XdpDataplane(p, pin_dir=None)
    try:
        dp.sync(NAT_MACS)
        dp.configure_nat(
            private_ifindex=1, public_ifindex=1, private_mac=PRIVATE_MAC, public_mac=PUBLIC_MAC
        )
        web = next(s for s in p.services if s.name == "web")
        assert dp.maps.real_weight(web.reals[0].index) == 1
        for sport in (41000, 41001):
            assert prog_run(dp.prog_fd, to_vip(sport)).retval == 4  # XDP_REDIRECT
        assert sum(dp.maps.real_conns().get(r.index, 0) for r in web.reals) == 2
        for _ in range(2):
            assert prog_run(dp.prog_fd, to_vip(41000, FIN_ACK)).retval == 4
        assert sum(dp.maps.real_conns().get(r.index, 0) for r in web.reals) == 1
        assert prog_run(dp.prog_fd, to_vip(41001, RST)).retval == 4
        assert dp.maps.real_conns() == {}
    finally:
        dp.close()


def test_a_recent_ipv4_template_is_not_rewritten_by_each_new_flow(lb: LcLb) -> None:
    from dataplane.maps import PersistState

    t = lb.dp.bpf[b"persist"]

    def last_ns() -> int:
        ((_k, v),) = t.items()
        return PersistState.from_buffer_copy(bytes(v)).last_ns

    def send(sport: int) -> bytes:
        res = lb.run(tcp_packet("198.18.9.77", VIPS["sticky"], sport, 80, SYN))
        assert res.retval == XDP_TX
        return res.data[:6]

    first = send(36000)
    written = last_ns()
    assert all(send(sport) == first for sport in range(36001, 36005))
    assert last_ns() == written
    lb.dp.maps.age_persistence(1.5)
    assert send(36010) == first
    assert last_ns() > written - 1_500_000_000
