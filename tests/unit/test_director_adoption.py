"""Adoption: what a dataplane already holds, read back as director placements, and the
director's first decision after a restart leaves that table exactly as it was."""

from __future__ import annotations

import pytest

from compiler import compile_text
from dataplane.reconcile import IPVSState, desired_state, reconcile
from runtime.backends import ipvs_dest_of, ipvs_placements
from runtime.director import Director, Placement, overrides, servers

pytestmark = pytest.mark.unit

CONFIG = """\
network = direct
virtual web {
    active = 1
    address = 198.18.0.10 eth0:1
    port = 80
    quiesce_server = 1
    server a {
        address = 198.18.1.1
        active = 1
        weight = 3
    }
    server b {
        address = 198.18.1.2
        active = 1
        port = 8080
    }
}
virtual marked {
    active = 1
    address = 198.18.0.11 eth0:2
    fwmark = 7
    port = 443
    sorry_server = 198.18.1.50
    server c {
        address = 198.18.1.3
        active = 1
    }
}
"""


def config():
    r = compile_text("lvs.cf", CONFIG)
    assert r.ok, r.errors
    return r.config


def test_an_ipvs_table_reads_back_as_the_placements_that_made_it() -> None:
    cfg = config()
    before = Director(cfg)
    before.server_event("web", "a", True, 2, "slow start", now=1.0)
    before.server_event("web", "b", True, None, "ok", now=1.0)
    before.server_event("web", "b", False, None, "refused", now=2.0)  # quiesced
    kernel = desired_state(cfg, overrides(before.desired()))
    adopted = ipvs_placements(cfg, kernel)
    # b runs on port 8080 but direct routing keeps the service's port: still found
    assert adopted == {("web", "a"): Placement(True, 2), ("web", "b"): Placement(True, 0)}
    keys = {(vs.name, rs.name): ipvs_dest_of(cfg, vs, rs) for vs, rs in servers(cfg)}
    assert ipvs_placements(cfg, kernel, keys) == adopted
    # a restarted daemon's first sync changes nothing (c is absent, the sorry server in)
    after = Director(cfg, adopted)
    assert reconcile(desired_state(cfg, overrides(after.desired())), kernel) == ()


def test_an_empty_table_adopts_nothing() -> None:
    assert ipvs_placements(config(), IPVSState()) == {}
