"""``make demo``: the whole router on examples/demo.cf, live, in about a minute.

Builds the failover lab (demo/lab.py: a client, two routers, three web servers on a
bridge, in network namespaces), starts both ``lvs-router run`` processes (pulse +
director + XDP dataplane, direct routing) and the web servers, and drives client
traffic (a new HTTP connection every 20 ms) while it shows the routers' status live:

1. traffic is spread over the three web servers by the active router;
2. one web server stops: the health checks take it out, traffic goes on without it;
   it comes back and is taken in again;
3. the active router is killed (SIGKILL, and its NIC goes with it, as a dead machine):
   the backup takes over; the gap the client saw is measured and printed;
4. the killed router restarts and stays standby (no failback).

Everything is removed at the end, also on Ctrl-C or failure.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from .lab import REALS, ROOT, VIP, Lab, first_success_after
from .netns import Topology

CONFIG = ROOT / "examples" / "demo.cf"
ROUTER_ARGS = ("--garp-count", "5", "--garp-interval", "0.2")
console = Console()


class Traffic:
    """The client's steady stream of connections, read on a thread."""

    def __init__(self, lab: Lab) -> None:
        self.attempts: list[list] = []
        self.proc = lab.client_ns.popen(
            sys.executable, "-m", "demo.client", "--forever", VIP, "80", "0.02", "0.9",
            text=True, cwd=str(ROOT),
        )  # fmt: skip
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            with self.lock:
                self.attempts.append(json.loads(line))

    def since(self, t: float) -> list[list]:
        with self.lock:
            return [a for a in self.attempts if a[0] >= t]

    def recent(self, seconds: float = 2.0) -> tuple[Counter, int]:
        got = self.since(time.monotonic() - seconds - 1.0)
        ok = Counter(a[3] for a in got if a[2])
        return ok, sum(1 for a in got if not a[2])


def view(lab: Lab, traffic: Traffic, phase: str, events: deque[str]) -> Group:
    t = Table(title=f"lvs-router demo — VIP {VIP}:80 (XDP, direct routing)", expand=True)
    for col in ("router", "pulse", "peer", "VIP", "rs1", "rs2", "rs3"):
        t.add_column(col)
    style = {"up": "green", "down": "red", "quiesced": "yellow"}
    for name in ("ra", "rb"):
        s = lab.status(name)
        if s is None:
            t.add_row(name, "[red]not running[/]", "", "", "", "", "")
            continue
        p = s.get("pulse", {})
        state = p.get("state", "?")
        states = {}
        for vs in s["virtuals"]:
            for rs in vs["servers"]:
                st = rs["state"]
                states[rs["name"]] = f"[{style.get(st, 'dim')}]{st}[/]"
        t.add_row(
            f"{name} ({p.get('role', '?')})",
            f"[bold green]{state}[/]" if state == "active" else state,
            p.get("peer", ""),
            "yes" if p.get("vips") else "",
            *(states.get(r, "") for r in REALS),
        )
    ok, failed = traffic.recent()
    served = ", ".join(f"{n}: {ok[n]}" for n in sorted(ok)) or "none"
    lines = "\n".join(events)
    return Group(
        t,
        Panel(f"client, last 2 s: {sum(ok.values())} ok ({served}), {failed} failed"),
        Panel(lines or "", title=f"[bold]{phase}[/]"),
    )


