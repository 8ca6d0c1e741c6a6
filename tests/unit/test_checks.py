"""Semantic checks (compiler/checks.py): each LVS2xx code fires on a small file and stays
quiet on a close variant; the checks never raise and never do I/O; the POSIX regex
judge agrees with the C library's regcomp; the shared samples get the diagnostics
their content calls for."""

from __future__ import annotations

import ctypes
import ctypes.util
import locale
import socket
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compiler import Dialect, compile_file, compile_text
from compiler.checks import CHECKS, _nanny_unescape, check, ere_error
from compiler.diagnostics import CODES, Severity
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

E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE

# A clean direct-routing virtual service: no diagnostics at all. Most cases below are
# this file with one line changed; the line numbers refer to it.
GOOD = """\
network = direct
virtual web {
     active = 1
     address = 192.0.2.10 eth0:1
     port = 80
     server a {
         address = 192.0.2.11
         active = 1
         weight = 1
     }
}
"""


def good(old: str, new: str) -> str:
    """GOOD with one piece of text replaced (which must be there)."""
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


def vline(text: str) -> str:
    """GOOD with ``text`` (one or more lines) added after `port = 80` (line 5)."""
    return good("     port = 80\n", "     port = 80\n" + text)


def sline(text: str) -> str:
    """GOOD with ``text`` added after the server's `weight = 1` (line 9)."""
    return good("         weight = 1\n", "         weight = 1\n" + text)


TWO = """\
network = direct
virtual a {
     active = 1
     address = 192.0.2.10 eth0:1
     port = 80
     {A}
     server s {
         address = 192.0.2.11
         active = 1
     }
}
virtual b {
     active = 1
     address = 192.0.2.10 eth0:1
     port = {PORT}
     {B}
     server s {
         address = 192.0.2.12
         active = 1
     }
}
"""


def two(a: str = "", b: str = "", port: int = 80) -> str:
    """Two virtual services on one VIP; ``a`` and ``b`` are a line each (lines 6 and 16),
    ``port`` is the second one's port."""
    return TWO.replace("{A}", a).replace("{B}", b).replace("{PORT}", str(port))


HA = "primary = 192.0.2.2\nbackup = 192.0.2.3\nbackup_active = 1\n"


@dataclass(frozen=True)
class Case:
    code: str
    severity: Severity
    line: int
    trigger: str
    clean: str
    dialect: Dialect = Dialect.EXTENDED


