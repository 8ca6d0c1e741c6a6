"""The director's change log: a decision says which servers' placements changed since
an earlier one, so that a backend can apply only those (runtime/director.py
``ChangeLog``, ``Desired.changed_since``; ``XdpLayout`` for the XDP real indexes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compiler import compile_text
from dataplane.plan import plan
from dataplane.reconcile import SORRY_SERVER
from runtime import director as director_module
from runtime.director import (
    Director,
    Placement,
    with_sorry_servers,
    xdp_layout,
    xdp_states,
)

pytestmark = pytest.mark.unit

CONFIG = """\
network = direct
virtual web {
    active = 1
    address = 198.18.0.10 eth0:1
    port = 80
    scheduler = wrr
    sorry_server = 198.18.1.50
    server a {
        address = 198.18.1.1
        active = 1
        weight = 3
    }
    server b {
        address = 198.18.1.2
        active = 1
    }
    server b2 {
        address = 198.18.1.2
        active = 1
        weight = 5
    }
}
virtual dns {
    active = 1
    address = 198.18.0.10 eth0:1
    port = 53
    protocol = udp
    quiesce_server = 1
    sorry_server = 198.18.1.51
    send = "x"
    expect = "y"
    server a {
        address = 198.18.1.1
        active = 1
    }
    server c {
        address = 198.18.1.3
        active = 1
        weight = 2
    }
}
"""


def config():
    r = compile_text("lvs.cf", CONFIG)
    assert r.ok, r.errors
    return r.config


def test_a_decision_names_what_changed_since_an_earlier_one() -> None:
    d = Director(config())
    first = d.desired()
    assert first.changed_since(None) is None  # nothing applied yet: take it whole
    assert first.changed_since(first) == set()
    d.server_event("web", "a", True, None, "ok", now=1.0)
    second = d.desired()
    # the server, and web's sorry server going out (web has a live server now)
    assert second.changed_since(first) == {("web", "a"), ("web", SORRY_SERVER)}
    assert first.placements[("web", "a")] == Placement(False)  # a copy: unchanged
    d.server_event("web", "a", True, None, "still ok", now=2.0)  # no move
    d.server_event("dns", "c", True, None, "ok", now=2.0)
    third = d.desired()
    assert third.changed_since(second) == {("dns", "c"), ("dns", SORRY_SERVER)}
    assert third.changed_since(first) == {
        ("web", "a"),
        ("web", SORRY_SERVER),
        ("dns", "c"),
        ("dns", SORRY_SERVER),
    }
    assert second.changed_since(third) is None  # backwards: unknown


def test_a_reload_or_a_shutdown_makes_the_next_decision_whole() -> None:
    d = Director(config())
    before = d.desired()
    d.reload(config())
    assert d.desired().changed_since(before) is None
    before = d.desired()
    d.checker_crashed("web", "a", "boom", now=1.0)  # hard_shutdown = 1 (default)
    assert d.desired().changed_since(before) is None


def test_a_long_log_starts_over(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(director_module, "_LOG_MAX", 3)
    d = Director(config())
    before = d.desired()
    up = False
    for t in range(40):
        up = not up
        d.server_event("dns", "c", up, None, "flap", now=float(t))
    assert d.desired().changed_since(before) is None  # a new log: backends start over
    again = d.desired()
    d.server_event("dns", "c", not up, None, "flap", now=99.0)
    assert d.desired().changed_since(again) == {("dns", "c"), ("dns", SORRY_SERVER)}


KEYS = [("web", "a"), ("web", "b"), ("web", "b2"), ("dns", "a"), ("dns", "c")]
events = st.lists(
    st.tuples(
        st.sampled_from(KEYS),
        st.booleans(),
        st.sampled_from([None, None, 0, 1, 4]),
    ),
    max_size=30,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(events, min_size=1, max_size=6), st.booleans())
def test_changes_cover_every_placement_and_sorry_move(batches, adopt: bool) -> None:
    """Random health events in batches: between any two decisions, every server
    whose placement differs and every sorry server that went in or out is named,
    and the decision equals the director's answers computed from scratch."""
    cfg = config()
    adopted = {("web", "b"): Placement(True, 1), ("dns", "a"): Placement(True, 1)} if adopt else {}
    d = Director(cfg, adopted)
    decisions = [d.desired()]
    now = 0.0
    for batch in batches:
        for key, up, weight in batch:
            now += 1
            d.server_event(*key, up, weight, "event", now)
        decisions.append(d.desired())
        latest = decisions[-1]
        assert dict(latest.placements) == {k: d.placement(k) for k in d.managed()}
        live = {k[0] for k in d.managed() if d.placement(k).live}
        assert latest.sorry == {"web", "dns"} - live
    for i, old in enumerate(decisions):
        for new in decisions[i:]:
            named = new.changed_since(old)
            moved = {k for k in new.placements if new.placements[k] != old.placements[k]}
            moved |= {(v, SORRY_SERVER) for v in new.sorry ^ old.sorry}
            assert moved <= named


def test_xdp_layout_maps_servers_to_reals_and_shared_reals_to_their_first_server() -> None:
    cfg = config()
    p = plan(with_sorry_servers(cfg))
    layout = xdp_layout(cfg, p)
    assert xdp_layout(cfg, p) is layout  # memoised for the same pair
    # b and b2 are one real (same address and port in one service): b's placement counts
    assert layout.index[("web", "b")] == layout.index[("web", "b2")]
    assert layout.owner[layout.index[("web", "b2")]] == ("web", "b")
    assert layout.touched([("web", "b2"), ("dns", SORRY_SERVER), ("gone", "x")]) == {
        layout.index[("web", "b")],
        layout.index[("dns", SORRY_SERVER)],
    }
    d = Director(cfg)
    d.server_event("web", "b2", True, None, "ok", now=1.0)  # not the owner: no effect
    d.server_event("dns", "a", True, 7, "ok", now=1.0)
    desired = d.desired()
    states = xdp_states(desired, p)
    assert states[layout.index[("web", "b")]].failed
    assert states[layout.index[("dns", "a")]].weight == 7
    assert states[layout.index[("web", SORRY_SERVER)]].failed  # b2 is live for the director
    assert states[layout.index[("dns", SORRY_SERVER)]].failed
    assert states[layout.index[("dns", "c")]].failed  # unchecked: out
    assert all(layout.state(desired, i) == st for i, st in states.items())


def test_xdp_layout_finds_nat_servers_by_their_mapped_port() -> None:
    """network = nat maps the VIP's port to each server's (80 -> 8080; none: 80): the
    layout must look them up by that port, or their health would never reach the
    maps."""
    text = """network = nat
nat_router = 198.18.33.254 eth1:1
virtual web {
    active = 1
    address = 198.18.32.100 eth0:1
    port = 80
    server a {
        address = 198.18.33.11
        active = 1
        port = 8080
    }
    server b {
        address = 198.18.33.12
        active = 1
    }
}
"""
    r = compile_text("nat.cf", text)
    assert r.ok, r.errors
    p = plan(with_sorry_servers(r.config))
    layout = xdp_layout(r.config, p)
    by_key = {real.key: real.index for s in p.services for real in s.reals}
    assert dict(layout.index) == {
        ("web", "a"): by_key["198.18.33.11:8080"],
        ("web", "b"): by_key["198.18.33.12:80"],
    }
    d = Director(r.config)
    d.server_event("web", "a", True, None, "ok", now=1.0)
    states = xdp_states(d.desired(), p)
    assert not states[layout.index[("web", "a")]].failed
    assert states[layout.index[("web", "b")]].failed
