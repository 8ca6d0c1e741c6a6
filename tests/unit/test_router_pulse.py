"""runtime/router.py's pure parts under pulse: the sync daemon's role as the IPVS
backend asks the kernel for it, and which reloads pulse refuses (with the line)."""

from __future__ import annotations

import pytest

from compiler import compile_source
from compiler.model import Dialect
from compiler.source import Source
from dataplane.reconcile import SyncDaemon, SyncState, desired_state
from runtime.backends import sync_daemons, sync_state, with_sync_role
from runtime.router import pulse_reload_refusal, serves_without_vips

pytestmark = pytest.mark.unit

HEAD = (
    "primary = 198.18.0.1\nbackup = 198.18.0.2\nbackup_active = 1\nheartbeat = 1\n"
    "keepalive = 1\ndeadtime = 3\nnetwork = direct\n"
)
SYNC = "syncdaemon = 1\nsyncd_iface = eth1\nsyncd_id = 263\n"


def web(address: str = "198.18.0.100 eth0:1", name: str = "web", port: int = 80) -> str:
    return (
        f"virtual {name} {{\n    active = 1\n    address = {address}\n    port = {port}\n"
        "    protocol = tcp\n    scheduler = wlc\n    server rs1 {\n"
        "        address = 198.18.0.21\n        active = 1\n        weight = 1\n    }\n}\n"
    )


def cfg(text: str):
    r = compile_source(Source("lvs.cf", text), Dialect.EXTENDED)
    assert r.ok, [d.message for d in r.diagnostics]
    return r.config


def test_pulse_roles_map_to_the_kernel_states() -> None:
    assert sync_state("master") is SyncState.MASTER
    assert sync_state("backup") is SyncState.BACKUP
    with pytest.raises(KeyError):
        sync_state("active")


def test_sync_daemons_follow_the_config_and_the_role() -> None:
    c = cfg(HEAD + SYNC + web())
    assert sync_daemons(c, SyncState.BACKUP) == (SyncDaemon(SyncState.BACKUP, "eth1", 7),)
    assert sync_daemons(c, SyncState.MASTER) == (SyncDaemon(SyncState.MASTER, "eth1", 7),)
    assert sync_daemons(cfg(HEAD + web()), SyncState.MASTER) is None  # not managed


def test_with_sync_role_turns_the_daemon_and_keeps_the_services() -> None:
    c = cfg(HEAD + SYNC + web())
    master = desired_state(c)
    backup = with_sync_role(master, SyncState.BACKUP)
    assert backup.daemons == (SyncDaemon(SyncState.BACKUP, "eth1", 7),)
    assert backup.services is master.services  # the incremental diff sees no change
    assert backup == desired_state(c, role=SyncState.BACKUP)
    assert with_sync_role(master, SyncState.MASTER) is master
    plain = desired_state(cfg(HEAD + web()))
    assert with_sync_role(plain, SyncState.BACKUP) is plain  # syncdaemon = 0


def test_a_reload_pulse_can_take() -> None:
    old = cfg(HEAD + 'active_cmd = "/bin/true"\n' + web())
    assert pulse_reload_refusal(old, old) is None
    new = cfg(HEAD + 'active_cmd = "/bin/echo up"\n' + web() + web(name="web2", port=443))
    assert pulse_reload_refusal(old, new) is None  # new command text, a VIP already held


@pytest.mark.parametrize(
    ("before", "after", "line", "what"),
    [
        ("keepalive = 1", "keepalive = 0.5", 5, "`keepalive`"),
        ("deadtime = 3", "deadtime = 10", 6, "`deadtime`"),
        ("backup = 198.18.0.2", "backup = 198.18.0.3", 2, "`backup`"),
        ("backup_active = 1", "backup_active = 1\nheartbeat_port = 600", 4, "`heartbeat_port`"),
        ("network = direct", "network = direct\nmonitor_links = 1", 8, "`monitor_links`"),
        ("network = direct", "network = direct\nactive_cmd = /bin/true", 8, "`active_cmd`"),
        ("eth0:1", "eth1:1", 10, "the VIPs pulse holds (198.18.0.100)"),
        ("198.18.0.100 eth0:1", "198.18.0.101 eth0:1", 10, "(198.18.0.101)"),
    ],
)
def test_a_reload_changing_what_pulse_fixed_is_refused_at_its_line(
    before: str, after: str, line: int, what: str
) -> None:
    old = cfg(HEAD + web())
    new = cfg((HEAD + web()).replace(before, after))
    refusal = pulse_reload_refusal(old, new)
    assert refusal is not None
    assert refusal.startswith(f"lvs.cf:{line}:"), refusal
    assert what in refusal and "cannot be changed by a reload while pulse runs" in refusal
    assert "restart the router" in refusal


def test_the_first_arps_go_before_the_vips_only_where_the_dataplane_serves_without_them() -> None:
    """pulse's announce_early: XDP, hot standby, a running director, no NAT — the
    program forwards the VIPs' traffic before the stack sees it. Everything else
    keeps piranha's order (VIPs, director, then ARPs)."""
    dr = cfg(HEAD + web())
    tun = cfg(HEAD.replace("network = direct", "network = tunnel") + web())
    nat = cfg(
        HEAD.replace("network = direct", "network = nat")
        + "nat_router = 198.19.0.1 eth1:1\n"
        + web()
    )
    assert serves_without_vips(dr, "xdp", "hot", True)
    assert serves_without_vips(tun, "xdp", "hot", True)
    assert not serves_without_vips(nat, "xdp", "hot", True)  # nat_router first
    assert not serves_without_vips(dr, "ipvs", "hot", True)  # LOCAL_IN needs the VIP
    assert not serves_without_vips(dr, "xdp", "cold", True)  # the director must start
    assert not serves_without_vips(dr, "xdp", "hot", False)  # after a hard_shutdown
    assert not serves_without_vips(None, "xdp", "hot", True)