CASES = [
    # virtual services
    Case("LVS201", W, 2, good("active = 1\n     address", "active = 0\n     address"), GOOD),
    Case("LVS202", W, 2, good("     address = 192.0.2.10 eth0:1\n", ""), GOOD),
    Case("LVS203", E, 14, two(), two(port=443)),
    Case("LVS204", N, 16, two("fwmark = 100", "fwmark = 100"), two("fwmark = 100", "fwmark = 7")),
    Case(
        "LVS205",
        E,
        17,
        two("fwmark = 100", "fwmark = 100\n     scheduler = rr"),
        two("fwmark = 100", "fwmark = 100\n     scheduler = wlc"),
    ),
    Case(
        "LVS206",
        W,
        12,
        two(port=443).replace("virtual b", "virtual a"),
        two(port=443),
    ),
    Case(
        "LVS207",
        N,
        12,
        GOOD + "failover f {\n     active = 1\n     address = 192.0.2.20 eth0:2\n}\n",
        GOOD + "failover f {\n     active = 0\n     address = 192.0.2.20 eth0:2\n}\n",
    ),
    Case(
        "LVS208",
        W,
        3,
        "service = fos\n" + GOOD + "failover f {\n     active = 1\n}\n",
        "service = lvs\n" + GOOD + "failover f {\n     active = 1\n}\n",
    ),
    # real servers
    Case("LVS210", W, 2, good("         active = 1\n", "         active = 0\n"), GOOD),
    Case("LVS211", W, 6, good("         address = 192.0.2.11\n", ""), GOOD),
    Case(
        "LVS212",
        W,
        12,
        sline("     }\n     server b {\n         address = 192.0.2.11\n         active = 1\n"),
        sline("     }\n     server b {\n         address = 192.0.2.12\n         active = 1\n"),
    ),
    Case("LVS213", W, 10, sline("         port = 8080\n"), sline("         port = 80\n")),
    Case(
        "LVS214",
        E,
        14,
        sline(
            "     }\n     server b {\n         address = 192.0.2.11\n         active = 1\n"
            "         port = 8080\n"
        ),
        sline(
            "     }\n     server b {\n         address = 192.0.2.12\n         active = 1\n"
            "         port = 8080\n"
        ),
    ),
    Case(
        "LVS215", E, 9, good("weight = 1", "weight = 70000"), good("weight = 1", "weight = 65535")
    ),
    Case("LVS216", W, 9, good("weight = 1", "weight = 0"), good("weight = 1", "weight = 2")),
    Case(
        "LVS217",
        W,
        10,
        good("     port = 80\n", "").replace("     }\n}", "     }\n     port = 443\n}"),
        good("port = 80", "port = 443"),
    ),
    Case(
        "LVS218",
        W,
        6,
        vline("     sorry_server = 192.0.2.11\n"),
        vline("     sorry_server = 192.0.2.99\n"),
    ),
    Case(
        "LVS219",
        W,
        8,
        good("network = direct\n", "network = nat\nnat_router = 198.51.100.1 eth1:1\n"),
        good("network = direct\n", "network = nat\nnat_router = 192.0.2.1 eth1:1\n"),
    ),
    Case(
        "LVS220",
        E,
        7,
        good("192.0.2.10 eth0:1", "2001:db8::10 eth0:1"),
        good("192.0.2.10 eth0:1", "2001:db8::10 eth0:1").replace("192.0.2.11", "2001:db8::11"),
    ),
    # IPVS parameters
    Case("LVS225", E, 5, good("port = 80", "port = 70000"), good("port = 80", "port = 65535")),
    Case(
        "LVS226",
        E,
        5,
        good("port = 80", "port = 0"),
        good("port = 80", "port = 0\n persistent = 60"),
    ),
    Case(
        "LVS227", E, 6, vline("     persistent = 3000000\n"), vline("     persistent = 2678400\n")
    ),
    Case("LVS228", W, 6, vline("     persistent = -1\n"), vline("     persistent = 0\n")),
    Case("LVS229", E, 6, vline("     fwmark = -1\n"), vline("     fwmark = 1\n")),
    Case(
        "LVS230",
        W,
        6,
        vline("     pmask = 255.255.255.0\n"),
        vline("     pmask = 255.255.255.0\n     persistent = 60\n"),
    ),
    Case(
        "LVS231",
        W,
        6,
        vline("     vip_nmask = 255.0.255.0\n"),
        vline("     vip_nmask = 255.255.0.0\n"),
    ),
    Case(
        "LVS232",
        N,
        8,
        vline('     fwmark = 5\n     expect = "OK"\n     protocol = udp\n'),
        vline('     fwmark = 5\n     expect = "OK"\n     protocol = tcp\n'),
    ),
    # health checks
    Case(
        "LVS240",
        W,
        7,
        vline('     send_program = "/bin/check %h"\n     send = "\\n"\n     expect = "OK"\n'),
        vline('     send_program = "/bin/check %h"\n     expect = "OK"\n'),
    ),
    Case(
        "LVS241",
        E,
        6,
        vline('     send_program = "/bin/check %h"\n'),
        vline('     send_program = "/bin/check %h"\n     expect = "OK"\n'),
    ),
    Case(
        "LVS242",
        E,
        6,
        good("port = 80", "port = 53\n     protocol = udp"),
        good("port = 80", 'port = 53\n     protocol = udp\n     expect = "*"'),
    ),
    Case(
        "LVS243",
        E,
        7,
        vline('     use_regex = 1\n     expect = "HTTP/1.[01"\n'),
        vline('     use_regex = 1\n     expect = "HTTP/1.[01]"\n'),
    ),
    Case(
        "LVS244",
        W,
        7,
        vline('     use_regex = 1\n     expect = "HTTP/1.1 \\\\d+"\n'),
        vline('     use_regex = 1\n     expect = "HTTP/1.1 [0-9]+"\n'),
    ),
    Case(
        "LVS245",
        W,
        6,
        vline("     use_regex = 1\n"),
        vline('     use_regex = 1\n     expect = "^HTTP"\n'),
    ),
    Case(
        "LVS246",
        E,
        6,
        vline('     send = "HEAD /\\x"\n'),
        vline('     send = "HEAD /\\\\x"\n'),
    ),
    Case("LVS247", W, 6, vline("     send = 'HEAD /'\n"), vline('     send = "HEAD /"\n')),
    Case(
        "LVS248",
        W,
        6,
        vline('     send_program = "/bin/check http://%h/"\n     expect = "OK"\n'),
        vline('     send_program = "/bin/check %h"\n     expect = "OK"\n'),
    ),
    Case("LVS249", E, 6, vline("     timeout = 0\n"), vline("     timeout = 1\n")),
    Case(
        "LVS250",
        W,
        7,
        vline("     timeout = 30\n     reentry = 10\n"),
        vline("     timeout = 30\n     reentry = 60\n"),
    ),
    Case("LVS251", W, 6, vline("     reentry = 0\n"), vline("     reentry = 10\n")),
    Case(
        "LVS252", N, 6, vline("     load_monitor = uptime\n"), vline("     load_monitor = none\n")
    ),
    # routers and global settings
    Case(
        "LVS260",
        E,
        1,
        good("network = direct", "network = nat"),
        good("network = direct", "network = nat\nnat_router = 192.0.2.1 eth1:1"),
    ),
    Case("LVS261", W, 4, HA + "deadtime = 3\n" + GOOD, HA + "deadtime = 4\n" + GOOD),
    Case("LVS262", W, 1, "backup_active = 1\n" + GOOD, HA + GOOD),
    Case(
        "LVS263",
        W,
        2,
        "primary = 192.0.2.2\nbackup = 192.0.2.2\n" + GOOD,
        "primary = 192.0.2.2\nbackup = 192.0.2.3\n" + GOOD,
    ),
    Case("LVS264", N, 1, "serial_no = 5\n" + GOOD, "heartbeat_port = 539\n" + GOOD),
    Case(
        "LVS265",
        W,
        1,
        "primary_shared = /dev/sdb\n" + GOOD,
        "primary_shared = /dev/sdb\nbackup_shared = /dev/sdc\n" + GOOD,
    ),
    Case("LVS266", W, 1, "tcp_timeout = -1\n" + GOOD, "tcp_timeout = 900\n" + GOOD),
    Case("LVS267", W, 1, "syncd_id = 300\n" + GOOD, "syncd_id = 30\n" + GOOD),
    Case("LVS268", W, 1, "monitor_links = 1\n" + GOOD, "monitor_links = 1\n" + HA + GOOD),
    Case("LVS269", W, 1, good("network = direct\n", ""), GOOD),
]


