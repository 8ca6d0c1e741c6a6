"""The in-VM half of the IPVS tests: runs inside the Debian kernel under virtme-ng.

``guest.sh`` prepares the VM (ip_vs modules, a dummy interface with a default route so
that IPVS accepts destinations, dummy ``eth0``/``eth1`` for the sync daemon) and runs
this file with the project's interpreter::

    python tests/vm/guest.py REPORT.json SAMPLES_DIR

Every check records ``{"ok": bool, "detail": str}`` under its name in REPORT.json,
rewritten after each check so that a crash keeps what was done; the host-side tests
(test_ipvs_vm.py) assert one pytest test per check. :func:`check_names` is the
list both sides agree on. This file is not collected by pytest.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from compiler import Dialect, Source, compile_file, compile_source  # noqa: E402
from compiler.emit import emit  # noqa: E402
from compiler.emit.ipvsadm import Destination, Service, lines  # noqa: E402
from compiler.model import Network, Protocol  # noqa: E402
from dataplane.reconcile import (  # noqa: E402
    AddDest,
    AddService,
    IPVSState,
    Overrides,
    SyncState,
    desired_state,
    reconcile,
    service_key,
)

BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- configs


def configs(samples_dir: Path, workdir: Path) -> list[Path]:
    """Every config applied to the kernel: shared samples, the example, golden, generated
    (``generated.cf`` in the VM's writable work directory)."""
    return [
        *sorted(samples_dir.glob("*.cf")),
        ROOT / "examples" / "lvs.cf",
        *sorted((ROOT / "tests" / "golden" / "configs").glob("*.cf")),
        workdir / "generated.cf",
    ]


def config_label(path: Path) -> str:
    return path.stem if path != ROOT / "examples" / "lvs.cf" else "examples-lvs"


def generated_config(n: int = 60) -> str:
    """A larger config mixing every kind of service: TCP/UDP/fwmark, NAT/DR/tunnel,
    persistence with and without a mask, weights 0-65535, a few inactive entries."""
    out = ["primary = 198.18.0.2", "service = lvs", "network = direct"]
    out += ["nat_router = 198.19.255.1 eth1:1", ""]
    nets = ["nat", "direct", "tunnel"]
    scheds = ["rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq"]
    for i in range(n):
        vip = f"198.18.{10 + i // 200}.{1 + i % 200}"
        body = [f"virtual g{i} {{", f" active = {0 if i % 17 == 5 else 1}"]
        body.append(f" address = {vip} eth0:1")
        if i % 7 == 3:
            body.append(f" fwmark = {1000 + i}")
        if i % 5 == 1:
            body += [" protocol = udp", ' expect = "*"']
        body.append(f" port = {1000 + i}")
        body.append(f" network = {nets[i % 3]}")
        body.append(f" scheduler = {scheds[i % len(scheds)]}")
        if i % 4 == 2:
            body.append(f" persistent = {30 + i}")
            if i % 8 == 2:
                body.append(" pmask = 255.255.255.0")
        for j in range(1 + i % 4):
            body += [
                f" server r{j} {{",
                f"  address = 198.19.{i % 250}.{10 + j}",
                f"  active = {0 if (i + j) % 11 == 4 else 1}",
                f"  weight = {[1, 0, 100, 65535][j % 4]}",
                f"  port = {2000 + j}",
                " }",
            ]
        body.append("}")
        out += body
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- transitions

BASE = """primary = 198.18.0.2
network = nat
nat_router = 198.19.0.1 eth1:1
{extra_global}
virtual web {{
 active = 1
 address = 198.18.0.10 eth0:1
 port = 80
 scheduler = {web_sched}
{web_extra} sorry_server = 198.19.0.99
 server a {{
  address = 198.19.0.11
  active = 1
  weight = 10
 }}
 server b {{
  address = 198.19.0.12
  active = 1
  weight = 20
 }}
}}
virtual dns {{
 active = 1
 address = 198.18.0.20 eth0:1
 protocol = udp
 port = 53
 scheduler = rr
 server a {{
  address = 198.19.0.21
  active = 1
 }}
 server b {{
  address = 198.19.0.22
  active = 1
  weight = {dns_b_weight}
 }}
}}
virtual http {{
 active = 1
 address = 198.18.0.30 eth0:1
 fwmark = 80
 network = direct
 scheduler = {fwm_sched}
 server a {{
  address = 198.19.0.31
  active = 1
 }}
}}
virtual https {{
 active = 1
 address = 198.18.0.30 eth0:1
 fwmark = 80
 port = 443
 network = direct
 server a {{
  address = 198.19.0.31
  active = 1
 }}
}}
{more}"""

MAIL = """virtual mail {
 active = 1
 address = 198.18.0.25 eth0:1
 port = 25
 server m {
  address = 198.19.0.41
  active = 1
 }
}
"""


def base(**kw: str) -> str:
    values = {
        "extra_global": "",
        "web_sched": "wlc",
        "web_extra": "",
        "dns_b_weight": "1",
        "fwm_sched": "wlc",
        "more": "",
    }
    values.update(kw)
    return BASE.format(**values)


def down(*pairs: tuple[str, str]) -> Overrides:
    return Overrides(down=frozenset(pairs))


# (name, config text, overrides, the exact operations expected from the previous step)
TRANSITIONS: list[tuple[str, str, Overrides, list[str]]] = [
    (
        "add-service",
        base(more=MAIL),
        Overrides(),
        ["-A -t 198.18.0.25:25 -s wlc", "-a -t 198.18.0.25:25 -r 198.19.0.41:25 -m -w 1"],
    ),
    ("remove-service", base(), Overrides(), ["-D -t 198.18.0.25:25"]),
    ("scheduler-change", base(web_sched="rr"), Overrides(), ["-E -t 198.18.0.10:80 -s rr"]),
    (
        "persistence-on",
        base(web_sched="rr", web_extra=" persistent = 120\n pmask = 255.255.255.0\n"),
        Overrides(),
        ["-E -t 198.18.0.10:80 -s rr -p 120 -M 255.255.255.0"],
    ),
    ("persistence-off", base(web_sched="rr"), Overrides(), ["-E -t 198.18.0.10:80 -s rr"]),
    (
        "server-down",
        base(web_sched="rr"),
        down(("web", "b")),
        ["-d -t 198.18.0.10:80 -r 198.19.0.12:80"],
    ),
    (
        "server-up",
        base(web_sched="rr"),
        Overrides(),
        ["-a -t 198.18.0.10:80 -r 198.19.0.12:80 -m -w 20"],
    ),
    (
        "quiesce",
        base(web_sched="rr"),
        Overrides(quiesced=frozenset({("web", "a")})),
        ["-e -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 0"],
    ),
    (
        "weight-change",
        base(web_sched="rr"),
        Overrides(weights={("web", "a"): 7}),
        ["-e -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 7"],
    ),
    (
        "udp-weight-from-config",
        base(web_sched="rr", dns_b_weight="5"),
        Overrides(weights={("web", "a"): 7}),
        ["-e -u 198.18.0.20:53 -r 198.19.0.22:53 -m -w 5"],
    ),
    (
        "fwmark-edit-and-server-down",
        base(web_sched="rr", dns_b_weight="5", fwm_sched="sh"),
        Overrides(weights={("web", "a"): 7}, down=frozenset({("https", "a")})),
        ["-d -f 80 -r 198.19.0.31:443", "-E -f 80 -s sh"],
    ),
    (
        "sorry-server-in",
        base(web_sched="rr", dns_b_weight="5", fwm_sched="sh"),
        Overrides(
            down=frozenset({("https", "a"), ("web", "a"), ("web", "b")}), sorry=frozenset({"web"})
        ),
        [
            "-d -t 198.18.0.10:80 -r 198.19.0.11:80",
            "-d -t 198.18.0.10:80 -r 198.19.0.12:80",
            "-a -t 198.18.0.10:80 -r 198.19.0.99:80 -m -w 1",
        ],
    ),
    (
        "back-to-base",
        base(),
        Overrides(),
        [
            "-d -t 198.18.0.10:80 -r 198.19.0.99:80",
            "-E -t 198.18.0.10:80 -s wlc",
            "-E -f 80 -s wlc",
            "-e -u 198.18.0.20:53 -r 198.19.0.22:53 -m -w 1",
            "-a -t 198.18.0.10:80 -r 198.19.0.11:80 -m -w 10",
            "-a -t 198.18.0.10:80 -r 198.19.0.12:80 -m -w 20",
            "-a -f 80 -r 198.19.0.31:443 -g -w 1",
        ],
    ),
]

FAULTS = ["fault-unknown-scheduler", "fault-unknown-scheduler-pipelined", "fault-address-family"]


def check_names(samples_dir: Path) -> list[str]:
    names = ["ipvs-family"]
    names += [f"apply[{config_label(p)}]" for p in configs(samples_dir, Path("."))]
    names += ["show-ipvsadm-is-ipvsadm-save", "timeouts-and-sync-daemon"]
    names += ["transitions-baseline"] + [f"transition[{t[0]}]" for t in TRANSITIONS]
    names += FAULTS
    names += ["traffic-setup", "traffic[nat]", "traffic[direct]"]
    from tests.vm.guest_daemon import NAMES as daemon_checks

    names += daemon_checks
    return names


# --------------------------------------------------------------------------- helpers


def sh(*argv: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, input=input, capture_output=True, text=True)


def cli(*argv: str) -> subprocess.CompletedProcess:
    """``lvs-router ARGV`` run in this process (a new interpreter costs tens of seconds
    under TCG); check_show runs the installed console script once as a process."""
    import contextlib
    import io

    from runtime.cli import main as router_main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = router_main(list(argv))
    return subprocess.CompletedProcess(["lvs-router", *argv], rc, out.getvalue(), err.getvalue())


def ipvsadm_save() -> str:
    r = sh("ipvsadm", "-S", "-n")
    assert r.returncode == 0, r.stderr
    return r.stdout


def compiled(text: str):
    r = compile_source(Source("vm.cf", text), Dialect.EXTENDED, run_checks=False)
    assert r.ok, [d.message for d in r.errors]
    return r.config


def table_text(state: IPVSState) -> list[str]:
    return sorted(line for svc in state.services for line in lines(svc))


def same_lines(expected: list[str], seen: str) -> None:
    got = sorted(seen.splitlines())
    assert got == sorted(expected), (
        "ipvsadm-save -n differs\n  missing: "
        + repr(sorted(set(expected) - set(got)))
        + "\n  extra: "
        + repr(sorted(set(got) - set(expected)))
    )


def traffic() -> None:
    """New connections through the TCP and UDP services (local clients go through
    IPVS at LOCAL_OUT); the real servers are unreachable, the SYN/datagram suffices."""
    for _ in range(3):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("198.18.0.10", 80))
        s.close()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"x", ("198.18.0.20", 53))
        u.close()
    # the counters netlink reports are summed from per-CPU counters by the rate
    # estimator, every 2 s (kernel 6.1): wait for it
    time.sleep(4.5)


