"""What nanny sends and expects (spec §5.2, §5.4): escapes, matchers, send_program argv,
and the check derived from the model (default web probe, send_program precedence)."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from compiler.model import Config, Hostname, Protocol, RealServer, VirtualService
from runtime.health.check import check_spec, load_argv, load_command
from runtime.health.expect import (
    AnyByte,
    Prefix,
    Regex,
    matcher,
    program_argv,
    program_output,
    unescape,
)

pytestmark = pytest.mark.unit


# -- convert_str


@pytest.mark.parametrize(
    ("text", "out"),
    [
        (r"GET / HTTP/1.0\r\n\r\n", "GET / HTTP/1.0\r\n\r\n"),
        (r"a\tb", "a\tb"),
        (r"\\n", "\\n"),  # an escaped backslash, then a plain n
        (r"say \'hi\' \"x\"", "say 'hi' \"x\""),
        ("\\", "\\"),  # one byte: nanny leaves it alone
        (r"a\qb", r"a\qb"),  # unknown escape: nanny hung; kept as written
        ("ab\\", "ab\\"),  # trailing backslash likewise
        ("plain", "plain"),
    ],
)
def test_unescape(text: str, out: str) -> None:
    assert unescape(text) == out


# -- matchers


def test_prefix_reads_len_expect_and_compares() -> None:
    m = matcher("HTTP", use_regex=False)
    assert m == Prefix(b"HTTP") and m.read_size == 4
    assert m.match(b"HTTP") is None
    assert "does not start with" in (m.match(b"SSH-") or "")
    assert "too short" in (m.match(b"HT") or "")
    assert "too short" in (m.match(b"") or "")


def test_prefix_read_is_capped_at_254_bytes() -> None:
    m = matcher("x" * 300, use_regex=False)
    assert m.read_size == 254
    assert m.match(b"x" * 254) is None


def test_star_is_any_byte_but_not_end_of_file() -> None:
    m = matcher("*", use_regex=False)
    assert isinstance(m, AnyByte) and m.read_size == 1
    assert m.match(b"\x00") is None
    assert m.match(b"") == "connection closed without a reply"


def test_star_inside_a_longer_expect_is_literal() -> None:
    m = matcher("2*0", use_regex=False)
    assert m.match(b"2*0 ok") is None
    assert m.match(b"220 ok") is not None


def test_regex_is_posix_extended_and_searches_anywhere() -> None:
    m = matcher("(OK|READY) [0-9]+", use_regex=True)
    assert isinstance(m, Regex) and m.read_size == 254
    assert m.match(b"+++ READY 42\r\n") is None
    assert m.match(b"NOT YET") is not None


def test_regex_character_classes_and_anchors() -> None:
    m = matcher("^[[:alpha:]]{3}-[[:digit:]]", use_regex=True)
    assert m.match(b"SSH-2.0-OpenSSH") is None
    assert m.match(b" SSH-2.0") is not None


def test_regex_is_posix_not_perl() -> None:
    # \d is the letter d to POSIX (the compiler warns, LVS247)
    m = matcher(r"\d+", use_regex=True)
    assert m.match(b"ddd") is None
    assert m.match(b"123") is not None


def test_regex_stops_at_the_first_nul_byte() -> None:
    m = matcher("World", use_regex=True)
    assert m.match(b"Hello World") is None
    assert m.match(b"Hello\x00World") is not None


def test_invalid_regex_fails_every_check_with_regerror() -> None:
    m = matcher("a(b", use_regex=True)
    assert isinstance(m, Regex) and m.error is not None
    why = m.match(b"ab")
    assert why is not None and "Unmatched ( or \\(" in why
    # nanny compiled `*` with regcomp too: not a wildcard under use_regex
    assert matcher("*", use_regex=True).match(b"x") is not None


def test_regex_specs_compare_by_pattern() -> None:
    assert matcher("a+", use_regex=True) == matcher("a+", use_regex=True)
    assert matcher("a+", use_regex=True) != matcher("b+", use_regex=True)


# -- send_program


def test_program_tokens_are_substituted_whole() -> None:
    argv = program_argv("/usr/bin/check  %h -p %p http://%h/ x%p", "198.18.0.5", 8080)
    assert argv == ("/usr/bin/check", "198.18.0.5", "-p", "8080", "http://%h/", "x%p")


def test_program_split_on_spaces_only() -> None:
    assert program_argv("a\tb c", "h", 1) == ("a\tb", "c")


@pytest.mark.parametrize(
    ("stdout", "out"),
    [(b"OK\n", b"OK"), (b"OK", b"OK"), (b"OK\n\n", b"OK\n"), (b"", b""), (b"\n", b"")],
)
def test_program_output_drops_one_trailing_newline(stdout: bytes, out: bytes) -> None:
    assert program_output(stdout) == out


# -- the check derived from the model


def vs(**kw) -> VirtualService:
    rs = RealServer(name="rs1", address=IPv4Address("198.18.0.5"), active=True, port=8080)
    fields = {"name": "web", "active": True, "port": 80, "servers": (rs,)} | kw
    return VirtualService(**fields)


def test_default_web_probe_on_virtual_port_80() -> None:
    v = vs()
    spec = check_spec(v, v.servers[0])
    # nanny tests the *virtual* port for the default, and probes the real port
    assert spec.kind == "tcp" and spec.port == 8080 and spec.host == "198.18.0.5"
    assert spec.send == b"GET / HTTP/1.0\r\n\r\n"
    assert spec.expect == Prefix(b"HTTP")
    assert spec.timeout == 10


def test_no_default_probe_on_other_ports() -> None:
    v = vs(port=443)
    spec = check_spec(v, v.servers[0])
    assert spec.send is None and spec.expect is None


def test_no_default_probe_when_send_or_expect_given() -> None:
    v = vs(send="HEAD / HTTP/1.0\\r\\n\\r\\n")
    spec = check_spec(v, v.servers[0])
    assert spec.send == b"HEAD / HTTP/1.0\r\n\r\n" and spec.expect is None
    v = vs(expect="SSH")
    spec = check_spec(v, v.servers[0])
    assert spec.send is None and spec.expect == Prefix(b"SSH")


def test_send_program_overrides_send_and_gets_escaped_expect() -> None:
    v = vs(send_program="/bin/chk %h %p", send="ignored", expect="O\\tK", use_regex=True)
    spec = check_spec(v, v.servers[0])
    assert spec.kind == "program"
    assert spec.argv == ("/bin/chk", "198.18.0.5", "8080")
    assert spec.send is None and spec.expect is None
    assert spec.program_expect == b"O\tK"  # exact match; use_regex does not apply


def test_send_program_without_expect() -> None:
    v = vs(send_program="/bin/true")
    spec = check_spec(v, v.servers[0])
    assert spec.kind == "program" and spec.program_expect is None


def test_single_quoted_values_keep_their_quotes() -> None:
    v = vs(send="GET /", expect="HTTP", single_quoted=frozenset({"send"}))
    spec = check_spec(v, v.servers[0])
    assert spec.send == b"'GET /'" and spec.expect == Prefix(b"HTTP")


def test_udp_and_host_names() -> None:
    rs = RealServer(name="r", address=Hostname("rs.example"), active=True, port=53)
    v = vs(protocol=Protocol.UDP, port=53, servers=(rs,), expect="*", timeout=3)
    spec = check_spec(v, rs)
    assert spec.kind == "udp" and spec.host == "rs.example" and spec.timeout == 3
    assert spec.expect == AnyByte()


def test_equal_checks_have_equal_specs() -> None:
    a, b = vs(send="x"), vs(send="x")
    assert check_spec(a, a.servers[0]) == check_spec(b, b.servers[0])
    c = vs(send="y")
    assert check_spec(a, a.servers[0]) != check_spec(c, c.servers[0])


# -- load monitor command (lvsd 0.8 / nanny getRemoteLoad)


def test_load_command_per_load_monitor() -> None:
    cfg = Config(rsh_command="ssh")
    assert load_command(cfg, vs()) is None
    assert load_command(cfg, vs(load_monitor="none")) is None
    assert load_command(cfg, vs(load_monitor="uptime")) == "ssh"
    assert load_command(cfg, vs(load_monitor="rup")) == "rup"
    assert load_command(cfg, vs(load_monitor="/opt/load")) == "/opt/load"


def test_load_argv_appends_uptime_for_rsh_and_ssh_only() -> None:
    assert load_argv("rsh", "198.18.0.5") == ("rsh", "198.18.0.5", "uptime")
    assert load_argv("/usr/bin/ssh", "198.18.0.5") == ("/usr/bin/ssh", "198.18.0.5", "uptime")
    assert load_argv("rup", "198.18.0.5") == ("rup", "198.18.0.5")
    assert load_argv("ruptime", "198.18.0.5") == ("ruptime", "198.18.0.5")