def _diags(text: str, dialect: Dialect = Dialect.EXTENDED):
    return compile_text("t.cf", text, dialect).diagnostics


def test_good_file_has_no_diagnostics():
    assert _diags(GOOD) == ()


def test_every_semantic_code_has_a_case():
    semantic = {c for c in CODES if c.startswith("LVS2")}
    assert {case.code for case in CASES} == semantic


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.code)
def test_check_fires(case):
    diags = _diags(case.trigger, case.dialect)
    # the inputs are well-formed: no syntax or value diagnostics
    assert [d.code.code for d in diags if d.code.code < "LVS200"] == []
    hits = [(d.span.line, d.severity) for d in diags if d.code.code == case.code]
    assert hits == [(case.line, case.severity)], [
        (d.code.code, d.span.line, d.message) for d in diags
    ]
    assert case.code in {d.code.code for d in diags}
    hit = next(d for d in diags if d.code.code == case.code)
    assert hit.message and hit.span.file == "t.cf"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.code)
def test_check_quiet_on_close_variant(case):
    diags = _diags(case.clean, case.dialect)
    assert [d.code.code for d in diags if d.code.code < "LVS200"] == []
    assert case.code not in {d.code.code for d in diags}


# ----------------------------------------------------------------- particular rules


def test_a_file_without_any_block_is_a_fragment_not_a_config():
    assert _diags("primary = 192.0.2.2\n") == ()
    text = "primary = 192.0.2.2\nfailover f {\n     active = 1\n}\n"
    assert [(d.code.code, d.span.line) for d in _diags(text)] == [("LVS201", 2), ("LVS207", 2)]


