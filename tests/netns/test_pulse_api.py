"""The Pulse API the daemon uses, in-process inside a namespace: callbacks in the
right order, a failing director start treated as piranha's CHILDFAIL (§3.6),
active_cmd/inactive_cmd run without a shell, sync-daemon roles, status(), stop()."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from compiler import compile_file
from runtime.pulse import garp
from runtime.pulse.heartbeat import Pulse, PulseExit, Status
from runtime.pulse.vip import Netlink, VipSpec
from tests.netns.test_pulse_wire import PUB, VIP, config, has_vip, mac_of, pair, partner
from tests.netns.topo import Capture, Topology, inside

pytestmark = pytest.mark.netns


def test_callbacks_childfail_commands_sync_roles_and_status(
    topology: Topology, tmp_path: Path
) -> None:
    peer, router = pair(topology)
    marks = tmp_path / "marks"
    marks.mkdir()
    cf = config(tmp_path / "lvs.cf", keepalive=0.1, deadtime=0.5)
    text = cf.read_text()
    text += f'active_cmd = "/usr/bin/touch {marks}/active"\n'
    text += f'inactive_cmd = "/usr/bin/touch {marks}/inactive"\n'
    cf.write_text(text + "syncdaemon = 1\n")
    result = compile_file(str(cf))
    assert result.ok, result.errors
    events: list[str] = []
    fail_first = [True]

    async def on_activate() -> None:
        events.append(f"activate vip={has_vip(router)}")
        if fail_first.pop() if fail_first else False:
            raise RuntimeError("director would not start")

    async def on_deactivate() -> None:
        events.append(f"deactivate vip={has_vip(router)}")

    async def on_sync_role(role: str) -> None:
        events.append(f"sync {role}")

    async def scenario() -> tuple[Status, Status, Status, Status]:
        pulse = Pulse(
            result.config,
            on_activate=on_activate,
            on_deactivate=on_deactivate,
            on_sync_role=on_sync_role,
            netlink=Netlink(netns=router.name),
            garp_count=1,
        )
        task = asyncio.create_task(pulse.run())
        await asyncio.wait_for(pulse.ready.wait(), 20)
        # silence: the dead timer activates; the director fails: CHILDFAIL
        failed = await asyncio.wait_for(pulse.wait_for(lambda s: s.child_fail), 20)
        await asyncio.wait_for(pulse.wait_for(lambda s: not s.vips), 20)
        await asyncio.sleep(1.5)  # three deadtimes: CHILDFAIL keeps it down
        held_down = pulse.status()
        # one RUNNING heartbeat clears CHILDFAIL; then silence activates again
        await asyncio.to_thread(partner, peer, f"{PUB}.2", f"{PUB}.3", "running", count=1)
        up = await asyncio.wait_for(pulse.wait_for(lambda s: s.state == "active" and s.vips), 20)
        await pulse.stop()
        await asyncio.wait_for(task, 20)
        return failed, held_down, up, pulse.status()

    with inside(router):
        failed, held_down, up, stopped = asyncio.run(scenario())

    assert failed.role == "backup" and failed.child_fail
    assert held_down.state == "inactive" and held_down.child_fail and held_down.vips == ()
    assert up.state == "active" and not up.child_fail and up.vips == (VIP,)
    assert up.peer == "dead" and up.heartbeats_sent > 0 and up.transitions == 3
    assert up.packets["accepted"] == 1
    assert stopped.state == "stopped" and stopped.vips == () and not has_vip(router)
    assert stopped.as_dict()["state"] == "stopped" and "packets" in stopped.as_dict()
    # VIPs are up before the director starts and still up when it is stopped
    assert events == [
        "sync backup",  # start-up (§3.2 step 6)
        "sync master",
        "activate vip=True",  # raises
        "sync backup",
        "deactivate vip=True",
        "sync master",
        "activate vip=True",
        "sync backup",  # stop()
        "deactivate vip=True",
    ]
    assert (marks / "active").exists() and (marks / "inactive").exists()


def test_backup_with_backup_active_off_refuses_to_run(topology: Topology, tmp_path: Path) -> None:
    """§3.2 step 5: "We are backup node and backup is marked inactive -- exiting"."""
    _peer, router = pair(topology)
    cf = config(tmp_path / "lvs.cf", backup_active=0)
    pulse = Pulse(compile_file(str(cf)).config, netlink=Netlink(netns=router.name))
    with inside(router), pytest.raises(PulseExit, match="backup is marked inactive"):
        asyncio.run(pulse.run())


def test_a_router_that_is_neither_primary_nor_backup_cannot_bind(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.2 step 4: the heartbeat socket is bound to our own address; without it,
    "cannot create heartbeat socket"."""
    _peer, router = pair(topology)
    router.ip("addr", "flush", "dev", "eth0")
    router.addr("eth0", f"{PUB}.7/24")
    cf = config(tmp_path / "lvs.cf")
    pulse = Pulse(compile_file(str(cf)).config, netlink=Netlink(netns=router.name))
    with inside(router), pytest.raises(PulseExit, match="cannot create heartbeat socket"):
        asyncio.run(pulse.run())
    assert pulse.role is not None and pulse.role.value == "backup"


