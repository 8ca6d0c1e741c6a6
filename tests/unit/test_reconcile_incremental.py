"""The incremental diff (``SyncedTable``) gives exactly what ``reconcile`` gives.

A daemon keeps the table it last applied and diffs each new desired state against
it, visiting only services that changed; these properties check that for random
sequences of desired states — small edits that reuse the unchanged ``Service``
objects (the fast, positional path), equal copies, reorders, additions and removals
(the keyed path) — every diff is ``reconcile(desired, observed)`` operation for
operation, where ``observed`` is the table as the kernel would report it.
"""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler.emit.ipvsadm import Destination, Service
from compiler.model import Network, Protocol
from dataplane.reconcile import (
    AddDest,
    AddService,
    DeleteService,
    DesiredTable,
    EditDest,
    IPVSState,
    Overrides,
    SyncDaemon,
    SyncedTable,
    SyncState,
    Timeouts,
    desired_state,
    kernel_form,
    reconcile,
    simulate,
)

pytestmark = pytest.mark.unit

VIPS = [IPv4Address("198.18.0.10"), IPv4Address("198.18.0.11")]
RIPS = [IPv4Address(f"198.19.0.{i}") for i in range(1, 6)]

dests = st.lists(
    st.builds(
        Destination,
        address=st.sampled_from(RIPS),
        port=st.sampled_from([80, 8080]),
        forwarding=st.sampled_from(list(Network)),
        weight=st.integers(0, 3),
    ),
    max_size=4,
    unique_by=lambda d: (d.address, d.port),
).map(tuple)


@st.composite
def services(draw) -> Service:
    fwmark = draw(st.sampled_from([0, 0, 0, 1, 2]))
    persistent = draw(st.sampled_from([0, 300]))
    return Service(
        fwmark=fwmark,
        family=4,
        protocol=Protocol.TCP if fwmark else draw(st.sampled_from(list(Protocol))),
        address=None if fwmark else draw(st.sampled_from(VIPS)),
        port=0 if fwmark else draw(st.sampled_from([80, 443])),
        scheduler=draw(st.sampled_from(["rr", "wlc"])),
        persistent=persistent,
        pmask=draw(st.sampled_from([None, IPv4Address("255.255.255.0")])) if persistent else None,
        destinations=draw(dests),
        virtuals=draw(st.sampled_from([(), ("web",), ("web", "www")])),
    )


def key(s: Service) -> tuple:
    return (s.fwmark, s.protocol, s.address, s.port)


tables = st.lists(services(), max_size=6, unique_by=key).map(tuple)
timeouts = st.none() | st.builds(
    Timeouts, st.sampled_from([0, 900]), st.sampled_from([0, 120]), st.sampled_from([0, 300])
)
daemons = st.none() | st.sampled_from(
    [(), (SyncDaemon(SyncState.MASTER, "eth0", 1),), (SyncDaemon(SyncState.BACKUP, "eth1", 0),)]
)


@st.composite
def next_table(draw, prev: tuple[Service, ...]) -> tuple[Service, ...]:
    """A desired table after ``prev``: mostly small edits that keep the other objects."""
    kind = draw(st.sampled_from(["weight", "dests", "sched", "copy", "same", "fresh", "reorder"]))
    out = list(prev)
    if kind == "fresh" or not prev:
        return draw(tables)
    i = draw(st.integers(0, len(prev) - 1))
    svc = prev[i]
    if kind == "weight" and svc.destinations:
        j = draw(st.integers(0, len(svc.destinations) - 1))
        d = svc.destinations[j]
        ds = list(svc.destinations)
        ds[j] = replace(d, weight=draw(st.integers(0, 3)))
        out[i] = replace(svc, destinations=tuple(ds))
    elif kind == "dests":
        out[i] = replace(svc, destinations=draw(dests))
    elif kind == "sched":
        out[i] = replace(svc, scheduler=draw(st.sampled_from(["rr", "wlc", "sh"])))
    elif kind == "copy":  # equal values, new objects: no operation
        out = [replace(s) for s in prev]
    elif kind == "reorder":
        out = draw(st.permutations(prev))
    return tuple(out)


def kernel(state: IPVSState) -> IPVSState:
    return replace(state, services=tuple(kernel_form(s) for s in state.services))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.data())
def test_incremental_diff_is_reconcile(data) -> None:
    observed = kernel(IPVSState(data.draw(tables), data.draw(timeouts), data.draw(daemons)))
    table = SyncedTable(observed)
    prev: tuple[Service, ...] = data.draw(tables)
    for _ in range(data.draw(st.integers(1, 6))):
        desired = IPVSState(prev, data.draw(timeouts), data.draw(daemons))
        plan = table.diff(desired)
        expected = reconcile(desired, observed)
        assert plan.ops == expected
        observed = kernel(simulate(observed, plan.ops))
        table.commit(plan)
        assert reconcile(desired, observed) == ()
        assert reconcile(observed, table.state) == ()
        assert table.diff(desired).ops == ()
        prev = data.draw(next_table(prev))