# --------------------------------------------------------------------------- checks


class Runner:
    def __init__(self, report: Path) -> None:
        self.report = report
        self.results: dict[str, dict] = {}

    def run(self, name: str, fn, *args) -> bool:
        t0 = time.monotonic()
        try:
            detail = fn(*args) or ""
            ok = True
        except Exception:
            detail = traceback.format_exc()
            ok = False
        self.results[name] = {
            "ok": ok,
            "detail": str(detail),
            "seconds": round(time.monotonic() - t0, 3),
        }
        self.report.write_text(json.dumps(self.results, indent=1))
        print(f"{'ok  ' if ok else 'FAIL'} {name}", flush=True)
        return ok


def check_family() -> str:
    from dataplane.ipvs import IPVSKernel

    with IPVSKernel() as k:
        k.read()
    return sh("ipvsadm", "--version").stdout.strip()


def check_apply(path: Path) -> str:
    """``lvs-router apply`` the config; the kernel then shows what lvs-compile emits."""
    from dataplane.ipvs import IPVSKernel

    r = cli("apply", "--dataplane", "ipvs", str(path))
    assert r.returncode == 0, f"apply exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    cfg = compile_file(str(path)).config
    same_lines(emit("ipvsadm", cfg).splitlines(), ipvsadm_save())
    with IPVSKernel() as k:
        again = reconcile(desired_state(cfg), k.read().state)
    assert again == (), f"a second reconcile is not empty: {[str(o) for o in again]}"
    return f"{len(r.stdout.splitlines())} ops"


