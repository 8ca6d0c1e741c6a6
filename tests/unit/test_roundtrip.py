"""The lvs.cf emitter against the parser: ``parse(format(m)) == m``.

Models are generated over the model dataclasses as the parser can produce them (so
the ``primary_private`` derivation, "unset" netmask spellings and the rule that a
virtual's ``network`` differs from the global one are respected), with the awkward
values a real file can hold: host names, IPv6, empty strings, blanks, tabs and one
kind of quote inside values, single-quoted send strings, fractional seconds. Model
equality ignores spans by design. Every shared sample is also formatted twice to
check the canonical text is a fixed point.
"""

from __future__ import annotations

import string
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import Dialect, Source, compile_file, compile_source
from compiler.emit import lvscf
from compiler.model import (
    Config,
    FailoverService,
    HostDevice,
    Hostname,
    Network,
    Protocol,
    RealServer,
    Scheduler,
    ServiceType,
    VirtualService,
)
from tests.conftest import SAMPLES

pytestmark = pytest.mark.unit

QSTRINGS = ("send_program", "send", "expect", "start_cmd", "stop_cmd")

# ---------------------------------------------------------------------- strategies

ipv4 = st.integers(0, 2**32 - 1).map(IPv4Address)
ipv4_nonzero = st.integers(1, 2**32 - 1).map(IPv4Address)
ipv6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.sampled_from([0, 1, 0xFFFF_0A00_0001, 0x2001_0DB8 << 96]),
).map(IPv6Address)
_label = r"[a-z](?:[a-z0-9-]{0,6}[a-z0-9])?"
hostname = st.from_regex(rf"{_label}(?:\.{_label}){{0,2}}", fullmatch=True).map(Hostname)
host = st.one_of(ipv4, ipv6, hostname)
host_nonzero = st.one_of(ipv4_nonzero, ipv6, hostname)
# piranha tokens: no blanks, quotes or braces
token = st.text(string.ascii_letters + string.digits + "_.:-/@+%=#,", min_size=1, max_size=10)
# free text for strings: anything but line ends and NUL (and surrogates)
text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"),
    max_size=16,
)
blanky = st.text(" \t\"'ab\\#=", max_size=8)


def _bare(v: str) -> bool:
    return bool(v) and not any(c in " \t" for c in v) and v[0] not in "\"'"


def _writable_string(v: str) -> bool:
    """Can lvs.cf spell this plain string (``rsh_command``, ``load_monitor``...)?"""
    return _bare(v) or not ('"' in v and "'" in v)


string_value = st.one_of(text, blanky).filter(_writable_string)
seconds = st.one_of(
    st.integers(0, 10**6),
    st.floats(0, 1e6, allow_nan=False).filter(lambda f: not f.is_integer()),
)
port = st.integers(0, 65535)


@st.composite
def qstrings(draw) -> tuple[dict, frozenset[str]]:
    """send/expect/...: values and the set of those written in single quotes."""
    values: dict[str, str | None] = {}
    single: set[str] = set()
    for name in QSTRINGS:
        v = draw(st.none() | st.one_of(text, blanky))
        if v is not None:
            if "'" not in v and draw(st.booleans()):
                single.add(name)
            elif '"' in v and not _bare(v):
                v = v.replace('"', "")
        values[name] = v
    return values, frozenset(single)


@st.composite
def servers(draw, vport: int) -> RealServer:
    return RealServer(
        name=draw(token),
        address=draw(st.none() | host),
        active=draw(st.booleans()),
        weight=draw(st.integers(0, 65535)),
        port=draw(st.one_of(st.just(vport), port)),
    )


@st.composite
def services(draw, cls: type, global_network: Network) -> VirtualService:
    vport = draw(port)
    address = draw(st.none() | host)
    qs, single = draw(qstrings())
    network = draw(st.none() | st.sampled_from(list(Network)))
    if cls is VirtualService and network is global_network:
        network = None  # the parser drops a per-virtual network equal to the global
    return cls(
        name=draw(token),
        active=draw(st.booleans()),
        address=address,
        device=None if address is None else draw(st.one_of(token, st.just(""))),
        vip_nmask=draw(st.none() | ipv4_nonzero),
        sorry_server=draw(st.none() | ipv4 | ipv6),
        fwmark=draw(st.integers(0, 2**31 - 1)),
        protocol=draw(st.sampled_from(list(Protocol))),
        port=vport,
        network=network,
        scheduler=draw(st.sampled_from(list(Scheduler))),
        persistent=draw(st.integers(-5, 10**6)),
        # an IPv6 virtual's pmask is a prefix length (pmask6), an IPv4 one's a netmask
        pmask=(
            None
            if isinstance(address, IPv6Address)
            else draw(st.none() | ipv4.filter(lambda a: int(a) != 2**32 - 1))
        ),
        pmask6=draw(st.none() | st.integers(1, 127)) if isinstance(address, IPv6Address) else None,
        client_monitor=draw(st.one_of(st.just("/usr/sbin/nanny"), string_value)),
        use_regex=draw(st.booleans()),
        timeout=draw(st.integers(-1, 10**5)),
        reentry=draw(st.integers(-1, 10**5)),
        load_monitor=draw(st.none() | string_value),
        quiesce_server=draw(st.booleans()),
        master=draw(st.none() | host),
        dirs=draw(st.none() | st.lists(token, max_size=4).map(tuple)),
        single_quoted=single,
        servers=tuple(draw(st.lists(servers(vport), max_size=3))),
        **qs,
    )


