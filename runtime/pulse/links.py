"""monitor_links (spec §3.7): watch the link state of the NICs that hold this
router's public and private addresses.

piranha read ETHTOOL_GLINK/MII before every select(); we poll netlink (IFF_UP,
carrier and operstate) on a short period, which sees the same faults: an interface
set down, a cable pulled (carrier lost), a veth whose peer went down. The verdict
goes to the state machine as one boolean: every watched link is up, or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from .vip import Netlink


@dataclass
class LinkWatcher:
    """Polls ``devices``; calls ``on_change(ok, down)`` when the verdict changes
    (and once at the first poll, so the machine starts from the truth)."""

    devices: tuple[str, ...]
    netlink: Netlink
    period: float = 0.2
    ok: bool | None = None
    down: tuple[str, ...] = field(default=())

    @classmethod
    def for_devices(cls, devices: Iterable[str], netlink: Netlink, period: float) -> LinkWatcher:
        return cls(tuple(dict.fromkeys(devices)), netlink, period)

    def poll(self) -> tuple[bool, tuple[str, ...]]:
        """One check of every device: (all up, the ones that are down)."""
        down = tuple(d for d in self.devices if not self.netlink.link_up(d))
        return not down, down

    async def run(self, on_change: Callable[[bool, tuple[str, ...]], Awaitable[None]]) -> None:
        while True:
            ok, down = await asyncio.to_thread(self.poll)
            if ok != self.ok:
                self.ok, self.down = ok, down
                await on_change(ok, down)
            await asyncio.sleep(self.period)
