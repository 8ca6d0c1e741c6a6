"""The director's rules (runtime/director.py), event by event with explicit ``now``."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from compiler import compile_text
from compiler.emit.ipvsadm import table
from dataplane.plan import plan
from dataplane.reconcile import SORRY_SERVER, desired_state
from runtime.director import (
    OUT,
    Director,
    Health,
    Placement,
    Verdict,
    overrides,
    with_sorry_servers,
    xdp_index,
    xdp_states,
)

pytestmark = pytest.mark.unit

BASE = """\
network = direct
{globals}
virtual web {{
    active = 1
    address = 198.18.0.10 eth0:1
    port = 80
    scheduler = wrr
    timeout = 1
    reentry = 2
    {web}
    server a {{
        address = 198.18.1.1
        active = 1
        weight = {wa}
    }}
    server b {{
        address = 198.18.1.2
        active = 1
        weight = 2
    }}
    server off {{
        address = 198.18.1.9
        active = 0
    }}
}}

virtual dns {{
    active = 1
    address = 198.18.0.10 eth0:1
    port = 53
    protocol = udp
    quiesce_server = 1
    send = "x"
    expect = "y"
    server a {{
        address = 198.18.1.1
        active = 1
    }}
}}
"""


def cfg(web: str = "", globals_: str = "", wa: int = 1):
    r = compile_text("lvs.cf", BASE.format(web=web, globals=globals_, wa=wa))
    assert r.ok, r.errors
    return r.config


def test_unchecked_servers_are_out_and_inactive_ones_unmanaged() -> None:
    d = Director(cfg())
    assert set(d.managed()) == {("web", "a"), ("web", "b"), ("dns", "a")}
    assert all(p == OUT for p in d.desired().placements.values())


def test_up_puts_a_server_in_with_its_configured_weight_then_down_takes_it_out() -> None:
    d = Director(cfg())
    assert d.server_event("web", "b", True, None, "ok", now=1.0)
    assert d.placement(("web", "b")) == Placement(True, 2)
    assert not d.server_event("web", "b", True, None, "ok", now=2.0)  # no change
    assert d.server_event("web", "b", False, None, "connect refused", now=3.0)
    assert d.placement(("web", "b")) == OUT
    assert d.states[("web", "b")].since == 3.0
    assert d.states[("web", "b")].reason == "connect refused"


def test_event_weight_overrides_the_configured_one() -> None:
    d = Director(cfg())
    d.server_event("web", "b", True, 1, "slow start", now=1.0)
    assert d.placement(("web", "b")) == Placement(True, 1)
    assert d.server_event("web", "b", True, None, "ok", now=2.0)
    assert d.placement(("web", "b")) == Placement(True, 2)


def test_quiesce_keeps_a_failed_server_at_weight_zero() -> None:
    d = Director(cfg())
    d.server_event("dns", "a", True, None, "ok", now=1.0)
    d.server_event("dns", "a", False, None, "timeout", now=2.0)
    assert d.placement(("dns", "a")) == Placement(True, 0)
    ov = overrides(d.desired())
    assert ("dns", "a") in ov.quiesced and ("dns", "a") not in ov.down


def test_a_server_that_never_passed_a_check_is_not_quiesced_but_absent() -> None:
    d = Director(cfg())
    d.server_event("dns", "a", False, None, "timeout", now=1.0)
    assert d.placement(("dns", "a")) == OUT


def test_an_adopted_server_that_fails_is_quiesced() -> None:
    d = Director(cfg(), adopted={("dns", "a"): Placement(True, 1)})
    d.server_event("dns", "a", False, None, "timeout", now=1.0)
    assert d.placement(("dns", "a")) == Placement(True, 0)


def test_an_adopted_server_keeps_its_weight_while_slow_start_climbs_below_it() -> None:
    d = Director(cfg(wa=8), adopted={("web", "a"): Placement(True, 8)})
    assert not d.server_event("web", "a", True, 1, "first good check, entered", now=1.0)
    assert d.placement(("web", "a")) == Placement(True, 8)
    assert not d.server_event("web", "a", True, 4, "slow start: weight 4", now=2.0)
    d.server_event("web", "a", True, None, "slow start: weight 8", now=3.0)
    assert d.states[("web", "a")].floor is None  # caught up: load figures rule again
    assert d.server_event("web", "a", True, 3, "load 2.5: weight 3", now=4.0)
    assert d.placement(("web", "a")) == Placement(True, 3)


def test_a_server_that_failed_after_adoption_slow_starts_normally() -> None:
    d = Director(cfg(wa=8), adopted={("web", "a"): Placement(True, 8)})
    d.server_event("web", "a", False, None, "refused", now=1.0)
    d.server_event("web", "a", True, 1, "re-entered", now=2.0)
    assert d.placement(("web", "a")) == Placement(True, 1)


def test_events_for_unknown_servers_are_ignored() -> None:
    d = Director(cfg())
    assert not d.server_event("web", "off", True, None, "ok", now=1.0)
    assert not d.server_event("gone", "x", True, None, "ok", now=1.0)


def test_adopted_placement_holds_until_the_first_check() -> None:
    d = Director(cfg(), adopted={("web", "a"): Placement(True, 1)})
    assert d.placement(("web", "a")) == Placement(True, 1)
    assert d.states[("web", "a")].health is Health.UNKNOWN
    d.server_event("web", "a", False, None, "refused", now=1.0)
    assert d.placement(("web", "a")) == OUT


SORRY = "sorry_server = 198.18.1.50"


def test_sorry_server_in_while_no_server_is_live_out_when_one_returns() -> None:
    d = Director(cfg(web=SORRY))
    assert d.sorry() == {"web"}
    d.server_event("web", "a", True, None, "ok", now=1.0)
    assert d.sorry() == frozenset()
    d.server_event("web", "a", False, None, "refused", now=2.0)
    assert d.sorry() == {"web"}


def test_a_quiesced_server_does_not_count_as_live_for_the_sorry_server() -> None:
    d = Director(cfg(web=SORRY + "\n    quiesce_server = 1"))
    d.server_event("web", "a", True, None, "ok", now=1.0)
    d.server_event("web", "a", False, None, "refused", now=2.0)
    assert d.placement(("web", "a")) == Placement(True, 0)
    assert d.sorry() == {"web"}


def test_overrides_give_the_ipvs_table_piranha_would_have() -> None:
    d = Director(cfg(web=SORRY))
    d.server_event("web", "b", True, None, "ok", now=1.0)
    d.server_event("dns", "a", True, None, "ok", now=1.0)
    state = desired_state(d.config, overrides(d.desired()))
    web = next(s for s in state.services if s.port == 80)
    assert [(str(x.address), x.weight) for x in web.destinations] == [("198.18.1.2", 2)]
    d.server_event("web", "b", False, None, "refused", now=2.0)
    state = desired_state(d.config, overrides(d.desired()))
    web = next(s for s in state.services if s.port == 80)
    assert [(str(x.address), x.weight) for x in web.destinations] == [("198.18.1.50", 1)]


def test_hard_shutdown_removes_everything() -> None:
    d = Director(cfg())
    d.server_event("web", "a", True, None, "ok", now=1.0)
    assert d.checker_crashed("web", "a", "boom", now=2.0) is Verdict.SHUTDOWN
    assert d.desired().config.virtuals == ()
    assert table(d.desired().config) == ()
    assert not d.server_event("web", "b", True, None, "ok", now=3.0)


def test_without_hard_shutdown_a_crashed_checker_freezes_its_server() -> None:
    d = Director(cfg(globals_="hard_shutdown = 0"))
    d.server_event("web", "a", True, None, "ok", now=1.0)
    assert d.checker_crashed("web", "a", "boom", now=2.0) is Verdict.FROZEN
    assert d.placement(("web", "a")) == Placement(True, 1)
    assert not d.server_event("web", "a", False, None, "refused", now=3.0)
    assert d.placement(("web", "a")) == Placement(True, 1)
    assert d.states[("web", "a")].crashed


def test_reload_keeps_state_of_unchanged_servers_and_applies_new_weights() -> None:
    d = Director(cfg())
    for k in d.managed():
        d.server_event(*k, True, None, "ok", now=1.0)
    d.reload(cfg(wa=5))
    assert d.placement(("web", "a")) == Placement(True, 5)  # weight change applies
    assert d.placement(("web", "b")) == Placement(True, 2)
    assert d.placement(("dns", "a")) == Placement(True, 1)


def test_reload_restarts_servers_whose_checks_or_address_changed() -> None:
    d = Director(cfg())
    for k in d.managed():
        d.server_event(*k, True, None, "ok", now=1.0)
    changed = cfg(web='send = "HEAD / HTTP/1.0\\r\\n\\r\\n"\n    expect = "HTTP"')
    d.reload(changed)
    assert d.states[("web", "a")].health is Health.UNKNOWN
    assert d.placement(("web", "a")) == OUT
    assert d.placement(("dns", "a")) == Placement(True, 1)


def test_reload_drops_removed_servers_and_adds_new_ones_unknown() -> None:
    d = Director(cfg())
    for k in d.managed():
        d.server_event(*k, True, None, "ok", now=1.0)
    text = BASE.format(web="", globals="", wa=1).replace("virtual dns", "virtual dns2")
    new = compile_text("lvs.cf", text).config
    d.reload(new)
    assert ("dns", "a") not in d.states
    assert d.states[("dns2", "a")].health is Health.UNKNOWN
    assert d.placement(("web", "a")) == Placement(True, 1)


def test_xdp_states_follow_placements_and_the_sorry_server() -> None:
    d = Director(cfg(web=SORRY))
    eff = with_sorry_servers(d.config)
    p = plan(eff)
    index = xdp_index(d.config, p)
    assert set(index) == {("web", "a"), ("web", "b"), ("web", SORRY_SERVER), ("dns", "a")}
    sorry_real = next(
        r for s in p.services for r in s.reals if r.index == index[("web", SORRY_SERVER)]
    )
    assert sorry_real.address == IPv4Address("198.18.1.50") and sorry_real.port == 80
    st = xdp_states(d.desired(), p)
    assert st[index[("web", SORRY_SERVER)]].failed is False
    assert st[index[("web", "a")]].failed is True
    d.server_event("web", "a", True, 7, "ok", now=1.0)
    st = xdp_states(d.desired(), p)
    assert st[index[("web", "a")]] == type(st[index[("web", "a")]])(False, 7)
    assert st[index[("web", SORRY_SERVER)]].failed is True
    d.server_event("dns", "a", True, None, "ok", now=1.0)
    d.server_event("dns", "a", False, None, "bad", now=2.0)
    assert xdp_states(d.desired(), p)[index[("dns", "a")]].weight == 0


def test_xdp_index_is_memoised_for_the_same_config_and_plan_only() -> None:
    """The daemon asks on every apply; the memo answers for the very same objects, and
    a reloaded config (a new object) gets a fresh index."""
    d = Director(cfg(web=SORRY))
    p = plan(with_sorry_servers(d.config))
    first = xdp_index(d.config, p)
    assert xdp_index(d.config, p) is first
    with pytest.raises(TypeError):
        first[("web", "a")] = 99  # read-only: a caller cannot spoil the memo
    other = Director(cfg(web=SORRY)).config
    again = xdp_index(other, p)
    assert again is not first and dict(again) == dict(first)