def test_no_active_failover_in_fos_mode():
    text = "service = fos\nfailover f {\n     active = 0\n}\n"
    assert [(d.code.code, d.span.line) for d in _diags(text)] == [("LVS201", 2)]
    assert "failover" in _diags(text)[0].message


def test_destination_collision_is_a_warning_without_hard_shutdown():
    case = next(c for c in CASES if c.code == "LVS214")
    diags = _diags("hard_shutdown = 0\n" + case.trigger)
    assert [(d.span.line, d.severity) for d in diags if d.code.code == "LVS214"] == [(15, W)]


def test_destination_collision_only_for_direct_routing_and_tunnel():
    case = next(c for c in CASES if c.code == "LVS214")
    nat = case.trigger.replace("network = direct", "network = nat\nnat_router = 192.0.2.1 eth1:1")
    assert "LVS214" not in {d.code.code for d in _diags(nat)}
    tunnel = case.trigger.replace("network = direct", "network = tunnel")
    assert "LVS214" in {d.code.code for d in _diags(tunnel)}


def test_negative_weight_and_negative_timeout_are_errors():
    diags = _diags(good("weight = 1", "weight = -3"))
    assert [(d.code.code, d.severity) for d in diags] == [("LVS215", E)]
    assert "negative" in diags[0].message
    diags = _diags(vline("     timeout = -5\n"))
    assert [(d.code.code, d.severity) for d in diags] == [("LVS249", E)]


def test_shared_fwmark_persistence_conflict_points_at_persistent():
    text = two("fwmark = 9\n     persistent = 60", "fwmark = 9\n     persistent = 300")
    diags = [d for d in _diags(text) if d.code.code == "LVS205"]
    assert [(d.span.line, "persistent 300, not 60" in d.message) for d in diags] == [(18, True)]


def test_shared_fwmark_note_explains_piranha():
    note = next(d for d in _diags(two("fwmark = 100", "fwmark = 100")) if d.code.code == "LVS204")
    assert "ipvsadm -A -f 100" in note.notes[0]


def test_inactive_virtuals_and_servers_are_not_checked():
    text = good("active = 1\n     address", "active = 0\n     address").replace(
        "weight = 1", "weight = 0\n         port = 70000"
    )
    assert {d.code.code for d in _diags(text)} == {"LVS201"}
    text = sline("     }\n     server b {\n         active = 0\n         weight = -1\n")
    assert _diags(text) == ()


def test_nat_subnet_uses_the_classful_mask_when_nat_nmask_is_unset():
    text = good("network = direct\n", "network = nat\nnat_router = 10.9.0.1 eth1:1\n")
    text = text.replace("192.0.2.11", "10.200.0.5")
    assert "LVS219" not in {d.code.code for d in _diags(text)}  # 10.0.0.0/8
    text = text.replace("eth1:1\n", "eth1:1\nnat_nmask = 255.255.0.0\n")
    hit = next(d for d in _diags(text) if d.code.code == "LVS219")
    assert "10.9.0.0/16" in hit.message
    text = text.replace("255.255.0.0", "255.255.255.255")  # a /32 tells nothing: skipped
    assert "LVS219" not in {d.code.code for d in _diags(text)}


def test_explicit_network_nat_is_an_error_implicit_a_warning():
    explicit = [d for d in _diags(good("network = direct", "network = nat"))]
    assert [(d.code.code, d.severity) for d in explicit] == [("LVS260", E)]
    implicit = [d for d in _diags(good("network = direct\n", ""))]
    assert [(d.code.code, d.severity) for d in implicit] == [("LVS269", W)]


def test_per_virtual_nat_without_nat_router():
    text = vline("     network = nat\n")
    assert [(d.code.code, d.span.line) for d in _diags(text) if d.severity is E] == [("LVS260", 6)]


def test_deadtime_equal_to_keepalive_is_certain_flapping_and_needs_a_backup():
    text = HA + "keepalive = 3\ndeadtime = 3\n" + GOOD
    hit = next(d for d in _diags(text) if d.code.code == "LVS261")
    assert "not longer than" in hit.message and hit.span.line == 5
    single = text.replace("backup_active = 1", "backup_active = 0")
    assert "LVS261" not in {d.code.code for d in _diags(single)}


