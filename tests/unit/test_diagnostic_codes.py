"""Every registered diagnostic code is documented and is produced by some input.

TABLE holds one input per code with the line and column the diagnostic must point
at. docs/diagnostics.md must have a section `## LVSnnn name` per code, and the
example in that section must produce the code (so the page cannot drift from the
compiler).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from compiler import Dialect, compile_text
from compiler.diagnostics import CODES
from tests.conftest import ROOT

pytestmark = pytest.mark.unit

X, P, P05 = Dialect.EXTENDED, Dialect.PIRANHA, Dialect.PIRANHA_05

# A direct-routing virtual with one real server; `{v}` adds virtual lines after
# `port` (line 5), `{s}` server lines after `weight` (line 9).
_V = """\
network = direct
virtual web {
     active = 1
     address = 192.0.2.10 eth0:1
     port = 80
{v}     server a {
         address = 192.0.2.11
         active = 1
         weight = 1
{s}     }
}
"""


def v(virtual: str = "", server: str = "", before: str = "", after: str = "") -> str:
    return before + _V.replace("{v}", virtual).replace("{s}", server) + after


_SECOND = """\
virtual b {
     active = 1
     address = 192.0.2.10 eth0:1
     port = 80
%s     server b {
         address = 192.0.2.12
         active = 1
     }
}
"""
HA = "primary = 192.0.2.2\nbackup = 192.0.2.3\nbackup_active = 1\n"

# code, dialect, input, line, column
TABLE: list[tuple[str, Dialect, str, int, int]] = [
    # file and syntax
    ("LVS001", X, "", 1, 1),
    ("LVS002", X, "primary = 192.0.2.2\n\x00junk\n", 2, 1),
    ("LVS010", X, "primry = 192.0.2.2\n", 1, 1),
    ("LVS011", X, "weight = 1\n", 1, 1),
    ("LVS012", X, "primary 192.0.2.2\n", 1, 9),
    ("LVS013", X, "primary =\n", 1, 1),
    ("LVS014", X, "keepalive = 2 # seconds\n", 1, 15),
    ("LVS015", X, 'virtual v {\n     send = "GET /\n}\n', 2, 13),
    ("LVS016", X, "virtual v{\n}\n", 1, 9),
    ("LVS017", X, "}\n", 1, 1),
    ("LVS018", X, "virtual v {\n     active = 0\n", 1, 1),
    ("LVS019", X, "virtual v {\n     dirs = a b\n}\n", 2, 6),
    # values
    ("LVS101", X, "keepalive = two\n", 1, 13),
    ("LVS102", X, "backup_active = 2\n", 1, 17),
    ("LVS103", X, "network = DIRECT\n", 1, 11),
    ("LVS104", X, "primary = 192.0.2.300.1\n", 1, 11),
    ("LVS105", X, "nat_nmask = 255.255.255.0/24\n", 1, 13),
    ("LVS106", X, "virtual v {\n     port = htp\n}\n", 2, 13),
    ("LVS107", X, "primary = 0.0.0.0\n", 1, 11),
    ("LVS108", X, "virtual v {\n     sorry_server = sorry.example\n}\n", 2, 21),
    ("LVS110", X, "keepalive = 2\nkeepalive = 3\n", 2, 1),
    ("LVS111", X, "primary = lvs1.example\n", 1, 11),
    ("LVS113", X, "virtual v {\n     pmask = /24\n}\n", 2, 14),
    (
        "LVS114",
        X,
        "virtual v {\n     address = 2001:2::10 eth0\n     pmask = 255.255.255.0\n}\n",
        3,
        14,
    ),
    # semantic checks
    ("LVS201", X, v().replace("active = 1\n     address", "active = 0\n     address"), 2, 1),
    ("LVS202", X, v().replace("     address = 192.0.2.10 eth0:1\n", ""), 2, 1),
    ("LVS203", X, v(after=_SECOND % ""), 14, 6),
    ("LVS204", X, v("     fwmark = 100\n", after=_SECOND % "     fwmark = 100\n"), 17, 6),
    (
        "LVS205",
        X,
        v("     fwmark = 100\n", after=_SECOND % "     fwmark = 100\n     scheduler = rr\n"),
        18,
        6,
    ),
    ("LVS206", X, v(after=_SECOND.replace("b {", "web {", 1) % "     port = 443\n"), 12, 1),
    ("LVS207", X, v(after="failover f {\n     active = 1\n}\n"), 12, 1),
    ("LVS208", X, v(before="service = fos\n", after="failover f {\n     active = 1\n}\n"), 3, 1),
    ("LVS210", X, v().replace("         active = 1\n", "         active = 0\n"), 2, 1),
    ("LVS211", X, v().replace("         address = 192.0.2.11\n", ""), 6, 6),
    (
        "LVS212",
        X,
        v(server="     }\n     server b {\n         active = 1\n         address = 192.0.2.11\n"),
        13,
        10,
    ),
    ("LVS213", X, v(server="         port = 8080\n"), 10, 10),
    (
        "LVS214",
        X,
        v(
            server="     }\n     server b {\n         active = 1\n         address = 192.0.2.11\n"
            "         port = 81\n"
        ),
        14,
        10,
    ),
    ("LVS215", X, v().replace("weight = 1", "weight = 70000"), 9, 10),
    ("LVS216", X, v().replace("weight = 1", "weight = 0"), 9, 10),
    (
        "LVS217",
        X,
        v().replace("     port = 80\n", "").replace("     }\n}", "     }\n port = 8\n}"),
        10,
        2,
    ),
    ("LVS218", X, v("     sorry_server = 192.0.2.11\n"), 6, 6),
    ("LVS219", X, v().replace("direct", "nat\nnat_router = 198.51.100.1 eth1:1"), 8, 10),
    ("LVS220", X, v().replace("192.0.2.10 ", "2001:db8::10 "), 7, 10),
    ("LVS225", X, v().replace("port = 80", "port = 65536"), 5, 6),
    ("LVS226", X, v().replace("port = 80", "port = 0"), 5, 6),
    ("LVS227", X, v("     persistent = 2678401\n"), 6, 6),
    ("LVS228", X, v("     persistent = -60\n"), 6, 6),
    ("LVS229", X, v("     fwmark = 0xffffffff\n"), 6, 6),
    ("LVS230", X, v("     pmask = 255.255.255.0\n"), 6, 6),
    ("LVS231", X, v("     persistent = 60\n     pmask = 255.0.255.0\n"), 7, 6),
    ("LVS232", X, v('     fwmark = 5\n     protocol = udp\n     expect = "*"\n'), 7, 6),
    (
        "LVS240",
        X,
        v('     send_program = "/bin/c %h"\n     expect = "OK"\n     send = "x"\n'),
        8,
        6,
    ),
    ("LVS241", X, v('     send_program = "/bin/c %h"\n'), 6, 6),
    ("LVS242", X, v().replace("port = 80", "port = 53\n     protocol = udp"), 6, 6),
    ("LVS243", X, v('     use_regex = 1\n     expect = "(HTTP"\n'), 7, 6),
    ("LVS244", X, v('     use_regex = 1\n     expect = "\\\\d"\n'), 7, 6),
    ("LVS245", X, v("     use_regex = 1\n"), 6, 6),
    ("LVS246", X, v('     expect = "a\\.b"\n'), 6, 6),
    ("LVS247", X, v("     expect = 'HTTP'\n"), 6, 6),
    ("LVS248", X, v('     send_program = "/bin/c %h:%p"\n     expect = "OK"\n'), 6, 6),
    ("LVS249", X, v("     timeout = 0\n"), 6, 6),
    ("LVS250", X, v("     timeout = 20\n     reentry = 5\n"), 7, 6),
    ("LVS251", X, v("     reentry = 0\n"), 6, 6),
    ("LVS252", X, v("     load_monitor = rup\n"), 6, 6),
    ("LVS260", X, v().replace("network = direct", "network = nat"), 1, 1),
    ("LVS261", X, v(before=HA + "keepalive = 6\ndeadtime = 6\n"), 5, 1),
    ("LVS262", X, v(before="backup_active = 1\n"), 1, 1),
    ("LVS263", X, v(before="primary = 192.0.2.2\nbackup = 192.0.2.2\n"), 2, 1),
    ("LVS264", X, v(before="debug_level = NONE\n"), 1, 1),
    ("LVS265", X, v(before="reservation_conflict_action = preempt\n"), 1, 1),
    ("LVS266", X, v(before="udp_timeout = 9999999\n"), 1, 1),
    ("LVS267", X, v(before="syncd_id = 256\n"), 1, 1),
    ("LVS268", X, v(before="monitor_links = 1\n"), 1, 1),
    ("LVS269", X, v().replace("network = direct\n", ""), 1, 1),
    # dialect
    ("LVS301", X, "keepalive = 0.5\n", 1, 13),
    ("LVS301", P, "primary = 2001:db8::1\n", 1, 11),
    ("LVS302", P05, "serial_no = 3\n", 1, 1),
]

DOC_PATH = ROOT / "docs" / "diagnostics.md"


@pytest.mark.parametrize(
    ("code", "dialect", "text", "line", "col"),
    TABLE,
    ids=[f"{row[0]}-{row[1].value}" for row in TABLE],
)
def test_code_is_produced_where_expected(code, dialect, text, line, col):
    diags = compile_text("t.cf", text, dialect).diagnostics
    where = [(d.span.line, d.span.col) for d in diags if d.code.code == code]
    assert (line, col) in where, [(d.code.code, d.span.line, d.span.col) for d in diags]
    hit = next(d for d in diags if d.code.code == code and (d.span.line, d.span.col) == (line, col))
    assert hit.message


def test_every_registered_code_is_in_the_table():
    """Every code the compiler can emit is produced by at least one input above."""
    assert {row[0] for row in TABLE} == set(CODES)


# ----------------------------------------------------------------- docs/diagnostics.md


def _sections(path: Path) -> dict[str, tuple[str, str]]:
    """code -> (heading name, section text) for every `## LVSnnn name` heading."""
    text = path.read_text()
    found = {}
    heads = list(re.finditer(r"^## (LVS\d{3}) ([a-z0-9.-]+)\s*$", text, re.M))
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        found[m.group(1)] = (m.group(2), text[m.end() : end])
    return found


def test_every_code_has_a_section_with_its_name():
    sections = _sections(DOC_PATH)
    assert set(sections) == set(CODES)
    for code, (name, body) in sections.items():
        assert name == CODES[code].name, code
        assert CODES[code].severity.value in body.lower(), f"{code}: severity not stated"


def _example(body: str) -> tuple[str, Dialect] | None:
    m = re.search(r"```lvs\.cf(?: dialect=([a-z0-9.-]+))?\n(.*?)```", body, re.S)
    if m is None:
        return None
    dialect = Dialect(m.group(1)) if m.group(1) else Dialect.EXTENDED
    return m.group(2).replace("␀", "\x00"), dialect


@pytest.mark.parametrize("code", sorted(CODES))
def test_doc_example_produces_its_code(code):
    _, body = _sections(DOC_PATH)[code]
    example = _example(body)
    assert example is not None, f"{code}: no ```lvs.cf example"
    text, dialect = example
    diags = compile_text("lvs.cf", text, dialect).diagnostics
    shown = re.findall(rf"^lvs\.cf:(\d+):(\d+): \w+\[{code}\]", body, re.M)
    assert shown, f"{code}: the rendered diagnostic is missing"
    produced = {(str(d.span.line), str(d.span.col)) for d in diags if d.code.code == code}
    assert set(shown) <= produced, (code, shown, produced)