def check_show() -> str:
    example = ROOT / "examples" / "lvs.cf"
    r = sh(str(BIN / "lvs-router"), "apply", "--dataplane", "ipvs", str(example))
    assert r.returncode == 0, r.stderr
    shown = cli("show", "--dataplane", "ipvs", "--format", "ipvsadm")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == ipvsadm_save(), shown.stdout + "\n---\n" + ipvsadm_save()
    table = cli("show", "--dataplane", "ipvs")
    assert table.returncode == 0 and "198.19.0.12:8080" in table.stdout, table.stdout
    # a dry run on an up-to-date kernel prints nothing
    dry = cli("apply", "--dataplane", "ipvs", "--dry-run", str(example))
    assert dry.returncode == 0 and dry.stdout == "", dry.stdout + dry.stderr
    return table.stdout


def check_timeouts_and_daemon() -> str:
    from dataplane.ipvs import IPVSKernel, converge

    # examples/lvs.cf is applied (check_show): --set 900 120 300, master on eth1 id 7
    t = sh("ipvsadm", "-L", "--timeout").stdout
    assert "900 120 300" in t, t
    d = sh("ipvsadm", "-L", "--daemon").stdout
    assert "master sync daemon (mcast=eth1, syncid=7" in d, d
    cfg = compile_file(str(ROOT / "examples" / "lvs.cf")).config
    with IPVSKernel() as k:
        ops = converge(k, desired_state(cfg, role=SyncState.BACKUP))
    assert [str(o) for o in ops] == [
        "--stop-daemon master",
        "--start-daemon backup --mcast-interface eth1 --syncid 7",
    ], [str(o) for o in ops]
    d = sh("ipvsadm", "-L", "--daemon").stdout
    assert "backup sync daemon (mcast=eth1, syncid=7" in d and "master" not in d, d
    with IPVSKernel() as k:
        converge(k, desired_state(cfg, role=SyncState.MASTER))
    return t + d