def test_single_quoted_expect_and_program():
    text = vline("     send_program = '/bin/check %h'\n     expect = 'OK'\n")
    hits = [(d.span.line, d.message) for d in _diags(text) if d.code.code == "LVS247"]
    assert [line for line, _ in hits] == [6, 7]
    assert "program" in hits[0][1] and "reply" in hits[1][1]


def test_single_quotes_are_part_of_the_string_nanny_unescapes():
    # `'\'` reaches nanny as the three characters ' \ ' and `\'` is a known escape
    assert "LVS246" not in {d.code.code for d in _diags(vline("     send = '\\'\n"))}


def test_regex_is_judged_after_nannys_unescaping():
    # in the file `\\.` ; nanny makes it `\.` ; regcomp accepts a quoted dot
    assert _diags(vline('     use_regex = 1\n     expect = "1\\\\.[01]"\n')) == ()
    # `\.` in the file: nanny loops in its unescaping before any regex is compiled
    codes_ = {d.code.code for d in _diags(vline('     use_regex = 1\n     expect = "1\\.0"\n'))}
    assert codes_ == {"LVS246"}


def test_udp_port_80_without_send_gets_nannys_default_http_probe():
    text = good("port = 80", "port = 80\n     protocol = udp")
    assert "LVS242" not in {d.code.code for d in _diags(text)}


def test_use_regex_with_send_program():
    text = vline('     use_regex = 1\n     send_program = "/bin/c %h"\n     expect = "^OK"\n')
    hit = next(d for d in _diags(text) if d.code.code == "LVS245")
    assert "exactly" in hit.message


def test_shared_scsi_without_conflict_action_in_fos_mode():
    text = "service = fos\nprimary_shared = /dev/sdb\nbackup_shared = /dev/sdb\n"
    text += "failover f {\n     active = 1\n     address = 192.0.2.20 eth0:2\n}\n"
    assert [(d.code.code, d.span.line) for d in _diags(text)] == [("LVS265", 2)]
    fixed = text.replace(
        "service = fos\n", "service = fos\nreservation_conflict_action = nothing\n"
    )
    assert _diags(fixed) == ()


def test_port_after_servers_names_every_stale_server():
    text = good("     port = 80\n", "").replace(
        "     }\n}",
        "     }\n     server b {\n         address = 192.0.2.12\n         active = 1\n     }\n"
        "     port = 443\n}",
    )
    hit = next(d for d in _diags(text) if d.code.code == "LVS217")
    assert "and 1 more" in hit.message and hit.span.line == 14


def test_load_monitor_names_the_rsh_command():
    hit = next(
        d
        for d in _diags("rsh_command = ssh\n" + vline("     load_monitor = uptime\n"))
        if d.code.code == "LVS252"
    )
    assert "`ssh RIP uptime`" in hit.message


# ----------------------------------------------------------------- nanny's unescaping


@pytest.mark.parametrize(
    ("text", "converted", "stuck"),
    [
        ("GET / HTTP/1.0\\r\\n\\r\\n", "GET / HTTP/1.0\r\n\r\n", None),
        ("a\\\\d", "a\\d", None),
        ("say \\'hi\\' \\\"x\\\"\\t", "say 'hi' \"x\"\t", None),
        ("\\", "\\", None),  # one byte: convert_str leaves it alone
        ("ab\\", "ab", 2),  # a final backslash: endless loop
        ("x\\.y", "x", 1),
        ("\\\\\\d", "\\", 2),
    ],
)
def test_nanny_unescape(text, converted, stuck):
    assert _nanny_unescape(text) == (converted, stuck)


# ----------------------------------------------------------------- POSIX ERE

FIXED_REGEX = {
    "HTTP/1\\.[01] 200": None,
    "a{": "Unmatched \\{",
    "a{2,1}": "Invalid content of \\{\\}",
    "(a": "Unmatched ( or \\(",
    "a)": None,  # an unmatched ) is an ordinary character in ERE
    "*a": "Invalid preceding regular expression",
    "^*": "Invalid preceding regular expression",
    "a**": None,
    "(?:x)": "Invalid preceding regular expression",
    "[[:digit:]]+": None,
    "[[:digits:]]": "Invalid character class name",
    "[z-a]": "Invalid range end",
    "[a": "Unmatched [, [^, [:, [., or [=",
    "\\1(a)": "Invalid back reference",
    "(a)\\1": None,
    "x\\": "Trailing backslash",
    "a{32768}": "Regular expression too big",
}


