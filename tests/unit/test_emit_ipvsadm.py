"""The ipvsadm emitter: one rule of ``ipvsadm-save -n`` (ipvsadm 1.31) or of piranha per test.

The golden files hold whole tables; these tests pin single facts, and the ways a
model can be impossible to write (host names, values ipvsadm refuses).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compiler import Dialect, Source, compile_source
from compiler.emit import EmitError, emit
from compiler.emit.ipvsadm import addrport, inet_ntop, table

pytestmark = pytest.mark.unit

HEAD = "primary = 198.18.0.2\nnetwork = {net}\n"


def cfg(body: str, net: str = "direct"):
    # the emitter must handle any model that lowers cleanly, whatever checks think
    src = Source("t.cf", HEAD.format(net=net) + body)
    r = compile_source(src, Dialect.EXTENDED, run_checks=False)
    assert r.ok, [f"{d.span}: {d.message}" for d in r.errors]
    return r.config


def virtual(name="v", *, vip="198.18.0.10", extra="", servers="") -> str:
    return f"virtual {name} {{\n active = 1\n address = {vip} eth0:1\n{extra}{servers}}}\n"


def server(name="s", rip="198.18.1.1", extra="") -> str:
    return f" server {name} {{\n  address = {rip}\n  active = 1\n{extra} }}\n"


def ipvsadm(body: str, net: str = "direct") -> list[str]:
    return emit("ipvsadm", cfg(body, net)).splitlines()


def test_plain_service_and_destination():
    assert ipvsadm(virtual(servers=server())) == [
        "-A -t 198.18.0.10:80 -s wlc",
        "-a -t 198.18.0.10:80 -r 198.18.1.1:80 -g -w 1",
    ]


@pytest.mark.parametrize(("net", "flag"), [("nat", "-m"), ("direct", "-g"), ("tunnel", "-i")])
def test_forwarding_flags(net, flag):
    dest = ipvsadm(virtual(servers=server()), net)[1]
    assert f" {flag} -w 1" in dest
    # ipvsadm 1.31 prints a tunnel destination with its (default) tunnel type
    assert dest.endswith("--tun-type ipip") == (net == "tunnel")


def test_udp_is_dash_u():
    assert ipvsadm(virtual(extra=" protocol = udp\n port = 53\n"))[0] == (
        "-A -u 198.18.0.10:53 -s wlc"
    )


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (" persistent = 300\n", "-s wlc -p 300"),
        (" persistent = 300\n pmask = 255.255.255.0\n", "-s wlc -p 300 -M 255.255.255.0"),
        # piranha: 255.255.255.255 means unset; 0.0.0.0 is not passed (lvsd: pmask.s_addr)
        (" persistent = 300\n pmask = 255.255.255.255\n", "-s wlc -p 300"),
        (" persistent = 300\n pmask = 0.0.0.0\n", "-s wlc -p 300"),
        # pmask only with persistence; persistent <= 0 is off
        (" pmask = 255.255.255.0\n", "-s wlc"),
        (" persistent = 0\n pmask = 255.255.255.0\n", "-s wlc"),
        (" persistent = -1\n", "-s wlc"),
        (" scheduler = rr\n persistent = 1\n", "-s rr -p 1"),
    ],
)
def test_persistence_and_pmask(extra, expected):
    assert ipvsadm(virtual(extra=extra))[0] == f"-A -t 198.18.0.10:80 {expected}"


@pytest.mark.parametrize(
    ("net", "fwmark", "port"),
    [
        ("nat", 0, 8080),  # NAT keeps the real server's port (port mapping)
        ("direct", 0, 80),  # DR: the kernel holds the service's port
        ("tunnel", 0, 80),  # ipvsadm rewrites tunnel destinations the same way
        ("direct", 5, 8080),  # an fwmark service's destinations keep their ports
        ("tunnel", 5, 8080),
    ],
)
def test_real_server_port(net, fwmark, port):
    mark = f" fwmark = {fwmark}\n" if fwmark else ""
    dest = ipvsadm(virtual(extra=mark, servers=server(extra="  port = 8080\n")), net)[1]
    assert f" -r 198.18.1.1:{port} " in dest


def test_fwmark_service_has_no_protocol_or_address():
    lines = ipvsadm(virtual(extra=" fwmark = 3\n protocol = udp\n port = 5060\n", servers=server()))
    assert lines == ["-A -f 3 -s wlc", "-a -f 3 -r 198.18.1.1:5060 -g -w 1"]


def test_fwmark_needs_no_numeric_vip():
    # the mark names the service: a host-name VIP does not matter to ipvsadm
    body = "virtual v {\n active = 1\n address = lb.example eth0:1\n fwmark = 4\n}\n"
    assert ipvsadm(body) == ["-A -f 4 -s wlc"]


def test_shared_fwmark_is_one_service_with_the_union_of_servers():
    body = virtual(
        "a",
        extra=" fwmark = 9\n persistent = 60\n",
        servers=server("x", "198.18.1.1") + server("y", "198.18.1.2", "  weight = 4\n"),
    ) + virtual(
        "b",
        extra=" fwmark = 9\n scheduler = rr\n port = 443\n",
        servers=server("y", "198.18.1.2", "  weight = 7\n") + server("z", "198.18.1.3"),
    )
    (svc,) = table(cfg(body))
    assert svc.virtuals == ("a", "b")
    assert (svc.scheduler, svc.persistent) == ("wlc", 60)  # the first virtual's
    assert [(str(d.address), d.port, d.weight) for d in svc.destinations] == [
        ("198.18.1.1", 80, 1),
        ("198.18.1.2", 80, 4),
        ("198.18.1.2", 443, 7),  # same RIP, another port: another destination
        ("198.18.1.3", 443, 1),
    ]


def test_duplicate_destination_first_one_wins():
    body = virtual(servers=server("a", extra="  weight = 3\n") + server("b", extra="  port = 81\n"))
    # direct routing: both are 198.18.1.1:80 to the kernel
    assert ipvsadm(body)[1:] == ["-a -t 198.18.0.10:80 -r 198.18.1.1:80 -g -w 3"]


def test_inactive_sorry_and_fos_are_not_in_the_steady_state():
    down = " server down {\n  address = 198.18.1.2\n  active = 0\n }\n"
    body = virtual("on", extra=" sorry_server = 198.18.9.9\n", servers=server("up") + down)
    body += "virtual off {\n active = 0\n address = 198.18.0.11 eth0:2\n" + server() + "}\n"
    assert ipvsadm(body) == [
        "-A -t 198.18.0.10:80 -s wlc",
        "-a -t 198.18.0.10:80 -r 198.18.1.1:80 -g -w 1",
    ]
    # with service = fos pulse never starts lvsd
    assert emit("ipvsadm", cfg("service = fos\n" + body)) == ""


def test_weights_are_the_configured_ones():
    body = virtual(servers=server("a", extra="  weight = 0\n"))
    assert ipvsadm(body)[1].endswith("-g -w 0")
    body = virtual(servers=server("a", extra="  weight = 65535\n"))
    assert ipvsadm(body)[1].endswith("-g -w 65535")


def test_service_order_like_libipvs():
    body = (
        virtual("m", vip="10.0.0.9", extra=" fwmark = 2\n")
        + virtual("u", vip="10.0.0.1", extra=" protocol = udp\n")
        + virtual("hi", vip="200.0.0.1")
        + virtual("lo", vip="10.0.0.1", extra=" port = 443\n")
        + virtual("lo80", vip="10.0.0.1")
        + virtual("six", vip="2001:db8::1")
    )
    keys = [line.split(" -s")[0] for line in ipvsadm(body)]
    assert keys == [
        # the C int difference of 200.0.0.1 and 10.0.0.1 wraps: 200 first
        "-A -t 200.0.0.1:80",
        "-A -t 10.0.0.1:80",
        "-A -t 10.0.0.1:443",
        "-A -u 10.0.0.1:80",
        "-A -t [2001:db8::1]:80",
        "-A -f 2",
    ]


def test_destination_order_address_then_port():
    servers = (
        server("c", "198.18.1.2", "  port = 80\n")
        + server("a", "198.18.1.10", "  port = 80\n")
        + server("b", "198.18.1.2", "  port = 79\n")
    )
    lines = ipvsadm(virtual(servers=servers), "nat")[1:]
    assert [line.split(" -r ")[1].split()[0] for line in lines] == [
        "198.18.1.2:79",
        "198.18.1.2:80",
        "198.18.1.10:80",
    ]


def test_ipv6_service_and_fwmark():
    body = virtual(vip="2001:db8::80", servers=server(rip="2001:db8:1:0:0:0:0:11"))
    body += virtual(
        "m", vip="2001:db8::81", extra=" fwmark = 6\n", servers=server(rip="2001:db8::5")
    )
    assert ipvsadm(body) == [
        "-A -t [2001:db8::80]:80 -s wlc",
        "-a -t [2001:db8::80]:80 -r [2001:db8:1::11]:80 -g -w 1",
        "-A -f 6 -6 -s wlc",
        "-a -f 6 -6 -r [2001:db8::5]:80 -g -w 1",
    ]


def test_tunnel_may_mix_address_families():
    body = virtual(servers=server(rip="2001:db8::5"))
    assert ipvsadm(body, "tunnel")[1] == (
        "-a -t 198.18.0.10:80 -r [2001:db8::5]:80 -i -w 1 --tun-type ipip"
    )


# ----------------------------------------------------------------- what cannot be emitted


@pytest.mark.parametrize(
    ("body", "message", "line"),
    [
        (virtual(vip="lb.example"), "host name `lb.example`", 5),
        (virtual(servers=server(rip="web1.example")), "host name `web1.example`", 7),
        ("virtual v {\n active = 1\n}\n", "has no address", 3),
        (virtual(servers=" server s {\n  active = 1\n }\n"), "has no address", 6),
        (virtual(servers=server(extra="  weight = 65536\n")), "weight 65536", 9),
        (virtual(servers=server(extra="  weight = -1\n")), "weight -1", 9),
        (virtual(extra=" persistent = 2678401\n"), "more than 31 days", 6),
        (virtual(extra=" port = 0\n"), "port 0", 6),
        (virtual(extra=" port = 70000\n"), "port 70000", 6),
        (virtual(servers=server(extra="  port = 70000\n")), "port 70000", 9),
        (virtual(extra=" fwmark = -3\n"), "fwmark -3", 6),
        (virtual(servers=server(rip="2001:db8::5")), "IPv6 real server in an IPv4", 7),
    ],
)
def test_unwritable_tables_raise_emit_error(body, message, line):
    with pytest.raises(EmitError) as err:
        emit("ipvsadm", cfg(body))
    assert message in err.value.message
    assert err.value.span is not None and err.value.span.line == line
    rendered = err.value.render()
    assert rendered.startswith(f"t.cf:{line}:")
    assert "error: cannot emit ipvsadm" in rendered


def test_hostname_is_fine_where_nothing_is_emitted():
    body = virtual(vip="lb.example").replace("active = 1", "active = 0")
    assert emit("ipvsadm", cfg(body)) == ""


# ----------------------------------------------------------------- address text


@pytest.mark.parametrize(
    ("addr", "text"),
    [
        ("::", "::"),
        ("::1", "::1"),
        ("1::", "1::"),
        ("2001:db8::1", "2001:db8::1"),
        ("2001:db8:0:1:0:0:0:1", "2001:db8:0:1::1"),
        ("1:0:0:1:0:0:0:1", "1:0:0:1::1"),
        ("1:0:0:2:0:0:3:4", "1::2:0:0:3:4"),  # the first of two equal runs
        ("1:0:2:3:4:5:6:7", "1:0:2:3:4:5:6:7"),  # a single 0 is not compressed
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1"),  # glibc shows embedded IPv4
        ("::10.0.0.1", "::10.0.0.1"),
        ("::1:0:0", "::1:0:0"),
        ("0:0:0:0:0:1:a00:1", "::1:a00:1"),
    ],
)
def test_inet_ntop_like_glibc(addr, text):
    assert inet_ntop(IPv6Address(addr)) == text


@given(st.integers(0, 2**128 - 1))
def test_inet_ntop_agrees_with_python_outside_embedded_ipv4(n):
    addr = IPv6Address(n)
    if n >> 32 in (0, 0xFFFF) and n >> 16 != 0:
        return  # ::a.b.c.d and ::ffff:a.b.c.d: glibc writes the dotted quad
    assert inet_ntop(addr) == str(addr)
    assert ip_address(inet_ntop(addr)) == addr


def test_addrport():
    assert addrport(IPv4Address("10.0.0.1"), 80) == "10.0.0.1:80"
    assert addrport(IPv6Address("2001:db8::1"), 0) == "[2001:db8::1]:0"


def test_ipv6_persistence_prefix_is_written_as_ipvsadm_does() -> None:
    """ipvsadm-save prints an IPv6 service's netmask as a prefix length, and only
    when it is not 128 (`-M 64`)."""
    for mask, flag in (("64", " -M 64"), ("/48", " -M 48"), ("128", ""), (None, "")):
        extra = " persistent = 5\n" + (f" pmask = {mask}\n" if mask else "")
        out = ipvsadm(virtual(vip="2001:db8::1", extra=extra))
        assert out[0] == f"-A -t [2001:db8::1]:80 -s wlc -p 5{flag}"


def test_a_netmask_on_an_ipv6_virtual_is_refused_at_its_line() -> None:
    text = virtual(vip="2001:db8::1", extra=" persistent = 5\n pmask = 255.255.255.0\n")
    r = compile_source(Source("t.cf", HEAD.format(net="direct") + text), Dialect.EXTENDED)
    assert [(d.code.code, d.span.line, d.span.col) for d in r.errors] == [("LVS114", 7, 10)]
