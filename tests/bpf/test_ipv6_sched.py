"""IPv6 scheduling through BPF_PROG_RUN (tests/bpf/lc6.cf, feature ipv6): the
least-connection family with IPv4's counting rules (a new flow +1, its end -1
exactly once), the power-of-two choice between the Maglev slot of the flow hash (A)
and of a second hash (B); sh and dh by plan.addr_hash of the IPv6 source or
destination; persistence templates keyed by the source masked to the prefix length."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

import pytest

from compiler import compile_file
from dataplane.bpf.render import CT_WAYS, ct_sets
from dataplane.libbpf import RunResult, prog_run
from dataplane.maps import lc_second_hash
from dataplane.plan import Plan, RealPlan, ServicePlan, addr_hash, flow_hash, persist_client, plan
from dataplane.xdp import RealState, XdpDataplane

from .conftest import HERE, SIZES
from .packets import ACK, RST, SYN, TCP, tcp6_packet, tcp_packet

pytestmark = pytest.mark.bpf
XDP_TX = 3
FIN_ACK = 0x11
CLIENT = "2001:2:9::5"
VIPS = {"lc6": "2001:2::20", "wlc6": "2001:2::21", "sh6": "2001:2::22", "dh6": "2001:2::23"}
VIPS |= {"sticky6": "2001:2::24", "host6": "2001:2::25"}
MACS = {IPv6Address(f"2001:2:1::{i}"): bytes.fromhex(f"0200000006{i:02x}") for i in (1, 2, 3)}
MACS[IPv4Address("198.18.1.1")] = bytes.fromhex("020000000401")


@dataclass
class Lb6:
    dp: XdpDataplane
    plan: Plan
    state: dict[int, RealState]

    def sync(self, state: dict[int, RealState]) -> None:
        self.state = state
        self.dp.sync(MACS, state)

    def run(self, packet: bytes) -> RunResult:
        return prog_run(self.dp.prog_fd, packet)

    def service(self, name: str) -> ServicePlan:
        return next(s for s in self.plan.services if s.name == name)

    def real(self, service: str, name: str) -> RealPlan:
        return next(r for r in self.service(service).reals if r.name == name)

    def slot_real(self, service: str, h: int) -> RealPlan:
        svc = self.service(service)
        rid = int(self.dp.table(svc, self.state)[h % self.plan.sizes.ring_size])
        return next(r for r in svc.reals if r.index == rid)

    def candidates(self, service: str, sport: int, client: str = CLIENT) -> tuple[str, str]:
        fh = flow_hash(IPv6Address(client), IPv6Address(VIPS[service]), sport, 80, TCP)
        return self.slot_real(service, fh).name, self.slot_real(service, lc_second_hash(fh)).name

    def port_with(self, service: str, a: str, b: str, start: int = 1024) -> int:
        return next(p for p in range(start, 65536) if self.candidates(service, p) == (a, b))

    def conns(self, service: str) -> dict[str, int]:
        counts = self.dp.maps.real_conns()
        return {r.name: counts.get(r.index, 0) for r in self.service(service).reals}

    def load(self, service: str, **conns: int) -> None:
        for name, n in conns.items():
            self.dp.maps.set_real_conns(self.real(service, name).index, n)

    def send(self, service: str, sport: int, flags: int = SYN, client: str = CLIENT) -> str:
        """The real server the packet went to (by its destination MAC)."""
        res = self.run(tcp6_packet(client, VIPS[service], sport, 80, flags))
        assert res.retval == XDP_TX
        return next(r.name for r in self.service(service).reals if MACS[r.address] == res.data[:6])

    def counter(self, name: str) -> int:
        return self.dp.maps.global_counters()[name]


@pytest.fixture(scope="module")
def compiled() -> Iterator[Lb6]:
    result = compile_file(str(HERE / "lc6.cf"))
    assert result.ok
    p = plan(result.config, SIZES, ipv6=True)
    assert {"ipv6", "lc", "sh", "dh", "persistence"} <= p.features
    dp = XdpDataplane(p, pin_dir=None)
    yield Lb6(dp, p, {})
    dp.close()


@pytest.fixture
def lb(compiled: Lb6) -> Lb6:
    compiled.dp.maps.clear_flows()
    compiled.dp.maps.reset_counters()
    for i in range(1, SIZES.max_reals):
        compiled.dp.maps.set_real_conns(i, 0)
    compiled.sync({})
    return compiled


# ---- the least-connection family


def test_sync_writes_the_weights_of_ipv6_reals(lb: Lb6) -> None:
    for name, weight in (("a", 1), ("b", 2), ("c", 3)):
        assert lb.dp.maps.real_weight(lb.real("wlc6", name).index) == weight


def test_a_syn_counts_one_connection_and_its_packets_none(lb: Lb6) -> None:
    sport = lb.port_with("wlc6", "c", "a")  # both idle: a tie keeps A
    assert lb.send("wlc6", sport) == "c"
    assert lb.send("wlc6", sport, ACK) == "c"
    assert lb.conns("wlc6") == {"a": 0, "b": 0, "c": 1}
    assert lb.counter("lc_second") == 0 and lb.counter("ct_hit") == 1


def test_fin_and_rst_release_the_count_exactly_once(lb: Lb6) -> None:
    fin_port = lb.port_with("lc6", "b", "b")
    rst_port = lb.port_with("lc6", "b", "b", fin_port + 1)
    lb.send("lc6", fin_port)
    lb.send("lc6", rst_port)
    assert lb.conns("lc6")["b"] == 2
    for _ in range(3):  # retransmitted FINs, the last ACK, an RST: one release
        assert lb.send("lc6", fin_port, FIN_ACK) == "b"
    lb.send("lc6", fin_port, ACK)
    lb.send("lc6", fin_port, RST)
    assert lb.conns("lc6")["b"] == 1
    lb.send("lc6", rst_port, RST)
    lb.send("lc6", rst_port, RST)
    assert lb.conns("lc6") == {"a": 0, "b": 0, "c": 0}


def test_an_rst_that_starts_nothing_counts_nothing(lb: Lb6) -> None:
    lb.send("lc6", 5000, RST | ACK)
    assert lb.conns("lc6") == {"a": 0, "b": 0, "c": 0} and lb.dp.maps.flows6() == {}


def test_a_syn_for_a_tracked_flow_replaces_its_count(lb: Lb6) -> None:
    sport = lb.port_with("lc6", "a", "a")
    lb.send("lc6", sport)
    lb.send("lc6", sport)
    assert lb.conns("lc6") == {"a": 1, "b": 0, "c": 0}


def test_an_evicted_ipv6_flow_releases_its_count(lb: Lb6) -> None:
    from dataplane.maps import ct6_hash, flow_key6

    sets = ct_sets(SIZES)
    by_set: dict[int, list[int]] = {}
    for sport in range(20000, 65536):
        s = ct6_hash(flow_key6(IPv6Address(CLIENT), IPv6Address(VIPS["lc6"]), sport, 80, TCP))
        by_set.setdefault(s & (sets - 1), []).append(sport)
        if len(by_set[s & (sets - 1)]) == CT_WAYS + 3:
            ports = by_set[s & (sets - 1)]
            break
    for sport in ports:
        lb.send("lc6", sport)
    assert lb.counter("ct_evicted") == 3
    assert sum(lb.conns("lc6").values()) == CT_WAYS


def test_a_rescheduled_flow_moves_its_count(lb: Lb6) -> None:
    sport = lb.port_with("lc6", "a", "b")
    assert lb.send("lc6", sport) == "a"
    lb.sync({lb.real("lc6", "a").index: RealState(failed=True)})
    moved = lb.send("lc6", sport, ACK)
    assert moved != "a" and lb.counter("rescheduled") == 1
    assert lb.conns("lc6") == {"a": 0, "b": 0, "c": 0} | {moved: 1}


def test_the_less_loaded_candidate_takes_the_syn(lb: Lb6) -> None:
    sport = lb.port_with("lc6", "a", "c")
    lb.load("lc6", a=5, c=4)
    assert lb.send("lc6", sport) == "c"
    assert lb.counter("lc_second") == 1
    assert lb.conns("lc6") == {"a": 5, "b": 0, "c": 5}
    lb.load("lc6", a=7, c=7)  # a tie keeps A
    assert lb.send("lc6", lb.port_with("lc6", "a", "c", sport + 1)) == "a"


def test_wlc_divides_by_weight(lb: Lb6) -> None:
    # A = c (weight 3) with 5, B = a (weight 1) with 2: 5/3 < 2/1, A stays
    sport = lb.port_with("wlc6", "c", "a")
    lb.load("wlc6", c=5, a=2)
    assert lb.send("wlc6", sport) == "c"
    # A = a (weight 1) with 1, B = c (weight 3) with 2: 2/3 < 1/1, B
    lb.load("wlc6", a=1, c=2)
    assert lb.send("wlc6", lb.port_with("wlc6", "a", "c")) == "c"


def test_a_quiesced_second_candidate_is_never_taken(lb: Lb6) -> None:
    sport = lb.port_with("lc6", "a", "c")
    lb.load("lc6", a=50)
    c = lb.real("lc6", "c")
    lb.dp.maps.set_real(c.index, c.address, MACS[c.address], 2)  # REAL_F_QUIESCED
    assert lb.send("lc6", sport) == "a"


# ---- sh and dh


def test_sh_sends_a_source_to_the_real_its_address_hash_names(lb: Lb6) -> None:
    seen = set()
    for i in range(1, 40):
        client = f"2001:2:9::{i:x}"
        want = lb.slot_real("sh6", addr_hash(IPv6Address(client))).name
        assert {lb.send("sh6", sport, client=client) for sport in (1000, 2000, 3000)} == {want}
        seen.add(want)
    assert seen == {"a", "b", "c"}


def test_dh_sends_every_flow_to_the_destinations_real(lb: Lb6) -> None:
    want = lb.slot_real("dh6", addr_hash(IPv6Address(VIPS["dh6"]))).name
    got = {lb.send("dh6", 1000 + i, client=f"2001:2:9::{i:x}") for i in range(1, 30)}
    assert got == {want}


def test_addr_hash_is_one_murmur_step_per_word() -> None:
    """plan.addr_hash of an IPv4 address is unchanged by the IPv6 extension (what
    every IPv4 router computes) and an IPv6 one folds all four words."""
    from dataplane.plan import HASH_SEED, _final, _step, _words

    v4 = IPv4Address("198.18.9.5")
    assert addr_hash(v4) == _final(_step(HASH_SEED, _words(v4)[0]))
    a, b = IPv6Address("2001:2:9::5"), IPv6Address("2001:2:9:0:1::5")
    assert addr_hash(a) != addr_hash(b)  # differ in the third word only


# ---- persistence by prefix length


def test_clients_of_one_prefix_share_a_template(lb: Lb6) -> None:
    svc = lb.service("sticky6")
    assert svc.pmask6 == 64
    first = lb.send("sticky6", 30000, client="2001:2:9:1::5")
    for i, client in enumerate(("2001:2:9:1::6", "2001:2:9:1:ffff::1", "2001:2:9:1::5")):
        assert lb.send("sticky6", 30001 + i, client=client) == first
    assert lb.counter("persist_hit") == 3
    key = (svc.index, persist_client(IPv6Address("2001:2:9:1::77"), svc))
    assert key[1] == IPv6Address("2001:2:9:1::")
    assert lb.dp.maps.templates6() == {key: lb.real("sticky6", first).index}


def test_the_first_flow_of_a_prefix_takes_its_hash_slot_or_the_less_loaded(lb: Lb6) -> None:
    svc = lb.service("sticky6")

    def candidates(n: int) -> tuple[str, str]:
        h = addr_hash(persist_client(IPv6Address(f"2001:2:9:{n:x}::"), svc))
        return lb.slot_real("sticky6", h).name, lb.slot_real("sticky6", lc_second_hash(h)).name

    n = next(n for n in range(2, 4000) if candidates(n) == ("a", "b"))
    client = f"2001:2:9:{n:x}::1"
    lb.load("sticky6", a=9, b=1)  # wlc: 1/2 < 9/1, B
    assert lb.send("sticky6", 31000, client=client) == "b"
    lb.load("sticky6", a=0, b=99)  # the template decides now, not the counts
    assert lb.send("sticky6", 31001, client=client.replace("::1", "::2")) == "b"
    assert lb.counter("persist_hit") == 1


def test_unset_pmask_is_one_address(lb: Lb6) -> None:
    svc = lb.service("host6")
    assert svc.pmask6 == 128
    lb.send("host6", 32000, client="2001:2:9:2::5")
    lb.send("host6", 32001, client="2001:2:9:2::6")
    assert set(lb.dp.maps.templates6()) == {
        (svc.index, IPv6Address("2001:2:9:2::5")),
        (svc.index, IPv6Address("2001:2:9:2::6")),
    }


def test_a_failed_templates_real_is_replaced(lb: Lb6) -> None:
    first = lb.send("sticky6", 33000, client="2001:2:9:3::5")
    lb.sync({lb.real("sticky6", first).index: RealState(failed=True)})
    now = lb.send("sticky6", 33001, client="2001:2:9:3::6")
    assert now != first and lb.counter("persist_hit") == 0
    assert lb.send("sticky6", 33002, client="2001:2:9:3::7") == now


def test_an_expired_template_is_not_used(lb: Lb6) -> None:
    lb.send("sticky6", 34000, client="2001:2:9:4::5")
    lb.dp.maps.age_persistence(301)
    lb.send("sticky6", 34001, client="2001:2:9:4::6")
    assert lb.counter("persist_hit") == 0


def test_the_ipv4_wlc_service_of_the_same_program(lb: Lb6) -> None:
    res = lb.run(tcp_packet("198.18.9.5", "198.18.0.21", 1234, 80, SYN))
    assert res.retval == XDP_TX and res.data[:6] == MACS[IPv4Address("198.18.1.1")]
    assert lb.dp.maps.real_conns() == {lb.real("wlc4", "a").index: 1}


# ---- service hints (the SYN path's service lookup)


def test_each_ipv6_service_has_its_hint(lb: Lb6) -> None:
    from dataplane.bpf.render import svc_hints
    from dataplane.maps import ServiceKey6, be16, be128, svc_hint_slot6

    hints = lb.dp.bpf[b"service_hints6"]
    for svc in lb.plan.services:
        if svc.vip.version != 6:
            continue
        key = ServiceKey6(be128(svc.vip), be16(svc.port), svc.proto, 0)
        assert hints[hints.Key(svc_hint_slot6(key, svc_hints(SIZES)))].value == svc.index + 1


def test_a_hint_naming_another_service_falls_back_to_the_hash(lb: Lb6) -> None:
    from dataplane.bpf.render import svc_hints
    from dataplane.maps import ServiceKey6, be16, be128, svc_hint_slot6

    sh6, dh6 = lb.service("sh6"), lb.service("dh6")
    key = ServiceKey6(be128(sh6.vip), be16(80), TCP, 0)
    hints = lb.dp.bpf[b"service_hints6"]
    slot = hints.Key(svc_hint_slot6(key, svc_hints(SIZES)))
    hints[slot] = hints.Leaf(dh6.index + 1)  # a slot another service took
    try:
        client = "2001:2:9::77"
        want = lb.slot_real("sh6", addr_hash(IPv6Address(client))).name
        assert lb.send("sh6", 7000, client=client) == want
        assert lb.dp.maps.service_counters(sh6.index).new_flows == 1
        assert lb.dp.maps.service_counters(dh6.index).new_flows == 0
    finally:
        hints[slot] = hints.Leaf(sh6.index + 1)


# ---- with IPv6 NAT (nat6.h): the same counts and templates


def test_an_ipv6_nat_flow_is_counted_until_its_fin_and_persists_by_prefix() -> None:
    from .test_ipv6_nat_packets import CONFIG as NAT6_CONFIG
    from .test_ipv6_nat_packets import MACS as NAT6_MACS
    from .test_ipv6_nat_packets import PRIVATE_MAC, PUBLIC_MAC, nat6_plan, to_vip

    sticky = "scheduler = wlc\n    persistent = 300\n    pmask = 48"
    p = nat6_plan(NAT6_CONFIG.replace("scheduler = wrr", sticky, 1))
    assert {"lc", "persistence", "nat", "ipv6"} <= p.features
    dp = XdpDataplane(p, pin_dir=None)
    try:
        dp.sync(NAT6_MACS)
        dp.configure_nat(
            private_ifindex=1, public_ifindex=1, private_mac=PRIVATE_MAC, public_mac=PUBLIC_MAC
        )
        web = next(s for s in p.services if s.name == "web6")
        assert web.pmask6 == 48
        rips = set()
        for sport in (41000, 41001, 41002):
            out = prog_run(dp.prog_fd, to_vip(sport))
            assert out.retval == 4  # XDP_REDIRECT
            rips.add(out.data[38:54])  # the destination it was rewritten to
        assert len(rips) == 1  # one template for the client's /48
        assert sum(dp.maps.real_conns().get(r.index, 0) for r in web.reals) == 3
        assert dp.maps.global_counters()["persist_hit"] == 2
        for _ in range(2):
            assert prog_run(dp.prog_fd, to_vip(41000, FIN_ACK)).retval == 4
        assert sum(dp.maps.real_conns().get(r.index, 0) for r in web.reals) == 2
        (key,) = dp.maps.templates6()
        assert key == (web.index, IPv6Address("2001:2:9::"))  # 2001:2:9::5 cut to /48
    finally:
        dp.close()


def test_a_recent_template_is_not_rewritten_by_each_new_flow(lb: Lb6) -> None:
    """A new flow of a client whose template already names the chosen real and was
    refreshed less than a second ago leaves it alone (an LRU hash update per SYN
    costs as much as the rest of the path); an older one is refreshed."""
    from dataplane.maps import PersistState

    t = lb.dp.bpf[b"persist6"]

    def last_ns() -> int:
        ((_k, v),) = t.items()
        return PersistState.from_buffer_copy(bytes(v)).last_ns

    first = lb.send("sticky6", 35000, client="2001:2:9:5::1")
    written = last_ns()
    for sport in range(35001, 35005):
        assert lb.send("sticky6", sport, client="2001:2:9:5::2") == first
    assert last_ns() == written  # four hits, no rewrite
    lb.dp.maps.age_persistence(1.5)
    assert lb.send("sticky6", 35010, client="2001:2:9:5::3") == first
    assert last_ns() > written - 1_500_000_000  # refreshed: younger than the aged one
    assert lb.counter("persist_hit") == 5