@st.composite
def configs(draw) -> Config:
    network = draw(st.sampled_from(list(Network)))
    primary = draw(st.none() | host_nonzero)
    backup = draw(st.none() | host)
    if primary is not None and draw(st.booleans()):
        # piranha's derivation: no primary_private line, both privates copied
        primary_private, backup_private = primary, backup
    else:
        primary_private = draw(host_nonzero if primary is not None else st.none() | host_nonzero)
        backup_private = draw(st.none() | host_nonzero)
    return Config(
        service=draw(st.sampled_from(list(ServiceType))),
        serial_no=draw(st.integers(-(2**40), 2**40)),
        primary=primary,
        primary_private=primary_private,
        primary_shared=draw(st.none() | string_value),
        backup=backup,
        backup_private=backup_private,
        backup_shared=draw(st.none() | string_value),
        backup_active=draw(st.booleans()),
        reservation_conflict_action=draw(st.sampled_from([None, "nothing", "preempt"])),
        heartbeat=draw(st.booleans()),
        heartbeat_port=draw(port),
        keepalive=draw(seconds),
        deadtime=draw(seconds),
        network=network,
        nat_router=draw(st.none() | st.builds(HostDevice, address=host, device=token)),
        nat_nmask=draw(st.none() | ipv4_nonzero),
        rsh_command=draw(st.one_of(st.just("rsh"), string_value)),
        debug_level=draw(st.one_of(st.just("NONE"), string_value)),
        ipvsadm=draw(st.one_of(st.just("/sbin/ipvsadm"), string_value)),
        sync=draw(st.booleans()),
        monitor_links=draw(st.integers(-3, 3)),
        syncdaemon=draw(st.booleans()),
        syncd_iface=draw(st.one_of(st.just("eth0"), string_value)),
        syncd_id=draw(st.integers(0, 255)),
        tcp_timeout=draw(st.integers(0, 10**5)),
        tcpfin_timeout=draw(st.integers(0, 10**5)),
        udp_timeout=draw(st.integers(0, 10**5)),
        hard_shutdown=draw(st.booleans()),
        active_cmd=draw(st.none() | string_value),
        inactive_cmd=draw(st.none() | string_value),
        virtuals=tuple(draw(st.lists(services(VirtualService, network), max_size=3))),
        failovers=tuple(draw(st.lists(services(FailoverService, network), max_size=2))),
    )


def reparse(text_: str, dialect: Dialect = Dialect.EXTENDED) -> Config:
    result = compile_source(Source("roundtrip.cf", text_), dialect, run_checks=False)
    assert not result.errors, [f"{d.span}: {d.message}" for d in result.errors] + [text_]
    return result.config


# ---------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_parse_of_format_is_identity(model):
    text_ = lvscf.emit(model)
    assert reparse(text_) == model, text_


@settings(max_examples=50, deadline=None)
@given(configs())
def test_format_is_canonical(model):
    once = lvscf.emit(model)
    assert lvscf.emit(reparse(once)) == once


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name[:2])
def test_samples_format_to_a_fixed_point(path):
    model = compile_file(str(path), Dialect.EXTENDED).config
    once = lvscf.emit(model)
    again = reparse(once)
    assert again == model
    assert lvscf.emit(again) == once
    # the samples are piranha files: their canonical form is one too
    assert reparse(once, Dialect.PIRANHA) == model


def test_examples_file_formats_to_a_fixed_point():
    from tests.conftest import ROOT

    model = compile_file(str(ROOT / "examples" / "lvs.cf"), Dialect.EXTENDED).config
    once = lvscf.emit(model)
    assert reparse(once) == model
    assert lvscf.emit(reparse(once)) == once


def test_strategy_reaches_the_awkward_corners():
    # a guard against the strategies quietly losing their teeth
    from hypothesis import find

    find(configs(), lambda c: any(v.single_quoted for v in c.virtuals))
    find(configs(), lambda c: any(isinstance(v.address, IPv6Address) for v in c.virtuals))
    find(configs(), lambda c: any(v.send == "" for v in c.virtuals))
    find(configs(), lambda c: any(" " in (v.expect or "") for v in c.virtuals))
    find(configs(), lambda c: any(s.port != v.port for v in c.virtuals for s in v.servers))
    find(configs(), lambda c: isinstance(c.keepalive, float))
    find(configs(), lambda c: c.primary is not None and c.primary_private != c.primary)