def main() -> int:
    events: deque[str] = deque(maxlen=8)
    work = Path(tempfile.mkdtemp(prefix="lvs-router-demo-"))
    topo = Topology()
    lab = Lab(topo, work)
    phase = "building the namespaces"
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        with console.status("building the namespaces and compiling the XDP program..."):
            lab.build()
            for name in REALS:
                lab.serve(name)
            lab.write_config(CONFIG.read_text())
            lab.start_router("ra", *ROUTER_ARGS)
            lab.start_router("rb", *ROUTER_ARGS)
            # normally ra (the master); under load the backup may start first
            lab.wait(
                "one router is active, the other standing by",
                lambda: {lab.pulse_state("ra"), lab.pulse_state("rb")} == {"active", "inactive"},
                timeout=120,
            )
            lab.wait(
                "both routers see the three web servers",
                lambda: lab.servers_up("ra") == set(REALS) == lab.servers_up("rb"),
            )
        traffic = Traffic(lab)

        def say(text: str) -> None:
            events.append(f"{time.monotonic() - started:5.1f} s  {text}")

        with Live(view(lab, traffic, phase, events), console=console, refresh_per_second=4) as live:

            def show(seconds: float) -> None:
                end = time.monotonic() + seconds
                while time.monotonic() < end:
                    live.update(view(lab, traffic, phase, events))
                    time.sleep(0.25)

            def until(what: str, predicate, timeout: float = 30.0) -> None:
                end = time.monotonic() + timeout
                while not predicate():
                    if time.monotonic() > end:
                        raise RuntimeError(f"timed out waiting until {what}")
                    live.update(view(lab, traffic, phase, events))
                    time.sleep(0.1)

            first = "ra" if lab.pulse_state("ra") == "active" else "rb"
            phase = f"1. traffic through the active router ({first})"
            say(f"{first} active, the other standing by; a new connection every 20 ms")
            show(5)

            phase = "2. a web server stops: the health checks take it out"
            lab.stop_server("rs2")
            say("rs2's web server stopped")
            until("rs2 is out", lambda: "rs2" not in lab.servers_up(first))
            say("rs2 taken out by the active router's checks (and the standby's)")
            show(4)
            lab.serve("rs2")
            say("rs2's web server started again")
            until("rs2 is back", lambda: "rs2" in lab.servers_up(first))
            say("rs2 taken in again")
            show(3)

            phase = "3. the active router dies"
            active = "ra" if lab.pulse_state("ra") == "active" else "rb"
            backup = "rb" if active == "ra" else "ra"
            t_fault = lab.kill_machine(active)
            say(f"{active} killed (SIGKILL) and its NIC down")
            until(f"{backup} is active", lambda: lab.pulse_state(backup) == "active")
            say(f"{backup} took over the VIP")
            until("the client is served again", lambda: first_success_after(
                traffic.since(t_fault), t_fault)[0] is not None)  # fmt: skip
            show(2)
            gap, lost = first_success_after(traffic.since(t_fault), t_fault)
            assert gap is not None
            say(f"[bold]gap: {gap * 1000:.0f} ms from the kill to the first new connection "
                f"served, {lost} connection attempts lost[/]")  # fmt: skip

            phase = "4. the killed router comes back: no failback"
            lab.link(active, up=True)
            lab.start_router(active, *ROUTER_ARGS)
            until(f"{active} is standing by", lambda: lab.pulse_state(active) == "inactive", 120)
            say(f"{active} restarted and stands by; {backup} keeps the VIP")
            show(3)
            phase = "done"
            live.update(view(lab, traffic, phase, events))
        total = traffic.since(0)
        console.print(
            f"[bold]demo done in {time.monotonic() - started:.0f} s[/]: "
            f"{sum(1 for a in total if a[2])} connections served, "
            f"{sum(1 for a in total if not a[2])} failed; failover gap {gap * 1000:.0f} ms "
            f"(keepalive 0.1 s, deadtime 0.3 s)"
        )
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: cleaning up[/]")
        return 130
    except Exception as err:
        console.print(f"[red]demo failed: {err}[/]")
        for r in lab.routers.values():
            console.print(f"--- {r.name} log (last lines)\n{r.log()[-1500:]}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the clean-up
        with console.status("cleaning up..."):
            lab.close()
            topo.close()
            subprocess.run(["rm", "-rf", str(work)], check=False)
        signal.signal(signal.SIGTERM, old_term)


if __name__ == "__main__":
    sys.exit(main())