class Transitions:
    """One kernel, a chain of states: each step's exact ops, and counters kept."""

    def __init__(self) -> None:
        self.before: dict[tuple, int] = {}

    def baseline(self) -> str:
        from dataplane.ipvs import IPVSKernel, converge

        with IPVSKernel() as k:
            converge(k, desired_state(compiled(base())))
            traffic()
            seen = k.read()
        self.before = {key: st.conns for key, st in seen.stats.items() if len(key) != 2}
        busy = {k: v for k, v in self.before.items() if v}
        assert len(busy) >= 2, f"no connection counted on the TCP/UDP services: {self.before}"
        return repr(busy)

    def step(self, text: str, ov: Overrides, expected: list[str]) -> str:
        from dataplane.ipvs import IPVSKernel, converge

        want = desired_state(compiled(text), ov)
        with IPVSKernel() as k:
            ops = converge(k, want)
            seen = k.read()
        got = [str(o) for o in ops]
        assert got == expected, f"operations\n  got:      {got}\n  expected: {expected}"
        same_lines(table_text(want), ipvsadm_save())
        # every service that exists before and after kept its counters: never re-added
        kept = 0
        for key, conns in self.before.items():
            if key in seen.stats:
                now = seen.stats[key].conns
                assert now == conns, f"{key}: conns {conns} -> {now} (re-created?)"
                kept += conns > 0
        assert kept >= 2, "the busy TCP/UDP services lost their counters"
        for key, st in seen.stats.items():
            if len(key) != 2:
                self.before.setdefault(key, st.conns)
        return " | ".join(got)


