"""Heartbeat packets (piranha-spec.md §3.3) and the authenticated extension."""

from __future__ import annotations

import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.pulse import wire
from runtime.pulse.wire import Key, PeerState, Reject, Signer, Verifier

pytestmark = pytest.mark.unit

KEY = Key(b"0123456789abcdef-shared-secret")
OTHER_KEY = Key(b"another key, also long enough")
NOW = 1_790_000_000.0  # wall-clock seconds


def test_piranha_magics_in_x86_byte_order() -> None:
    """§3.3: 4 bytes, the sender's native order; 0xbdaddbda is ``da db ad bd`` on x86."""
    assert wire.encode(True) == bytes.fromhex("dadbadbd")
    assert wire.encode(False) == bytes.fromhex("bddabdad")
    assert wire.encode(True, "big") == bytes.fromhex("bdaddbda")


@pytest.mark.parametrize("order", ["little", "big"])
def test_decode_both_byte_orders(order: str) -> None:
    """§3.3 magic table: running and stopped, from a little- or big-endian piranha."""
    assert wire.decode(wire.RUNNING_MAGIC.to_bytes(4, order)) is PeerState.RUNNING
    assert wire.decode(wire.STOPPED_MAGIC.to_bytes(4, order)) is PeerState.STOPPED
    assert wire.decode(wire.HOLD_MAGIC.to_bytes(4, order)) is PeerState.OTHER
    assert wire.decode(wire.HELD_MAGIC.to_bytes(4, order)) is PeerState.OTHER


def test_byte_swapped_magics_never_collide() -> None:
    """Accepting both orders is safe only if no magic's swap is another magic."""
    magics = [v for k, v in vars(wire).items() if k.endswith("_MAGIC")]
    swapped = {int.from_bytes(m.to_bytes(4, "little"), "big") for m in magics}
    assert not swapped & set(magics)


@pytest.mark.parametrize(
    "payload,reason",
    [
        (b"", Reject.BAD_LENGTH),
        (bytes.fromhex("dadbad"), Reject.BAD_LENGTH),
        (bytes.fromhex("dadbadbd00"), Reject.BAD_LENGTH),
        (wire.FOS_RUNNING_MAGIC.to_bytes(4, "little"), Reject.INCOMPATIBLE),
        (wire.FOS_STOPPED_MAGIC.to_bytes(4, "little"), Reject.INCOMPATIBLE),
        (wire.FOS_STOPME_MAGIC.to_bytes(4, "little"), Reject.INCOMPATIBLE),
        (b"\x00\x00\x00\x00", Reject.INCOMPATIBLE),
    ],
)
def test_piranha_receive_validation(payload: bytes, reason: Reject) -> None:
    """§3.3 receive validation: length must be 4 ("bad heartbeat packet"); FOS and
    unknown values are "Incompatible heartbeat received"."""
    assert wire.decode(payload) is reason


@given(st.binary(max_size=100))
def test_decoders_never_raise(payload: bytes) -> None:
    """Anything off the network is answered with a state or a reason, never a crash."""
    wire.decode(payload)
    wire.decode_auth(KEY, payload)
    Verifier(KEY).check(payload, NOW)
    Verifier().check(payload, NOW)


def test_authenticated_layout_byte_for_byte() -> None:
    """docs/pulse.md's diagram: tag, version, state, reserved, key id, seq, time, MAC."""
    pkt = wire.encode_auth(KEY, True, seq=0x0102030405060708, time_us=0x1112131415161718)
    key_id = hashlib.sha256(KEY.secret).digest()[:4]
    header = b"LRHB" + b"\x01" + b"\x01" + b"\x00\x00" + key_id
    header += bytes.fromhex("0102030405060708") + bytes.fromhex("1112131415161718")
    assert len(pkt) == wire.AUTH_LEN == 60
    assert pkt == header + hmac.new(KEY.secret, header, "sha256").digest()
    assert wire.encode_auth(KEY, False, 1, 2)[5] == 2


def test_authenticated_round_trip() -> None:
    for running in (True, False):
        pkt = wire.encode_auth(KEY, running, 7, 99)
        assert wire.decode_auth(KEY, pkt) == wire.Authenticated(
            PeerState.RUNNING if running else PeerState.STOPPED, 7, 99
        )