def test_no_active_virtual_means_nothing_to_do(topology: Topology, tmp_path: Path) -> None:
    """§3.2 step 3: "pulse: no active lvs services defined in …" — and it exits."""
    _peer, router = pair(topology)
    cf = config(tmp_path / "lvs.cf")
    cf.write_text(cf.read_text().replace("  active = 1\n  address", "  active = 0\n  address"))
    pulse = Pulse(compile_file(str(cf)).config, netlink=Netlink(netns=router.name))
    with inside(router), pytest.raises(PulseExit, match="no active lvs services defined"):
        asyncio.run(pulse.run())


@pytest.mark.parametrize("early", [False, True])
def test_takeover_order_announce_after_the_director_or_before_the_vips(
    topology: Topology, tmp_path: Path, early: bool
) -> None:
    """The order of a takeover. piranha's, and ours by default (IPVS, NAT, cold
    standby): the VIPs go up, the director starts (``on_activate``), then the ARPs —
    the callback sees the VIP and nothing announced yet. With ``announce_early`` (the
    XDP hot standby, whose program serves the VIP without the address): the first
    round leaves from the dead timer's callback, before the VIPs are added — the
    callback sees both frames counted, and the takeover's timeline has the ARP before
    the VIPs. Either way the frames are send_arp's reply then the RFC 5227
    announcement, byte for byte, from the socket prepared at start."""
    peer, router = pair(topology)
    cf = config(tmp_path / "lvs.cf", keepalive=0.1, deadtime=0.5)
    vip_hex = "0x" + IPv4Address(VIP).packed.hex()
    cap = Capture(peer, "eth0", tmp_path / "arp.pcap", 2, f"arp and arp[14:4] = {vip_hex}")
    seen: list[tuple[bool, int]] = []  # at on_activate: VIP up?, frames sent
    pulses: list[Pulse] = []

    async def on_activate() -> None:
        seen.append((has_vip(router), pulses[0].status().garps_sent))

    async def scenario() -> dict[str, float]:
        pulse = Pulse(
            compile_file(str(cf)).config,
            on_activate=on_activate,
            netlink=Netlink(netns=router.name),
            garp_count=1,
            arp_announce=True,
            announce_early=lambda: early,
        )
        pulses.append(pulse)
        task = asyncio.create_task(pulse.run())
        await asyncio.wait_for(pulse.ready.wait(), 20)
        # the primary never speaks: the dead timer activates the backup
        await asyncio.wait_for(pulse.wait_for(lambda s: s.state == "active" and s.vips), 20)
        await asyncio.wait_for(pulse.wait_for(lambda s: s.garps_sent == 2), 20)
        await pulse.stop()
        await asyncio.wait_for(task, 20)
        return pulse.timeline

    with inside(router):
        timeline = asyncio.run(scenario())

    mac = mac_of(router)
    reply = garp.arp_frame(IPv4Address(VIP), mac, IPv4Address(f"{PUB}.255"))
    announcement = garp.announcement_frame(IPv4Address(VIP), mac)
    assert [f.data for f in cap.frames()] == [reply, announcement]
    assert "due" in timeline  # the dead timer decided
    if early:
        assert seen == [(True, 2)]
        assert timeline["due"] <= timeline["decided"] <= timeline["arp"] <= timeline["vips"]
    else:
        assert seen == [(True, 0)]
        assert timeline["vips"] <= timeline["director"] <= timeline["arp"]


