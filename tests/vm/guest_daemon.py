"""The daemon on real IPVS, inside the VM (run by guest.py in the same boot).

``python -m runtime.daemon_cli run --dataplane ipvs`` runs in the VM's root namespace
(the director) as an operator would start it; real servers in namespaces run
tests/netns/servers.py (TCP, answers with its name), a client namespace connects
through NAT. The checks stop and start a real server and watch the *kernel's* table
change, reload (SIGHUP and the control socket) with an added service and a changed
weight, reload a broken file, SIGKILL the daemon and start another that adopts the
table, and stop with ``--on-stop remove``. Last, the router with pulse
(``heartbeat = 1``, ``syncdaemon = 1``) as a backup whose primary never answers: the
kernel's connection-sync daemon is backup until the dead timer fires, then master,
then backup again after SIGTERM (spec §3.5 step 3)::

    dclient 198.18.2.2 ──veth── 198.18.2.1 director (VIP 198.18.2.100)
                                198.19.3.1 ──veth── drs1 198.19.3.11
                                198.19.4.1 ──veth── drs2 198.19.4.11

Every wait polls for a state with a generous deadline (TCG is slow); no check asserts
a duration. Namespace and link names differ from traffic.py's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVERS_PY = ROOT / "tests" / "netns" / "servers.py"
CLIENT_PY = ROOT / "tests" / "netns" / "client.py"  # the JSON-line test client
VIP = "198.18.2.100"
RIPS = {"rs1": "198.19.3.11", "rs2": "198.19.4.11"}
SERVES = ("--tcp", "80", "--udp", "53")
DEADLINE_S = 240.0  # interpreters start in tens of seconds under TCG

NAMES = [
    "daemon-setup",
    "daemon-start",
    "daemon-server-leaves",
    "daemon-server-reenters",
    "daemon-reload",
    "daemon-broken-reload",
    "daemon-udp-send-program-quiesce",
    "daemon-sigkill-adopt",
    "daemon-verify-repairs",
    "daemon-stop-remove",
    "daemon-pulse-sync-roles",
]


def server(name: str, weight: int = 1) -> str:
    return (
        f"    server {name} {{\n        address = {RIPS[name]}\n        active = 1\n"
        f"        weight = {weight}\n    }}\n"
    )


def virtual(name: str, port: int, servers: str, protocol: str = "tcp") -> str:
    return (
        f"virtual {name} {{\n    active = 1\n    address = {VIP} eth0:1\n    port = {port}\n"
        f"    protocol = {protocol}\n    scheduler = wrr\n    timeout = 1\n    reentry = 2\n"
        f'    expect = "rs"\n{servers}}}\n'
    )


HEAD = "primary = 198.18.2.1\nnetwork = nat\nnat_router = 198.19.3.1 eth1:1\n"
WEB = virtual("web", 80, server("rs1") + server("rs2"))


def run(*cmd: str) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


def ns(name: str, *cmd: str) -> list[str]:
    return ["ip", "netns", "exec", name, *cmd]


def table() -> str:
    """The kernel's table as ``ipvsadm-save -n`` prints it."""
    return run("ipvsadm", "-S", "-n")


