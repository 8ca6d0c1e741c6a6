"""FastReactor: bucketed timers and one-shot socket watches on a real event loop."""

from __future__ import annotations

import asyncio
import socket

from runtime.health.reactor import FastReactor, LoopReactor


def test_timers_fire_in_order_never_early_and_cancel() -> None:
    async def go() -> list[tuple[str, bool]]:
        loop = asyncio.get_running_loop()
        r = FastReactor(loop)
        fired: list[tuple[str, bool]] = []
        done = loop.create_future()
        t0 = r.time()

        def note(name: str, when: float) -> None:
            fired.append((name, r.time() >= when))

        for name, delay in (("c", 0.030), ("a", 0.010), ("b", 0.0105), ("x", 0.020)):
            handle = r.call_at(t0 + delay, note, name, t0 + delay)
            if name == "x":
                handle.cancel()
        r.call_at(t0 + 0.040, lambda: done.set_result(None))
        await done
        r.close()
        return fired

    assert asyncio.run(go()) == [("a", True), ("b", True), ("c", True)]


def test_a_timer_set_while_firing_runs_in_the_same_pass_or_later() -> None:
    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        r = FastReactor(loop)
        order: list[str] = []
        done = loop.create_future()

        def first() -> None:
            order.append("first")
            r.call_at(r.time() - 1, lambda: order.append("past"))  # already due
            r.call_at(r.time() + 0.01, lambda: (order.append("later"), done.set_result(None)))

        r.call_at(r.time() + 0.005, first)
        await done
        r.close()
        return order

    assert asyncio.run(go()) == ["first", "past", "later"]


def test_watches_are_one_shot_and_forgettable() -> None:
    async def go() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        results = []
        for reactor in (FastReactor(loop), LoopReactor(loop)):
            a, b = socket.socketpair()
            a.setblocking(False)
            seen: list[str] = []
            reactor.watch(a.fileno(), True, lambda _ev, s=seen: s.append("writable"))
            await asyncio.sleep(0.02)
            reactor.watch(a.fileno(), False, lambda _ev, s=seen: s.append("readable"))
            await asyncio.sleep(0.02)
            assert seen == ["writable"]  # nothing to read yet, and writable fired once
            b.send(b"x")
            await asyncio.sleep(0.02)
            reactor.watch(a.fileno(), False, lambda _ev, s=seen: s.append("again"))
            reactor.forget(a.fileno())
            await asyncio.sleep(0.02)
            a.close()
            b.close()
            results.append(seen)
            if isinstance(reactor, FastReactor):
                reactor.close()
        return results[0], results[1]

    fast, plain = asyncio.run(go())
    assert fast == plain == ["writable", "readable"]


def test_expiry_calls_due_owners_in_order_never_early_one_sweep_timer() -> None:
    class Owner:
        def __init__(self, name: str, seen: list, r: FastReactor, deadline: float) -> None:
            self.name = name
            self.seen = seen
            self.r = r
            self.deadline = deadline  # the limit in force; another makes entries stale

        def expired(self, deadline: float) -> None:
            # never early, but for the reactor's 1 µs slack (reactor._SLACK)
            self.seen.append((self.name, deadline, self.r.time() >= deadline - 1e-6))

    async def go() -> list:
        loop = asyncio.get_running_loop()
        r = FastReactor(loop)
        seen: list = []
        expiry = r.expiry(0.02)
        assert r.expiry(0.02) is expiry and r.expiry(0.03) is not expiry
        t0 = r.time()
        owners = []
        for i, name in enumerate("abcdx"):
            deadline = t0 + 0.02 + i * 0.003
            owners.append(Owner(name, seen, r, deadline))
            expiry.add(deadline, owners[-1])
        owners[-1].deadline = 0.0  # x ended before its limit: its entry is stale
        # one reactor timer for the queue's front, not one per entry
        assert sum(len(b) for b in r._buckets.values()) == 1
        await asyncio.sleep(0.1)
        when = r.time() + 0.01
        expiry.add(when, Owner("e", seen, r, when))  # empty again: re-armed
        await asyncio.sleep(0.05)
        r.close()
        return seen

    seen = asyncio.run(go())
    assert [name for name, _, _ in seen] == ["a", "b", "c", "d", "e"]
    assert all(on_time for _, _, on_time in seen)
    assert [d for _, d, _ in seen] == sorted(d for _, d, _ in seen)