def test_a_mac_changed_since_start_is_announced_again_at_once(
    topology: Topology, tmp_path: Path
) -> None:
    """The frames are prepared at start; a device whose MAC changed before the
    takeover gets its first round with the old MAC (sent before anything is read),
    then — the device read again right after — the whole series at once with the new
    one, so a client is misdirected for one netlink round trip at most."""
    peer, router = pair(topology)
    # a deadtime long enough that only the feeder's end can start the takeover
    cf = config(tmp_path / "lvs.cf", keepalive=0.1, deadtime=3.0)
    vip_hex = "0x" + IPv4Address(VIP).packed.hex()
    cap = Capture(peer, "eth0", tmp_path / "arp.pcap", 6, f"arp and arp[14:4] = {vip_hex}")
    old_mac = mac_of(router)
    new_mac = bytes.fromhex("02005e0000aa")

    async def scenario() -> None:
        pulse = Pulse(
            compile_file(str(cf)).config,
            netlink=Netlink(netns=router.name),
            garp_count=2,
            garp_interval=0.05,
            arp_announce=True,
            announce_early=lambda: True,
        )
        task = asyncio.create_task(pulse.run())
        # the primary's RUNNING heartbeats hold the backup down while the MAC changes
        feeder = await asyncio.to_thread(
            partner, peer, f"{PUB}.2", f"{PUB}.3", "running", interval=0.1
        )
        await asyncio.wait_for(pulse.ready.wait(), 20)
        await asyncio.to_thread(router.ip, "link", "set", "eth0", "address", "02:00:5e:00:00:aa")
        assert pulse.status().state == "inactive"
        feeder.kill()
        await asyncio.to_thread(feeder.wait)
        async with asyncio.timeout(20):  # the repeats run in their own task: poll
            while pulse.status().garps_sent < 6:
                await asyncio.sleep(0.05)
        await pulse.stop()
        await asyncio.wait_for(task, 20)

    with inside(router):
        asyncio.run(scenario())

    def round_of(mac: bytes) -> list[bytes]:
        reply = garp.arp_frame(IPv4Address(VIP), mac, IPv4Address(f"{PUB}.255"))
        return [reply, garp.announcement_frame(IPv4Address(VIP), mac)]

    assert mac_of(router) == new_mac
    assert [f.data for f in cap.frames()] == round_of(old_mac) + round_of(new_mac) * 2


def test_an_ipv6_vip_is_never_the_source_of_the_directors_own_traffic(
    topology: Topology,
) -> None:
    """A /128 VIP inside the real servers' /64 that shares more leading bits with a
    real server's address than the director's own address does (::3 and ::2 against
    ::f000) would win source selection (RFC 6724 rule 8); added deprecated it never does, and
    it still receives (a neighbour's connection attempt is answered). It is usable at
    once: no duplicate address detection holds a taken-over VIP back."""
    lb, rs = topology.netns("lb"), topology.netns("rs")
    topology.veth(lb, "eth0", rs, "eth0")
    for ns, addr in ((lb, "2001:2:0:7::f000/64"), (rs, "2001:2:0:7::2/64")):
        ns.ip("-6", "addr", "add", addr, "dev", "eth0", "nodad")
    spec = VipSpec(IPv6Address("2001:2:0:7::3"), 128, "eth0", None, None)
    netlink = Netlink(netns=lb.name)
    assert netlink.add(spec)
    route = lb.ip("-6", "route", "get", "2001:2:0:7::2")
    assert " src 2001:2:0:7::f000 " in route, route
    (line,) = [x for x in lb.ip("-6", "addr", "show", "dev", "eth0").splitlines() if "::3/" in x]
    flags = set(line.split())
    assert {"deprecated", "nodad"} <= flags and "tentative" not in flags, line
    probe = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6)\n"
        "s.settimeout(5)\n"
        "try:\n"
        "    s.connect(('2001:2:0:7::3', 9))\n"
        "except ConnectionRefusedError:\n"
        "    print('refused')\n"
    )
    assert rs.python(probe).strip() == "refused"  # the VIP's owner answered with RST
    assert netlink.remove(spec)
    assert "2001:2:0:7::3/" not in lb.ip("-6", "addr", "show", "dev", "eth0")