def test_forged_packets_are_rejected_and_counted() -> None:
    """Extension: any change to header or MAC fails verification ("forged")."""
    v = Verifier(KEY)
    good = wire.encode_auth(KEY, True, 1000, int(NOW * 1e6))
    for i in range(len(good)):
        if 8 <= i < 12:  # the key id: a different id is reported as wrong_key
            continue
        bad = bytearray(good)
        bad[i] ^= 0x01
        expected = Reject.BAD_LENGTH if i < 4 else Reject.FORGED
        if i == 4:
            expected = Reject.INCOMPATIBLE  # version
        assert v.check(bytes(bad), NOW) is expected, i
    assert v.counters.rejected[Reject.FORGED] == len(good) - 4 - 4 - 1
    assert v.counters.accepted == 0
    assert v.check(good, NOW) is PeerState.RUNNING


def test_a_state_flip_without_the_key_is_forged() -> None:
    """Turning RUNNING into STOPPED (the attack that would force a takeover) needs
    a new MAC; without the key it cannot be made."""
    good = wire.encode_auth(KEY, True, 5, int(NOW * 1e6))
    flipped = good[:5] + b"\x02" + good[6:]
    assert Verifier(KEY).check(flipped, NOW) is Reject.FORGED


def test_wrong_key_and_unauthenticated() -> None:
    """A peer with another key, and a plain piranha packet while a key is set."""
    v = Verifier(KEY)
    assert v.check(wire.encode_auth(OTHER_KEY, True, 1, int(NOW * 1e6)), NOW) is Reject.WRONG_KEY
    assert v.check(wire.encode(True), NOW) is Reject.UNAUTHENTICATED
    assert Verifier().check(wire.encode_auth(KEY, True, 1, 1), NOW) is Reject.BAD_LENGTH


def test_replayed_duplicate_and_newer() -> None:
    """Extension: the sequence number must grow; an old one is "replayed", the last
    one again (the private path's copy) a "duplicate"; both dropped, counted apart."""
    v = Verifier(KEY)
    t = int(NOW * 1e6)
    p1, p2, p3 = (wire.encode_auth(KEY, True, s, t) for s in (10, 11, 12))
    assert v.check(p2, NOW) is PeerState.RUNNING
    assert v.check(p2, NOW) is Reject.DUPLICATE
    assert v.check(p1, NOW) is Reject.REPLAYED
    assert v.check(p3, NOW) is PeerState.RUNNING
    assert v.check(p2, NOW) is Reject.REPLAYED
    snap = v.counters.snapshot()
    assert (snap["accepted"], snap["duplicate"], snap["replayed"]) == (2, 1, 2)


def test_out_of_window_is_stale() -> None:
    """Extension: the timestamp must be within the window of our clock (either side)."""
    v = Verifier(KEY, window_s=2.0)
    at = lambda dt, seq: wire.encode_auth(KEY, True, seq, int((NOW + dt) * 1e6))  # noqa: E731
    assert v.check(at(-2.5, 1), NOW) is Reject.STALE
    assert v.check(at(+2.5, 2), NOW) is Reject.STALE
    assert v.check(at(-1.9, 3), NOW) is PeerState.RUNNING
    assert v.check(at(+1.9, 4), NOW) is PeerState.RUNNING
    assert v.counters.rejected[Reject.STALE] == 2


def test_signer_sequence_starts_at_the_clock_and_only_grows() -> None:
    """A restarted sender (a new Signer, later) still sends numbers the peer has not
    seen, with no state on disk; within one sender they grow even if the clock
    stands still or steps back."""
    s = Signer(KEY)
    seqs = [wire.decode_auth(KEY, s.packet(True, t)).seq for t in (NOW, NOW, NOW - 5)]
    assert seqs[0] == int(NOW * 1e6) and seqs[1] == seqs[0] + 1 and seqs[2] == seqs[0] + 2
    restarted = Signer(KEY)
    v = Verifier(KEY)
    assert v.check(s.packet(True, NOW + 1), NOW + 1) is PeerState.RUNNING
    assert v.check(restarted.packet(False, NOW + 2), NOW + 2) is PeerState.STOPPED


def test_signer_without_key_is_piranha() -> None:
    assert Signer().packet(True, NOW) == bytes.fromhex("dadbadbd")
    assert Signer().packet(False, NOW) == bytes.fromhex("bddabdad")


def test_keys(tmp_path) -> None:
    """Key files: surrounding whitespace ignored; too short refused."""
    f = tmp_path / "hb.key"
    f.write_bytes(b"  " + KEY.secret + b"\n")
    assert Key.from_file(f) == KEY
    with pytest.raises(ValueError):
        Key(b"short")
    assert KEY.key_id != OTHER_KEY.key_id and len(KEY.key_id) == 4
    assert struct.calcsize("!4sBBH4sQQ") == wire.AUTH_HEADER.size == 28