def test_one_weight_change_in_a_large_table_is_one_edit() -> None:
    """10,000 services: the changed one alone is diffed, with exactly reconcile's op."""
    svcs = tuple(
        Service(
            fwmark=0,
            family=4,
            protocol=Protocol.TCP,
            address=IPv4Address(int(VIPS[0]) + i // 4),
            port=80 + i % 4,
            scheduler="wlc",
            persistent=0,
            pmask=None,
            destinations=tuple(
                Destination(IPv4Address(int(RIPS[0]) + 10 * i + j), 80, Network.NAT, 1)
                for j in range(3)
            ),
            virtuals=(),
        )
        for i in range(10_000)
    )
    table = SyncedTable(IPVSState())
    first = table.diff(IPVSState(svcs))
    assert len(first.ops) == 40_000
    assert isinstance(first.ops[0], AddService) and isinstance(first.ops[-1], AddDest)
    table.commit(first)
    changed = replace(svcs[5000].destinations[1], weight=7)
    new = replace(svcs[5000], destinations=(svcs[5000].destinations[0], changed))
    desired = IPVSState((*svcs[:5000], new, *svcs[5001:]))
    plan = table.diff(desired)
    assert plan.keys is None  # the positional path
    assert [k for k, _ in plan.changed] == [
        ("addr", 4, "tcp", IPv4Address(int(VIPS[0]) + 1250), 80)
    ]
    dropped = svcs[5000].destinations[2]
    assert [str(op) for op in plan.ops] == [
        f"-d -t 198.18.4.236:80 -r {dropped.address}:80",
        "-e -t 198.18.4.236:80 -r 198.19.195.82:80 -m -w 7",
    ]
    assert plan.ops == reconcile(desired, IPVSState(svcs))
    table.commit(plan)
    removed = IPVSState(desired.services[1:])
    plan = table.diff(removed)
    assert plan.keys is not None  # keyed: a service left
    assert plan.ops == (DeleteService(replace(svcs[0], destinations=())),)
    table.commit(plan)
    assert table.diff(removed).ops == ()
    assert not any(isinstance(op, EditDest) for op in table.diff(IPVSState()).ops)


# --------------------------------------------------------------------------- DesiredTable


def _config():
    from tests.unit.test_reconcile import cfg, server, virtual

    body = (
        virtual(extra=" sorry_server = 198.19.0.99\n")
        # a second virtual on the same VIP and port: one IPVS service, servers merged
        + virtual(
            "web2",
            servers=server("c", "198.19.0.13") + server("a", "198.19.0.11", "  weight = 5\n"),
        )
        + virtual("dns", "198.18.0.20", " protocol = udp\n port = 53\n")
        + virtual("mail", "198.18.0.21", " port = 25\n quiesce_server = 1\n")
        + "virtual http {\n active = 1\n address = 198.18.0.30 eth0:1\n fwmark = 80\n"
        + server("a", "198.19.0.31")
        + server("b", "198.19.0.32")
        + "}\n"
        + virtual("off", "198.18.0.40").replace("active = 1", "active = 0", 1)
    )
    return cfg(body)


PAIRS = [
    (v, s)
    for v in ("web", "web2", "dns", "mail", "http", "off", "gone")
    for s in ("a", "b", "c", "x")
]
overrides = st.builds(
    Overrides,
    down=st.frozensets(st.sampled_from(PAIRS), max_size=4),
    quiesced=st.frozensets(st.sampled_from(PAIRS), max_size=3),
    weights=st.dictionaries(st.sampled_from(PAIRS), st.integers(0, 9), max_size=3),
    sorry=st.frozensets(st.sampled_from(["web", "web2", "http", "dns"]), max_size=2),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.lists(overrides, min_size=1, max_size=5), st.sampled_from(list(SyncState)))
def test_desired_table_is_desired_state(sequence, role) -> None:
    config = _config()
    table = DesiredTable(config, role=role)
    before = table.state(Overrides())
    assert before == desired_state(config, role=role)
    synced = SyncedTable(IPVSState())
    observed = IPVSState()
    synced.commit(synced.diff(before))
    observed = kernel(simulate(observed, reconcile(before, observed)))
    prev = Overrides()
    for ov in sequence:
        after = table.state(ov)
        assert after == desired_state(config, ov, role)
        # the basis hint DesiredTable leaves lets SyncedTable skip the unchanged services
        plan = synced.diff(after)
        assert plan.ops == reconcile(after, observed)
        synced.commit(plan)
        observed = kernel(simulate(observed, plan.ops))
        # a service none of whose virtuals had an override change is the same object
        names = {v for v, _ in (prev.down ^ ov.down) | (prev.quiesced ^ ov.quiesced)}
        names |= {v for (v, _), _w in set(prev.weights.items()) ^ set(ov.weights.items())}
        names |= prev.sorry ^ ov.sorry
        for old, new in zip(before.services, after.services, strict=True):
            if not names.intersection(old.virtuals):
                assert new is old
        before, prev = after, ov


def test_desired_table_rebuilds_only_the_touched_service() -> None:
    config = _config()
    table = DesiredTable(config)
    start = table.state(Overrides())
    down = table.state(Overrides(down=frozenset({("dns", "b")})))
    changed = [
        i for i, (a, b) in enumerate(zip(start.services, down.services, strict=True)) if a is not b
    ]
    assert [down.services[i].virtuals for i in changed] == [("dns",)]
    assert [str(d.address) for d in down.services[changed[0]].destinations] == ["198.19.0.11"]
    synced = SyncedTable(IPVSState())
    synced.commit(synced.diff(start))
    assert down.basis == (start.services, tuple(changed))
    assert [str(op) for op in synced.diff(down).ops] == ["-d -u 198.18.0.20:53 -r 198.19.0.12:53"]