class Lab:
    def __init__(self, workdir: Path) -> None:
        self.work = workdir / "daemon"
        self.work.mkdir(exist_ok=True)
        self.config = self.work / "lvs.cf"
        # not in the work directory: the VM's shared folders hold no socket files
        self.socket = "/run/lvs-router-vmtest/control.sock"
        self.servers: dict[str, subprocess.Popen] = {}
        self.procs: list[subprocess.Popen] = []
        self.daemon: subprocess.Popen | None = None
        self.client: subprocess.Popen | None = None
        self.n = 0

    # ------------------------------------------------------------------ topology

    def up(self) -> str:
        from dataplane.ipvs import IPVSKernel, converge
        from dataplane.reconcile import IPVSState

        with IPVSKernel() as k:  # what earlier checks left: the daemon starts from empty
            converge(k, IPVSState())
        run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        run("ip", "netns", "add", "dclient")
        run("ip", "link", "add", "dc1", "type", "veth", "peer", "name", "dc0", "netns", "dclient")
        run("ip", "addr", "add", "198.18.2.1/24", "dev", "dc1")
        run("ip", "addr", "add", f"{VIP}/32", "dev", "dc1")
        run("ip", "link", "set", "dc1", "up")
        run(*ns("dclient", "ip", "addr", "add", "198.18.2.2/24", "dev", "dc0"))
        run(*ns("dclient", "ip", "link", "set", "dc0", "up"))
        run(*ns("dclient", "ip", "link", "set", "lo", "up"))
        run(*ns("dclient", "ip", "route", "add", "default", "via", "198.18.2.1"))
        for i, name in ((3, "rs1"), (4, "rs2")):
            rs, here, there = f"d{name}", f"d{name}a", f"d{name}b"
            run("ip", "netns", "add", rs)
            run("ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", rs)
            run("ip", "addr", "add", f"198.19.{i}.1/24", "dev", here)
            run("ip", "link", "set", here, "up")
            run(*ns(rs, "ip", "addr", "add", f"{RIPS[name]}/24", "dev", there))
            run(*ns(rs, "ip", "link", "set", there, "up"))
            run(*ns(rs, "ip", "link", "set", "lo", "up"))
            run(*ns(rs, "ip", "route", "add", "default", "via", f"198.19.{i}.1"))
            self.start_server(name)
        self.client = subprocess.Popen(
            ns("dclient", sys.executable, str(CLIENT_PY)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(self.client)
        return "dclient, drs1, drs2 up"

    def start_server(self, name: str) -> None:
        p = subprocess.Popen(
            ns(f"d{name}", sys.executable, str(SERVERS_PY), "--name", name, *SERVES),
            stdout=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", name
        self.servers[name] = p

    def stop_server(self, name: str) -> None:
        p = self.servers.pop(name)
        p.send_signal(signal.SIGTERM)
        p.wait(60)

    def ask(self, **command: object) -> object:
        assert self.client and self.client.stdin and self.client.stdout
        self.client.stdin.write(json.dumps(command) + "\n")
        self.client.stdin.flush()
        answer = json.loads(self.client.stdout.readline())
        assert "error" not in answer, answer["error"]
        return answer["ok"]

    def names(self, port: int = 80, n: int = 8) -> set[str]:
        return set(self.ask(op="names", dst=VIP, port=port, n=n))

    def udp_names(self, port: int = 53, n: int = 8) -> set[str]:
        return set(self.ask(op="udp", dst=VIP, port=port, n=n))

    def down(self) -> None:
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.kill()
        for p in self.procs:
            if p.poll() is None:
                p.kill()

    # ------------------------------------------------------------------ daemon

    def start(self, *extra: str) -> None:
        self.n += 1
        log = (self.work / f"daemon-{self.n}.log").open("w")
        self.daemon = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime.daemon_cli",
                "run",
                "-c",
                str(self.config),
                "--dataplane",
                "ipvs",
                "--socket",
                self.socket,
                "--metrics",
                "off",
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(ROOT),
        )
        self.wait(lambda s: True, "the control socket answers")

    def log(self) -> str:
        return (self.work / f"daemon-{self.n}.log").read_text()

    def status(self) -> dict:
        from runtime.control import ControlError, request

        answer = request(self.socket, "status", timeout=60)
        if not answer["ok"]:  # starting
            raise ControlError(answer["error"])
        return answer["status"]

    def wait(self, predicate: Callable[[dict], bool], what: str) -> dict:
        from runtime.control import ControlError

        deadline = time.monotonic() + DEADLINE_S
        last: object = "no answer"
        while time.monotonic() < deadline:
            if self.daemon is not None and self.daemon.poll() is not None:
                raise AssertionError(f"daemon exited {self.daemon.returncode}:\n{self.log()}")
            try:
                last = self.status()
                if predicate(last):
                    return last
            except (ControlError, OSError):
                pass
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting until {what}; last {last}\n{self.log()}")

    def wait_table(self, predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        seen = ""
        while time.monotonic() < deadline:
            seen = table()
            if predicate(seen):
                return seen
            time.sleep(0.5)
        raise AssertionError(f"timed out waiting until {what}; kernel table:\n{seen}\n{self.log()}")

    def reload(self) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runtime.daemon_cli", "reload", "--socket", self.socket],
            capture_output=True,
            text=True,
            cwd=str(ROOT),
        )

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.daemon is not None
        self.daemon.send_signal(sig)
        code = self.daemon.wait(120)
        self.daemon = None
        return code


def dest(name: str, weight: int = 1, port: int = 80) -> str:
    return f"-a -t {VIP}:{port} -r {RIPS[name]}:{port} -m -w {weight}"


# --------------------------------------------------------------------------- checks


def check_start(lab: Lab) -> str:
    lab.config.write_text(HEAD + WEB)
    lab.start()
    seen = lab.wait_table(lambda t: dest("rs1") in t and dest("rs2") in t, "both servers are in")
    assert lab.names() == {"rs1", "rs2"}
    return seen


def check_leaves(lab: Lab) -> str:
    lab.stop_server("rs2")
    seen = lab.wait_table(lambda t: dest("rs2") not in t, "rs2 leaves the kernel table")
    assert dest("rs1") in seen
    assert lab.names() == {"rs1"}
    return seen


def check_reenters(lab: Lab) -> str:
    lab.start_server("rs2")
    seen = lab.wait_table(lambda t: dest("rs2") in t, "rs2 re-enters")
    assert lab.names() == {"rs1", "rs2"}
    return seen


def check_reload(lab: Lab) -> str:
    sport, name = lab.ask(op="hold", dst=VIP, port=80)
    added = virtual("alt", 8080, server("rs1"))
    lab.config.write_text(HEAD + WEB.replace("weight = 1", "weight = 2", 1) + added)
    assert lab.daemon is not None
    lab.daemon.send_signal(signal.SIGHUP)
    seen = lab.wait_table(
        lambda t: dest("rs1", weight=2) in t and f"-A -t {VIP}:8080" in t,
        "the weight changed and the new service exists",
    )
    assert lab.ask(op="echo", sport=sport, data="kept") == "kept", "open connection lost"
    # and back through the control socket: the added service goes, the rest stays
    lab.config.write_text(HEAD + WEB)
    done = lab.reload()
    assert done.returncode == 0, done.stderr
    assert "1 removed" in done.stdout, done.stdout
    after = table()
    assert f"-A -t {VIP}:8080" not in after and dest("rs1") in after, after
    assert lab.ask(op="echo", sport=sport, data="still") == "still", "open connection lost"
    return f"{name} kept its connection; {seen}"


def check_broken_reload(lab: Lab) -> str:
    before = table()
    lab.config.write_text(HEAD + WEB + "virtual broken {\n    active = 1\n    port = x\n}\n")
    done = lab.reload()
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"{lab.config}:" in done.stderr, done.stderr  # file:line:col
    assert table() == before
    st = lab.status()
    assert st["reloads"]["failed"] == 1 and st["last_reload_error"], st
    lab.config.write_text(HEAD + WEB)
    return done.stderr


CHECK_SCRIPT = """#!/bin/sh
cat "{dir}/$1" 2>/dev/null || echo missing
"""


def check_udp_send_program_quiesce(lab: Lab) -> str:
    """A UDP service checked by a send_program, with quiesce_server: a failing server
    stays in the kernel table with weight 0 and gets no new datagrams."""
    state = lab.work / "state"
    state.mkdir(exist_ok=True)
    script = lab.work / "check.sh"
    script.write_text(CHECK_SCRIPT.format(dir=state))
    script.chmod(0o755)
    for addr in RIPS.values():
        (state / addr).write_text("ok\n")
    dns = virtual("dns", 53, server("rs1") + server("rs2"), "udp").replace(
        '    expect = "rs"\n',
        f'    quiesce_server = 1\n    send_program = "{script} %h"\n    expect = "ok"\n',
    )
    lab.config.write_text(HEAD + WEB + dns)
    done = lab.reload()
    assert done.returncode == 0, done.stderr

    def udp(name: str, weight: int) -> str:
        return f"-a -u {VIP}:53 -r {RIPS[name]}:53 -m -w {weight}"

    lab.wait_table(lambda t: udp("rs1", 1) in t and udp("rs2", 1) in t, "both UDP servers in")
    assert lab.udp_names() == {"rs1", "rs2"}
    (state / RIPS["rs2"]).write_text("fail\n")
    seen = lab.wait_table(lambda t: udp("rs2", 0) in t, "rs2 quiesced (weight 0)")
    assert lab.udp_names() == {"rs1"}
    (state / RIPS["rs2"]).write_text("ok\n")
    lab.wait_table(lambda t: udp("rs2", 1) in t, "rs2 back at weight 1")
    lab.config.write_text(HEAD + WEB)
    done = lab.reload()
    assert done.returncode == 0, done.stderr
    return seen


def check_sigkill_adopt(lab: Lab) -> str:
    before = table()
    sport, _name = lab.ask(op="hold", dst=VIP, port=80)
    assert lab.stop(signal.SIGKILL) == -signal.SIGKILL
    assert table() == before
    assert lab.names() == {"rs1", "rs2"}
    lab.start()
    assert table() == before, "the restarted daemon changed the table before checking"
    assert "adopted=2" in lab.log(), lab.log()
    lab.wait(lambda s: all(r["state"] == "up" for r in s["virtuals"][0]["servers"]), "checked up")
    assert table() == before
    assert lab.ask(op="echo", sport=sport, data="adopted") == "adopted"
    return before


def check_verify_repairs(lab: Lab) -> str:
    """--verify-interval: a destination deleted behind the daemon's back comes back."""
    lab.stop()
    lab.start("--on-stop", "remove", "--verify-interval", "1")
    before = lab.wait_table(lambda t: dest("rs1") in t and dest("rs2") in t, "both in")
    # (this may be repaired before we could even look: the deletion succeeding is the proof)
    run("ipvsadm", "-d", "-t", f"{VIP}:80", "-r", f"{RIPS['rs1']}:80")
    lab.wait_table(lambda t: t == before, "the table is repaired")
    assert "changed behind our back" in lab.log(), lab.log()
    return before


def check_stop_remove(lab: Lab) -> str:
    code = lab.stop()
    assert code == 0, lab.log()
    seen = table()
    assert f"{VIP}:80" not in seen, seen
    return lab.log()


# a backup router whose primary (198.18.2.50) is absent: pulse activates after deadtime,
# long enough to see the standby's state first even under TCG
PULSE = (
    "primary = 198.18.2.50\nbackup = 198.18.2.1\nbackup_active = 1\nheartbeat = 1\n"
    "keepalive = 2\ndeadtime = 45\nnetwork = nat\nnat_router = 198.19.3.1 drs1a:1\n"
    "syncdaemon = 1\nsyncd_iface = dc1\nsyncd_id = 9\n"
)


def sync_daemons() -> str:
    return run("ipvsadm", "-L", "--daemon")


def check_pulse_sync_roles(lab: Lab) -> str:
    for role in ("master", "backup"):  # what earlier checks left (examples/lvs.cf's)
        subprocess.run(["ipvsadm", "--stop-daemon", role], capture_output=True)
    assert "sync daemon" not in sync_daemons(), sync_daemons()
    lab.config.write_text(PULSE + WEB.replace("eth0:1", "dc1:1"))
    lab.start()
    st = lab.wait(lambda s: s.get("pulse", {}).get("state", "starting") != "starting", "pulse")
    standby = sync_daemons()
    assert st["pulse"]["role"] == "backup", st["pulse"]
    assert st["pulse"]["state"] == "inactive", st["pulse"]  # (deadtime not over yet)
    assert "backup sync daemon (mcast=dc1, syncid=9" in standby, standby
    assert "master" not in standby, standby
    lab.wait(lambda s: s["pulse"]["state"] == "active", "the dead timer activates pulse")
    deadline = time.monotonic() + DEADLINE_S
    active = sync_daemons()
    while "master sync daemon (mcast=dc1, syncid=9" not in active:
        assert time.monotonic() < deadline, f"{active}\n{lab.log()}"
        time.sleep(0.5)
        active = sync_daemons()
    assert "backup" not in active, active
    assert lab.stop() == 0, lab.log()
    stopped = sync_daemons()  # pulse deactivates on SIGTERM: backup again
    assert "backup sync daemon (mcast=dc1, syncid=9" in stopped, stopped
    assert "master" not in stopped, stopped
    subprocess.run(["ipvsadm", "--stop-daemon", "backup"], capture_output=True)
    return f"standby:\n{standby}active:\n{active}stopped:\n{stopped}"


def run_checks(r, workdir: Path) -> None:
    """Run every check of :data:`NAMES` with guest.py's Runner ``r``."""
    lab = Lab(workdir)
    try:
        if not r.run("daemon-setup", lab.up):
            return
        if not r.run("daemon-start", check_start, lab):
            return
        r.run("daemon-server-leaves", check_leaves, lab)
        r.run("daemon-server-reenters", check_reenters, lab)
        r.run("daemon-reload", check_reload, lab)
        r.run("daemon-broken-reload", check_broken_reload, lab)
        r.run("daemon-udp-send-program-quiesce", check_udp_send_program_quiesce, lab)
        r.run("daemon-sigkill-adopt", check_sigkill_adopt, lab)
        r.run("daemon-verify-repairs", check_verify_repairs, lab)
        r.run("daemon-stop-remove", check_stop_remove, lab)
        r.run("daemon-pulse-sync-roles", check_pulse_sync_roles, lab)
    finally:
        lab.down()
