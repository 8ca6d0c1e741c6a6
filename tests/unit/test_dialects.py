"""Dialect verdicts on the shared samples, against piranha-spec.md §2.

piranha 0.8.6 accepts every sample; the 0.5.x parser (2001) accepts only sample 01
and rejects the others with "unknown command" at the first keyword it predates.
The expected lines below were read off the sample files by hand.
"""

from __future__ import annotations

import pytest

from compiler import Dialect, compile_file, compile_text
from tests.conftest import SAMPLES

# sample prefix -> (line of piranha 0.5's error, the keyword there)
REJECTED_BY_05 = {
    "02": (49, "primary_private"),
    "04": (5, "serial_no"),
    "05": (4, "serial_no"),
    "07": (7, "serial_no"),
    "08": (9, "serial_no"),
    "09": (7, "serial_no"),
    "10": (6, "serial_no"),
    "11": (10, "fwmark"),
    "12": (6, "serial_no"),
    "14": (7, "serial_no"),
    "16": (15, "use_regex"),
    "18": (6, "serial_no"),
}


@pytest.mark.unit
@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name[:2])
def test_piranha_05_verdict_and_error_line(path):
    result = compile_file(str(path), Dialect.PIRANHA_05)
    expected = REJECTED_BY_05.get(path.name[:2])
    if expected is None:
        assert result.ok, [d.message for d in result.errors]
        return
    first = result.errors[0]
    assert (first.span.line, first.code.code) == (expected[0], "LVS302")
    assert f"`{expected[1]}`" in first.message


@pytest.mark.unit
def test_piranha_05_schedulers_and_server_port():
    text = "virtual v {\n active = 1\n scheduler = sh\n server a {\n  port = 80\n }\n}\n"
    codes = [(d.span.line, d.code.code) for d in compile_text("t", text, Dialect.PIRANHA_05).errors]
    assert codes == [(3, "LVS302"), (5, "LVS302")]
    assert compile_text("t", text, Dialect.PIRANHA).ok


@pytest.mark.unit
def test_eof_inside_block_is_an_error_only_for_05():
    text = "virtual v {\n active = 1\n"
    assert compile_text("t", text, Dialect.PIRANHA).ok
    errs = compile_text("t", text, Dialect.PIRANHA_05).errors
    assert [(d.span.line, d.code.code) for d in errs] == [(1, "LVS018")]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("line", "what"),
    [
        ("keepalive = 0.5", "fractional"),
        ("primary = 2001:db8::1", "IPv6"),
    ],
)
def test_extensions_are_notes_in_extended_and_errors_in_piranha(line, what):
    ext = compile_text("t", line + "\n", Dialect.EXTENDED)
    assert ext.ok
    assert [d.code.code for d in ext.diagnostics if d.code.code == "LVS301"] == ["LVS301"]
    strict = compile_text("t", line + "\n", Dialect.PIRANHA)
    assert [(d.span.line, d.code.code) for d in strict.errors] == [(1, "LVS301")]
    assert what.lower() in strict.errors[0].message.lower()