def check_fault_scheduler(window: int = 1) -> str:
    """A netlink refusal in the middle: stop there, table consistent, then converge.

    With ``window > 1`` the last request was already written: the kernel tries it too
    (ESRCH, its service does not exist) and it is reported as not applied."""
    from dataplane.ipvs import ApplyError, IPVSKernel, converge

    want = desired_state(compiled(base()))
    good = Service(
        fwmark=0,
        family=4,
        protocol=Protocol.TCP,
        address=IPv4Address("198.18.0.77"),
        port=80,
        scheduler="rr",
        persistent=0,
        pmask=None,
        destinations=(),
        virtuals=(),
    )
    bad = replace(good, port=81, scheduler="nosuch")
    dest = Destination(IPv4Address("198.19.0.77"), 80, Network.NAT, 1)
    ops = [AddService(good), AddDest(good, dest), AddService(bad), AddDest(bad, dest)]
    with IPVSKernel() as k:
        converge(k, want)
        before = ipvsadm_save()
        try:
            k.apply(ops, window=window)
        except ApplyError as err:
            failure = err
        else:
            raise AssertionError("the kernel accepted scheduler `nosuch`")
        assert failure.op == ops[2] and failure.errno == errno.ENOENT, str(failure)
        assert failure.applied == tuple(ops[:2]) and failure.remaining == (ops[3],)
        assert "ip_vs_nosuch" in str(failure), str(failure)
        saved = ipvsadm_save()
        # consistent: the old table plus exactly the two applied operations
        same_lines([*before.splitlines(), "-A -t 198.18.0.77:80 -s rr", str(ops[1])], saved)
        healed = converge(k, want)
    assert [str(o) for o in healed] == ["-D -t 198.18.0.77:80"], [str(o) for o in healed]
    same_lines(table_text(want), ipvsadm_save())
    return str(failure)


def check_fault_family() -> str:
    from dataplane.ipvs import ApplyError, IPVSKernel, converge

    want = desired_state(compiled(base()))
    web = next(s for s in want.services if s.port == 80 and not s.fwmark)
    v6 = Destination(IPv6Address("2001:db8::77"), 80, Network.NAT, 1)
    with IPVSKernel() as k:
        converge(k, want)
        try:
            k.apply([AddDest(replace(web, destinations=()), v6)])
        except ApplyError as err:
            failure = err
        else:
            raise AssertionError("the kernel accepted an IPv6 NAT server in an IPv4 service")
        assert failure.errno == errno.EINVAL and failure.applied == (), str(failure)
        assert reconcile(want, k.read().state) == ()
    same_lines(table_text(want), ipvsadm_save())
    return str(failure)


def main(report: Path, samples_dir: Path) -> int:
    (report.parent / "generated.cf").write_text(generated_config())
    r = Runner(report)
    if not r.run("ipvs-family", check_family):
        return 1
    for path in configs(samples_dir, report.parent):
        r.run(f"apply[{config_label(path)}]", check_apply, path)
    r.run("show-ipvsadm-is-ipvsadm-save", check_show)
    r.run("timeouts-and-sync-daemon", check_timeouts_and_daemon)
    t = Transitions()
    if r.run("transitions-baseline", t.baseline):
        for name, text, ov, expected in TRANSITIONS:
            r.run(f"transition[{name}]", t.step, text, ov, expected)
    r.run("fault-unknown-scheduler", check_fault_scheduler)
    r.run("fault-unknown-scheduler-pipelined", check_fault_scheduler, 8)
    r.run("fault-address-family", check_fault_family)

    from tests.vm import traffic

    topo = traffic.Topology(report.parent)
    try:
        if r.run("traffic-setup", topo.up):
            nat = [("198.18.1.100", "tcp"), ("198.18.1.100", "udp")]
            r.run("traffic[nat]", lambda: traffic.check(topo, compiled(traffic.NAT), nat))
            dr = [("198.18.1.101", "tcp")]
            r.run("traffic[direct]", lambda: traffic.check(topo, compiled(traffic.DR), dr))
    finally:
        topo.down()

    from tests.vm import guest_daemon

    guest_daemon.run_checks(r, report.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))


__all__ = ["check_names", "configs", "service_key"]