@pytest.mark.parametrize(("pattern", "error"), FIXED_REGEX.items())
def test_ere_fixed_cases(pattern, error):
    assert ere_error(pattern) == error


def _glibc_regcomp():
    """regcomp(REG_EXTENDED) from the C library, or None if it is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "gnu_get_libc_version"):
        return None
    preg = ctypes.create_string_buffer(256)  # sizeof(regex_t) is 64 on x86-64
    message = ctypes.create_string_buffer(256)

    def regcomp(pattern: bytes) -> str | None:
        rc = libc.regcomp(preg, pattern, 1)  # REG_EXTENDED
        if rc == 0:
            libc.regfree(preg)
            return None
        libc.regerror(rc, preg, message, len(message))
        return message.value.decode()

    return regcomp


_REGCOMP = _glibc_regcomp()
_PIECES = ["a", "1", "0", ",", "(", ")", "|", "*", "+", "?", "{", "}", "[", "]", "^", "$",
           "-", ".", "\\", "\\1", "\\2", "\\w", "\\b", "[:alpha:]", "[:", ":]", "[.", ".]",
           "[=a=]", "{1,2}", "{2}", "{,", "\xff", "é"]  # fmt: skip


@pytest.fixture
def c_locale():
    """nanny never calls setlocale: compare in the C locale."""
    saved = locale.setlocale(locale.LC_ALL)
    locale.setlocale(locale.LC_ALL, "C")
    yield
    locale.setlocale(locale.LC_ALL, saved)


@settings(
    max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
def test_ere_agrees_with_glibc(c_locale, pattern):
    assert _REGCOMP is not None, "glibc's regcomp is the reference (Debian 12 has it)"
    data = pattern.encode("utf-8", "surrogateescape")
    assert ere_error(pattern) == _REGCOMP(data), pattern


def test_ere_fixed_cases_agree_with_glibc(c_locale):
    assert _REGCOMP is not None, "glibc's regcomp is the reference (Debian 12 has it)"
    for pattern in FIXED_REGEX:
        assert ere_error(pattern) == _REGCOMP(pattern.encode()), pattern


# ----------------------------------------------------------------- robustness

_hosts = st.one_of(
    st.none(),
    st.builds(IPv4Address, st.integers(0, 2**32 - 1)),
    st.builds(IPv6Address, st.integers(0, 2**128 - 1)),
    st.builds(Hostname, st.sampled_from(["db.example", "web", "x"])),
)
_ints = st.one_of(st.integers(-5, 5), st.integers(-(2**40), 2**40), st.sampled_from([0, 80, 65536]))
_masks = st.one_of(st.none(), st.builds(IPv4Address, st.integers(0, 2**32 - 1)))
_texts = st.one_of(st.none(), st.text(alphabet="ab %hp\\'\"[(*{}.\n", max_size=12))
_servers = st.builds(
    RealServer,
    name=st.sampled_from(["a", "b"]),
    address=_hosts,
    active=st.booleans(),
    weight=_ints,
    port=_ints,
)
_services = st.builds(
    VirtualService,
    name=st.sampled_from(["v", "w"]),
    active=st.booleans(),
    address=_hosts,
    sorry_server=st.one_of(st.none(), st.builds(IPv4Address, st.integers(0, 2**32 - 1))),
    fwmark=_ints,
    protocol=st.sampled_from(Protocol),
    port=_ints,
    network=st.one_of(st.none(), st.sampled_from(Network)),
    scheduler=st.sampled_from(Scheduler),
    persistent=_ints,
    pmask=_masks,
    vip_nmask=_masks,
    send_program=_texts,
    send=_texts,
    expect=_texts,
    use_regex=st.booleans(),
    timeout=_ints,
    reentry=_ints,
    load_monitor=st.one_of(st.none(), st.sampled_from(["uptime", "rup", "ruptime", "none", "x"])),
    single_quoted=st.frozensets(st.sampled_from(["send", "expect", "send_program", "start_cmd"])),
    servers=st.lists(_servers, max_size=4).map(tuple),
)


_failovers = _services.map(
    lambda v: FailoverService(
        name=v.name,
        active=v.active,
        address=v.address,
        timeout=v.timeout,
        send=v.send,
        expect=v.expect,
        single_quoted=v.single_quoted,
    )
)


@st.composite
def _configs(draw) -> Config:
    n = st.integers(-(2**33), 2**33)
    return Config(
        service=draw(st.sampled_from(ServiceType)),
        primary=draw(_hosts),
        backup=draw(_hosts),
        backup_active=draw(st.booleans()),
        keepalive=draw(st.one_of(_ints, st.floats(0, 10))),
        deadtime=draw(st.one_of(_ints, st.floats(0, 10))),
        network=draw(st.sampled_from(Network)),
        nat_router=draw(st.none() | st.builds(HostDevice, address=_hosts, device=st.just("e"))),
        nat_nmask=draw(_masks),
        tcp_timeout=draw(n),
        udp_timeout=draw(n),
        syncd_id=draw(n),
        monitor_links=draw(n),
        hard_shutdown=draw(st.booleans()),
        primary_shared=draw(_texts),
        backup_shared=draw(_texts),
        reservation_conflict_action=draw(st.sampled_from([None, "nothing", "preempt"])),
        virtuals=tuple(draw(st.lists(_services, max_size=4))),
        failovers=tuple(draw(st.lists(_failovers, max_size=2))),
    )


@settings(max_examples=300, deadline=None)
@given(_configs())
def test_checks_never_raise_on_any_model(config):
    for dialect in Dialect:
        for d in check(config, dialect):
            assert d.code.code.startswith("LVS2") and d.message


def test_checks_are_pure(monkeypatch):
    """No name resolution and no file access while checking, even with host names."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a check did I/O")

    text = vline("     sorry_server = 192.0.2.11\n").replace("192.0.2.11\n", "db.example\n", 1)
    result = compile_text("t.cf", "primary = router.example\n" + text)
    for name in ("gethostbyname", "getaddrinfo", "getservbyname", "create_connection"):
        monkeypatch.setattr(socket, name, forbidden)
    monkeypatch.setattr("builtins.open", forbidden)
    for c in CHECKS:
        list(c(result.config, Dialect.EXTENDED))


