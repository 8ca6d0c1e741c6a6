"""Heartbeat packets: piranha's 4-byte magics and our authenticated extension.

Pure functions and one small stateful class (:class:`Verifier`, the replay state of
one peer); no sockets, no clock — the caller passes ``now``.

**piranha format** (spec §3.3). The payload is exactly four bytes: an ``unsigned int``
written with ``sendto(&magic, 4)``, so in the *sender's native byte order*. piranha
ran on x86, so 0xbdaddbda goes on the wire as ``da db ad bd``; that little-endian
form is what we send. We accept both byte orders on receipt: every magic's
byte-swapped value is distinct from every other magic, so a big-endian sender can
never be misread, only understood.

**authenticated format** (extended dialect, ours; docs/pulse.md has the diagram)::

    0      4   5     6         8          12        20          28                 60
    | LRHB | v | st  | 0 0     | key id   | seq     | time µs   | HMAC-SHA256(0..28) |

``v`` = 1, ``st`` 1 = running / 2 = stopped, ``key id`` the first four bytes of
SHA-256 of the key (so a peer with another key is reported as such, not as an
attack), ``seq`` a 64-bit sequence number, ``time µs`` the sender's wall clock in
microseconds since the epoch; integers big-endian. A receiver rejects a packet whose
MAC does not verify (forged), whose sequence number is not newer than the last one
accepted (replayed; an exact repeat of the last one is a *duplicate*, which the
private heartbeat path produces legitimately), or whose time is outside a window
around its own clock (stale). Sequence numbers start at the sender's clock in
microseconds, so a restarted sender still counts upwards without keeping state.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

# spec §3.3, "Magic values"
RUNNING_MAGIC = 0xBDADDBDA
STOPPED_MAGIC = 0xADBDDABD
FOS_RUNNING_MAGIC = 0xBEEFBABE
FOS_STOPPED_MAGIC = 0xDEADBEEF
FOS_STOPME_MAGIC = 0xDEADDADA
HOLD_MAGIC = 0xDEAFBABE
HELD_MAGIC = 0xDEAFDADA

PIRANHA_LEN = 4
AUTH_TAG = b"LRHB"
AUTH_VERSION = 1
AUTH_HEADER = struct.Struct("!4sBBH4sQQ")  # tag, version, state, reserved, key id, seq, time
AUTH_LEN = AUTH_HEADER.size + 32
MIN_KEY_LEN = 16
DEFAULT_WINDOW_S = 30.0


class PeerState(Enum):
    """What a valid heartbeat says about its sender."""

    RUNNING = "running"  # the sender is active (holds the VIPs)
    STOPPED = "stopped"  # the sender is inactive
    OTHER = "other"  # piranha's HOLD/HELD: accepted, re-arms the dead timer, no action


class Reject(Enum):
    """Why a packet was dropped; each is a counter in :class:`Counters`."""

    BAD_LENGTH = "bad_length"  # piranha: "bad heartbeat packet"
    INCOMPATIBLE = "incompatible"  # FOS magic or unknown value
    UNAUTHENTICATED = "unauthenticated"  # a plain packet while a key is configured
    WRONG_KEY = "wrong_key"  # authenticated with a key other than ours
    FORGED = "forged"  # the MAC does not verify
    REPLAYED = "replayed"  # sequence number older than the last accepted
    DUPLICATE = "duplicate"  # the last accepted packet again (private path copy)
    STALE = "stale"  # timestamp outside the window
    UNEXPECTED_SOURCE = "unexpected_source"  # not from the partner's addresses


_PIRANHA = {
    RUNNING_MAGIC: PeerState.RUNNING,
    STOPPED_MAGIC: PeerState.STOPPED,
    HOLD_MAGIC: PeerState.OTHER,
    HELD_MAGIC: PeerState.OTHER,
}


def encode(running: bool, byteorder: str = "little") -> bytes:
    """piranha's heartbeat: the running or stopped magic, 4 bytes in x86 order."""
    magic = RUNNING_MAGIC if running else STOPPED_MAGIC
    return magic.to_bytes(4, byteorder)  # type: ignore[arg-type]


def decode(payload: bytes) -> PeerState | Reject:
    """A piranha packet's meaning, in either byte order (spec §3.3 receive validation)."""
    if len(payload) != PIRANHA_LEN:
        return Reject.BAD_LENGTH
    for order in ("little", "big"):
        state = _PIRANHA.get(int.from_bytes(payload, order))  # type: ignore[arg-type]
        if state is not None:
            return state
    return Reject.INCOMPATIBLE


