"""pulse on a real veth: our heartbeats and ARPs captured with tcpdump and checked
byte for byte (piranha-spec.md §3.3, §6.2), and a router's reaction to heartbeats
fed from a plain UDP socket playing the partner (§3.4, §3.5), in both formats.

Pulse runs as a process (``python -m runtime.pulse``) inside a namespace; the tests
watch its VIP with ``ip addr`` and its packets on the wire. Waits are bounded, never
timed: a deadtime of 60 s is used where the point is that a takeover must *not*
have waited for the dead timer.
"""

from __future__ import annotations

import ast
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from runtime.pulse import garp, wire
from tests.netns.topo import Capture, Frame, Netns, Topology

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
PUB = "198.18.60"
PRIV = "198.19.60"
VIP = f"{PUB}.10"
# broadcast ARP replies only: not the kernel's own requests or unicast answers
GARP = "arp and ether dst ff:ff:ff:ff:ff:ff and arp[6:2] = 2"


def config(
    path: Path,
    *,
    keepalive: float = 0.2,
    deadtime: float = 1.0,
    private: bool = False,
    monitor_links: int = 0,
    backup_active: int = 1,
    pub: str = PUB,
    priv: str = PRIV,
) -> Path:
    """An lvs.cf for a pair: primary .2, backup .3, one VIP .10 on eth0:1 (/24)."""
    lines = [
        f"primary = {pub}.2",
        f"backup = {pub}.3",
        f"backup_active = {backup_active}",
        "heartbeat_port = 539",
        f"keepalive = {keepalive}",
        f"deadtime = {deadtime}",
        f"monitor_links = {monitor_links}",
        "network = direct",
    ]
    if private:
        lines += [f"primary_private = {priv}.2", f"backup_private = {priv}.3"]
    lines += [
        "virtual web {",
        "  active = 1",
        f"  address = {pub}.10 eth0:1",
        "  vip_nmask = 255.255.255.0",
        "  port = 80",
        "  server rs1 {",
        f"    address = {pub}.50",
        "    active = 1",
        "  }",
        "}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


class PulseProc:
    """``python -m runtime.pulse`` in a namespace; its stdout lines in a queue."""

    def __init__(self, ns: Netns, cf: Path, *args: str) -> None:
        self.ns = ns
        self.proc = ns.popen(
            sys.executable, "-m", "runtime.pulse", str(cf), *args, cwd=str(ROOT), text=True
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.backlog: list[str] = []  # read but not yet matched by expect()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put("<eof>")

    def expect(self, prefix: str, timeout: float = 20) -> str:
        """The first line not matched before that starts with ``prefix``."""
        for line in self.backlog:
            if line.startswith(prefix):
                self.backlog.remove(line)
                return line
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if line.startswith(prefix):
                return line
            if line == "<eof>":
                break
            self.backlog.append(line)
        err = self.proc.stderr.read() if self.proc.poll() is not None and self.proc.stderr else ""
        raise AssertionError(f"no {prefix!r} from pulse; saw {self.seen}; stderr: {err}")

    def drain(self) -> list[str]:
        """Every line printed so far (waiting briefly for the reader to catch up)."""
        time.sleep(0.2)
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                return self.seen
            self.seen.append(line)
            self.backlog.append(line)

    def terminate_for_counters(self) -> dict[str, int]:
        """SIGTERM; the packet counters it prints on the way out."""
        self.proc.send_signal(signal.SIGTERM)
        line = self.expect("stopped ")
        self.proc.wait(10)
        return ast.literal_eval(line.removeprefix("stopped "))

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def has_vip(ns: Netns, vip: str = VIP, dev: str = "eth0") -> bool:
    return f"inet {vip}/" in ns.ip("-o", "-4", "addr", "show", "dev", dev, check=False)


def wait_until(pred: Callable[[], bool], timeout: float = 20, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def mac_of(ns: Netns, dev: str = "eth0") -> bytes:
    return garp.parse_mac(ns.run("cat", f"/sys/class/net/{dev}/address").strip())


# A partner played by a plain UDP socket: sends MODE packets from SRC:539 to DST:539
# every INTERVAL seconds until killed (or COUNT sent; 0 = forever).
PARTNER = r"""
import socket, sys, time
sys.path.insert(0, sys.argv[7])
from runtime.pulse import wire
src, dst, interval, count, mode, keyfile = sys.argv[1:7]
interval, count = float(interval), int(count)
key = wire.Key.from_file(keyfile) if keyfile != "-" else None
signer = wire.Signer(key)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((src, 539))
first = None
n = 0
while count == 0 or n < count:
    if mode == "running":
        pkt = wire.encode(True)
    elif mode == "stopped":
        pkt = wire.encode(False)
    elif mode == "running-big-endian":
        pkt = wire.encode(True, "big")
    elif mode == "fos":
        pkt = wire.FOS_RUNNING_MAGIC.to_bytes(4, "little")
    elif mode == "auth-running":
        pkt = signer.packet(True, time.time())
    elif mode == "attack":
        # a forged RUNNING (MAC broken), a replay of an old genuine one, a plain one
        if first is None:
            first = signer.packet(True, time.time())
            signer.packet(True, time.time())
            s.sendto(signer.packet(True, time.time()), (dst, 539))  # newest genuine
        good = bytearray(signer.packet(True, time.time()))
        good[-1] ^= 0xFF
        for pkt in (bytes(good), first, wire.encode(True)):
            s.sendto(pkt, (dst, 539))
        pkt = None
    if pkt is not None:
        s.sendto(pkt, (dst, 539))
    n += 1
    print(n, flush=True)
    time.sleep(interval)
"""


def partner(
    ns: Netns, src: str, dst: str, mode: str, *, interval=0.1, count=0, keyfile="-"
) -> subprocess.Popen:
    p = ns.popen(
        sys.executable,
        "-c",
        PARTNER,
        src,
        dst,
        str(interval),
        str(count),
        mode,
        keyfile,
        str(ROOT),
        text=True,
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "1", p.stderr
    return p


def pair(t: Topology, private: bool = False) -> tuple[Netns, Netns]:
    """The partner's namespace (primary .2) and the router's (backup .3) on a veth."""
    peer, router = t.netns("peer"), t.netns("router")
    t.veth(peer, "eth0", router, "eth0")
    peer.addr("eth0", f"{PUB}.2/24")
    router.addr("eth0", f"{PUB}.3/24")
    if private:
        t.veth(peer, "eth1", router, "eth1")
        peer.addr("eth1", f"{PRIV}.2/24")
        router.addr("eth1", f"{PRIV}.3/24")
    return peer, router


def udp_heartbeat(frame: Frame) -> tuple[str, str, int, int, bytes]:
    """(src ip, dst ip, sport, dport, payload) of an Ethernet/IPv4/UDP frame."""
    d = frame.data
    assert d[12:14] == b"\x08\x00", d[:14].hex()
    ihl = (d[14] & 0x0F) * 4
    ip = d[14 : 14 + ihl]
    assert ip[9] == 17
    udp = d[14 + ihl :]
    sport, dport, length, _ = struct.unpack("!HHHH", udp[:8])
    src, dst = str(IPv4Address(ip[12:16])), str(IPv4Address(ip[16:20]))
    return src, dst, sport, dport, udp[8:length]


# ---- what we send ---------------------------------------------------------------------


def test_inactive_backup_sends_stopped_magic_on_both_paths(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.3: UDP 539 → 539 from our address to the partner's, exactly 4 bytes, the
    STOPPED magic 0xadbddabd in x86 order (``bd da bd ad``) while inactive; the same
    again over the private pair when primary_private differs from primary."""
    peer, router = pair(topology, private=True)
    cf = config(tmp_path / "lvs.cf", keepalive=0.1, deadtime=60, private=True)
    pub = Capture(peer, "eth0", tmp_path / "pub.pcap", 3, "udp port 539")
    priv = Capture(peer, "eth1", tmp_path / "priv.pcap", 3, "udp port 539")
    p = PulseProc(router, cf)
    assert p.expect("ready") == "ready backup"
    for cap, net in ((pub, PUB), (priv, PRIV)):
        frames = cap.frames()
        assert len(frames) == 3
        for f in frames:
            assert udp_heartbeat(f) == (f"{net}.3", f"{net}.2", 539, 539, b"\xbd\xda\xbd\xad")
    assert not has_vip(router)


def test_forced_active_master_sends_running_magic_and_send_arp_frames(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.1 --forceactive, §3.3 RUNNING magic ``da db ad bd``, and §6.2's gratuitous
    ARP: broadcast ARP reply VIP → our MAC, target = eth0's broadcast, 60 bytes, five
    of them (§6.1; interval shortened here)."""
    peer, router = pair(topology)
    # the router is the *primary* here: swap the addresses
    router.ip("addr", "flush", "dev", "eth0")
    peer.ip("addr", "flush", "dev", "eth0")
    router.addr("eth0", f"{PUB}.2/24")
    peer.addr("eth0", f"{PUB}.3/24")
    cf = config(tmp_path / "lvs.cf", keepalive=0.1, deadtime=60)
    arps = Capture(peer, "eth0", tmp_path / "arp.pcap", 5, GARP)
    hbs = Capture(peer, "eth0", tmp_path / "hb.pcap", 3, "udp port 539")
    p = PulseProc(router, cf, "--forceactive", "--garp-interval", "0.05")
    assert p.expect("ready") == "ready master"
    p.expect("active")
    assert has_vip(router)
    expected = garp.arp_frame(IPv4Address(VIP), mac_of(router), IPv4Address(f"{PUB}.255"))
    frames = arps.frames()
    assert [f.data for f in frames] == [expected] * 5
    for f in hbs.frames():
        assert udp_heartbeat(f) == (f"{PUB}.2", f"{PUB}.3", 539, 539, b"\xda\xdb\xad\xbd")
    assert "inet 198.18.60.10/24 brd 198.18.60.255 scope global secondary eth0:1" in router.ip(
        "addr", "show", "dev", "eth0"
    )


def test_send_arp_cli_frame(topology: Topology, tmp_path: Path) -> None:
    """§6.1: ``lvs-router send-arp -i DEV SRC_IP SRC_MAC TARGET_IP TARGET_MAC`` puts §6.2's frame
    on DEV, once per invocation (pulse's 5 × 1 s with --count/--interval)."""
    peer, router = pair(topology)
    cap = Capture(peer, "eth0", tmp_path / "cli.pcap", 2, GARP)
    code = (  # through lvs-router's own command line
        "import sys; sys.path.insert(0, sys.argv[1]); from runtime.cli import main;"
        " sys.exit(main(['send-arp', *sys.argv[2:]]))"
    )
    args = ["-i", "eth0", "198.18.60.77", "02:00:00:00:00:77", "198.18.60.255", "ffffffffffff"]
    router.python(code, str(ROOT), *args, "--count", "2", "--interval", "0")
    expected = garp.arp_frame(
        IPv4Address("198.18.60.77"),
        bytes.fromhex("020000000077"),
        IPv4Address("198.18.60.255"),
    )
    assert [f.data for f in cap.frames()] == [expected, expected]
    cmd = ["ip", "netns", "exec", router.name, sys.executable, "-c", code, str(ROOT)]
    bad = subprocess.run(
        [*cmd, "-i", "nosuch0", *args[2:]],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "nosuch0" in bad.stderr


# ---- how we react to what the partner sends --------------------------------------------


def test_backup_holds_while_running_heartbeats_arrive_then_takes_over(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.5 row 3 (RUNNING | inactive: status quo) while piranha-format heartbeats
    arrive; §3.4 dead deadline once they stop: VIP up on eth0:1 and §6.2 ARPs out."""
    peer, router = pair(topology)
    cf = config(tmp_path / "lvs.cf", keepalive=0.2, deadtime=1.5)
    feeder = partner(peer, f"{PUB}.2", f"{PUB}.3", "running", interval=0.1)
    p = PulseProc(router, cf, "--garp-interval", "0.05")
    assert p.expect("ready") == "ready backup"
    for _ in range(30):  # 3 s of RUNNING: two deadtimes
        assert not has_vip(router)
        time.sleep(0.1)
    arps = Capture(peer, "eth0", tmp_path / "arp.pcap", 5, GARP)
    feeder.kill()
    p.expect("active")
    assert wait_until(lambda: has_vip(router))
    expected = garp.arp_frame(IPv4Address(VIP), mac_of(router), IPv4Address(f"{PUB}.255"))
    assert [f.data for f in arps.frames()] == [expected] * 5


@pytest.mark.parametrize("mode", ["running", "running-big-endian"])
def test_stopped_heartbeat_takes_over_without_the_dead_timer(
    topology: Topology, tmp_path: Path, mode: str
) -> None:
    """§3.5 row 5: a primary that was RUNNING and says STOPPED has given up; the
    backup activates on that packet. With deadtime 60 s a takeover seen within the
    wait can only be this rule. (Parametrized: a big-endian piranha's RUNNING is
    understood too — it keeps the backup inactive the same way.)"""
    peer, router = pair(topology)
    cf = config(tmp_path / "lvs.cf", keepalive=0.2, deadtime=60)
    feeder = partner(peer, f"{PUB}.2", f"{PUB}.3", mode)
    p = PulseProc(router, cf, "--garp-count", "1")
    assert p.expect("ready") == "ready backup"
    time.sleep(0.5)
    assert not has_vip(router)
    feeder.kill()
    feeder.wait()
    partner(peer, f"{PUB}.2", f"{PUB}.3", "stopped", count=1)
    p.expect("active", timeout=20)
    assert wait_until(lambda: has_vip(router), timeout=5)
    counters = p.terminate_for_counters()
    assert counters["accepted"] >= 2 and counters["incompatible"] == 0
    assert not has_vip(router)  # SIGTERM gave the VIP up


def test_wrong_source_and_fos_magic_do_not_keep_a_backup_down(
    topology: Topology, tmp_path: Path
) -> None:
    """§3.3 receive validation: RUNNING from an address that is not the partner's,
    and FOS magics from the partner, are dropped ("Unexpected heartbeat",
    "Incompatible heartbeat") and do not re-arm the dead timer: the backup takes
    over after deadtime as if nothing had arrived."""
    peer, router = pair(topology)
    peer.addr("eth0", f"{PUB}.99/24")
    cf = config(tmp_path / "lvs.cf", keepalive=0.2, deadtime=1.0)
    partner(peer, f"{PUB}.99", f"{PUB}.3", "running", interval=0.05)
    partner(peer, f"{PUB}.2", f"{PUB}.3", "fos", interval=0.05)
    p = PulseProc(router, cf, "--garp-count", "1")
    p.expect("ready")
    p.expect("active")
    assert wait_until(lambda: has_vip(router))
    counters = p.terminate_for_counters()
    assert counters["unexpected_source"] > 0 and counters["incompatible"] > 0
    assert counters["accepted"] == 0


def test_authenticated_heartbeats_forged_and_replayed_are_rejected(
    topology: Topology, tmp_path: Path
) -> None:
    """Extension: with a key, genuine authenticated RUNNING heartbeats keep the backup
    inactive; forged ones (MAC broken), a replayed genuine one and plain piranha
    ones are dropped and counted, so under that stream the backup takes over after
    deadtime exactly as if the partner were silent."""
    peer, router = pair(topology)
    key = tmp_path / "hb.key"
    key.write_text("a heartbeat key shared by both routers\n")
    cf = config(tmp_path / "lvs.cf", keepalive=0.2, deadtime=1.5)
    genuine = partner(peer, f"{PUB}.2", f"{PUB}.3", "auth-running", interval=0.1, keyfile=str(key))
    hbs = Capture(peer, "eth0", tmp_path / "hb.pcap", 2, f"udp and src host {PUB}.3")
    p = PulseProc(router, cf, "--key", str(key), "--garp-count", "1")
    p.expect("ready")
    for f in hbs.frames():  # our own heartbeats are the authenticated format too
        payload = udp_heartbeat(f)[4]
        assert len(payload) == wire.AUTH_LEN and payload[:4] == b"LRHB"
        assert wire.decode_auth(wire.Key.from_file(key), payload).state is wire.PeerState.STOPPED
    for _ in range(25):
        assert not has_vip(router)
        time.sleep(0.1)
    genuine.kill()
    genuine.wait()
    partner(peer, f"{PUB}.2", f"{PUB}.3", "attack", interval=0.1, keyfile=str(key))
    p.expect("active")
    assert wait_until(lambda: has_vip(router))
    c = p.terminate_for_counters()
    assert c["forged"] > 0 and c["replayed"] > 0 and c["unauthenticated"] > 0
    assert c["accepted"] >= 10  # the genuine phase, plus the attack's first real one


def test_ipv6_vip_unsolicited_na_is_accepted_by_a_neighbour(
    topology: Topology, tmp_path: Path
) -> None:
    """For an IPv6 VIP the takeover announcement is an unsolicited NA (ICMPv6 136,
    Override, target link-layer option, to ff02::1, hop limit 255): captured byte
    for byte, and a neighbour's stale entry for the VIP moves to our MAC, which
    the kernel does only for a well-formed NA with a correct checksum. Addresses
    from 2001:2::/48, IPv6's benchmarking range."""
    peer, router = pair(topology)
    router.ip("addr", "flush", "dev", "eth0")
    peer.ip("addr", "flush", "dev", "eth0")
    router.addr("eth0", f"{PUB}.2/24")
    peer.addr("eth0", f"{PUB}.3/24")
    vip6 = "2001:2::10"
    cf = config(tmp_path / "lvs.cf", keepalive=0.2, deadtime=60)
    text = cf.read_text().replace(f"address = {PUB}.10 eth0:1", f"address = {vip6} eth0")
    cf.write_text(text.replace(f"address = {PUB}.50", "address = 2001:2::50"))
    peer.ip("-6", "neigh", "replace", vip6, "lladdr", "02:00:00:00:00:99", "dev", "eth0",
            "nud", "stale")  # fmt: skip
    nas = Capture(peer, "eth0", tmp_path / "na.pcap", 3, "icmp6 and ip6[40] = 136")
    p = PulseProc(router, cf, "--forceactive", "--garp-interval", "0.05", "--garp-count", "3")
    p.expect("active")
    assert wait_until(lambda: f"inet6 {vip6}/128" in router.ip("-6", "addr", "show", "dev", "eth0"))
    expected = garp.na_frame(IPv6Address(vip6), mac_of(router))
    assert [f.data for f in nas.frames()] == [expected] * 3
    router_mac = ":".join(f"{b:02x}" for b in mac_of(router))
    assert wait_until(
        lambda: f"lladdr {router_mac}" in peer.ip("-6", "neigh", "show", vip6), timeout=5
    )


def test_arp_announce_adds_rfc5227_announcements(topology: Topology, tmp_path: Path) -> None:
    """Extension (``--arp-announce``): after each of send_arp's replies an RFC 5227
    announcement (request, sender IP = target IP = VIP), which Linux neighbours apply
    without waiting out their ARP locktime. Every frame whose sender is the VIP, in
    order."""
    peer, router = pair(topology)
    router.ip("addr", "flush", "dev", "eth0")
    peer.ip("addr", "flush", "dev", "eth0")
    router.addr("eth0", f"{PUB}.2/24")
    peer.addr("eth0", f"{PUB}.3/24")
    cf = config(tmp_path / "lvs.cf", keepalive=0.1, deadtime=60)
    vip_hex = "0x" + IPv4Address(VIP).packed.hex()
    cap = Capture(peer, "eth0", tmp_path / "ann.pcap", 4, f"arp and arp[14:4] = {vip_hex}")
    p = PulseProc(router, cf, "--forceactive", "--arp-announce", "--garp-count", "2",
                  "--garp-interval", "0.05")  # fmt: skip
    p.expect("active")
    mac = mac_of(router)
    reply = garp.arp_frame(IPv4Address(VIP), mac, IPv4Address(f"{PUB}.255"))
    announcement = garp.announcement_frame(IPv4Address(VIP), mac)
    assert [f.data for f in cap.frames()] == [reply, announcement] * 2