def test_models_built_by_hand_work_without_spans():
    vs = VirtualService(name="v", active=True, servers=(RealServer(name="a", active=True),))
    found = {d.code.code for d in check(Config(virtuals=(vs,)), Dialect.EXTENDED)}
    assert {"LVS202", "LVS211", "LVS269"} <= found
    vs = replace(vs, address=IPv4Address("192.0.2.1"), port=0, timeout=0)
    assert {"LVS226", "LVS249"} <= {
        d.code.code for d in check(Config(virtuals=(vs,)), Dialect.EXTENDED)
    }


# ----------------------------------------------------------------- the shared samples

# what each sample's content calls for (piranha 0.8.6 dialect); none is an error
SAMPLE_CODES = {
    "01": {"LVS207", "LVS252", "LVS264"},
    "02": {"LVS207", "LVS252", "LVS264"},
    "04": {"LVS201", "LVS264", "LVS268"},
    "05": {"LVS201", "LVS264"},
    "07": {"LVS230", "LVS264"},
    "08": {"LVS240", "LVS264"},
    "09": {"LVS232", "LVS264"},
    "10": {"LVS232", "LVS264"},
    "11": {"LVS269"},
    "12": {"LVS204", "LVS240", "LVS264"},
    "14": {"LVS264"},
    "16": {"LVS269"},
    "18": {"LVS264"},
}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name[:2])
def test_samples_get_the_expected_semantic_diagnostics(path):
    result = compile_file(str(path), Dialect.PIRANHA)
    assert not [d for d in result.diagnostics if d.code.code.startswith("LVS2") and d.is_error]
    found = {d.code.code for d in result.diagnostics if d.code.code.startswith("LVS2")}
    assert found == SAMPLE_CODES[path.name[:2]]