@dataclass(frozen=True, slots=True)
class Key:
    """A shared heartbeat key and its public 4-byte id."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_LEN:
            raise ValueError(f"heartbeat key too short: {len(self.secret)} < {MIN_KEY_LEN} bytes")

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(self.secret).digest()[:4]

    @classmethod
    def from_file(cls, path: str | Path) -> Key:
        """The key file's bytes, surrounding whitespace removed (so `echo` and editors
        that add a newline make the same key on both routers)."""
        return cls(Path(path).read_bytes().strip())


def encode_auth(key: Key, running: bool, seq: int, time_us: int) -> bytes:
    """An authenticated heartbeat (see the module docstring for the layout)."""
    state = 1 if running else 2
    header = AUTH_HEADER.pack(AUTH_TAG, AUTH_VERSION, state, 0, key.key_id, seq, time_us)
    return header + hmac.digest(key.secret, header, "sha256")


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The fields of an authenticated heartbeat whose MAC verified."""

    state: PeerState
    seq: int
    time_us: int


def decode_auth(key: Key, payload: bytes) -> Authenticated | Reject:
    """Check format, key id and MAC; replay and time checks are :class:`Verifier`'s."""
    if len(payload) == PIRANHA_LEN:
        return Reject.UNAUTHENTICATED
    if len(payload) != AUTH_LEN or payload[:4] != AUTH_TAG:
        return Reject.BAD_LENGTH
    header, tag = payload[: AUTH_HEADER.size], payload[AUTH_HEADER.size :]
    _, version, state, _reserved, key_id, seq, time_us = AUTH_HEADER.unpack(header)
    if version != AUTH_VERSION:
        return Reject.INCOMPATIBLE
    if key_id != key.key_id:
        return Reject.WRONG_KEY
    if not hmac.compare_digest(tag, hmac.digest(key.secret, header, "sha256")):
        return Reject.FORGED
    if state not in (1, 2):
        return Reject.INCOMPATIBLE
    return Authenticated(PeerState.RUNNING if state == 1 else PeerState.STOPPED, seq, time_us)


@dataclass(slots=True)
class Counters:
    """Packets accepted and rejected, by reason (shown by ``status()``)."""

    accepted: int = 0
    rejected: dict[Reject, int] = field(default_factory=lambda: dict.fromkeys(Reject, 0))

    def snapshot(self) -> dict[str, int]:
        return {"accepted": self.accepted} | {r.value: n for r, n in self.rejected.items()}


class Verifier:
    """Accepts or rejects the heartbeats of one peer and counts why.

    Without a key it speaks piranha's format only; with a key only the authenticated
    one, and it remembers the newest sequence number accepted. ``now`` is wall-clock
    seconds (the timestamps are the senders' wall clocks).
    """

    def __init__(self, key: Key | None = None, *, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.key = key
        self.window_us = int(window_s * 1_000_000)
        self.last_seq: int | None = None
        self.counters = Counters()

    def check(self, payload: bytes, now: float) -> PeerState | Reject:
        result = self._check(payload, now)
        if isinstance(result, Reject):
            self.counters.rejected[result] += 1
        else:
            self.counters.accepted += 1
        return result

    def reject_source(self) -> Reject:
        """Count a packet from an address that is not the partner's."""
        self.counters.rejected[Reject.UNEXPECTED_SOURCE] += 1
        return Reject.UNEXPECTED_SOURCE

    def _check(self, payload: bytes, now: float) -> PeerState | Reject:
        if self.key is None:
            return decode(payload)
        auth = decode_auth(self.key, payload)
        if isinstance(auth, Reject):
            return auth
        if abs(auth.time_us - int(now * 1_000_000)) > self.window_us:
            return Reject.STALE
        if self.last_seq is not None:
            if auth.seq == self.last_seq:
                return Reject.DUPLICATE
            if auth.seq < self.last_seq:
                return Reject.REPLAYED
        self.last_seq = auth.seq
        return auth.state


class Signer:
    """Makes our outgoing heartbeats: piranha's 4 bytes, or authenticated ones whose
    sequence numbers start at the clock in microseconds and only ever grow."""

    def __init__(self, key: Key | None = None) -> None:
        self.key = key
        self.seq = 0

    def packet(self, running: bool, now: float) -> bytes:
        if self.key is None:
            return encode(running)
        time_us = int(now * 1_000_000)
        self.seq = max(self.seq + 1, time_us)
        return encode_auth(self.key, running, self.seq, time_us)
