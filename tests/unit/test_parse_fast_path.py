"""The parser's fast path builds exactly what lark's parser builds.

``parse_syntax`` first replays lark's LALR table step by step (``_fast_parse``) and
only runs lark's own parser, with its error recovery, when the file has a syntax
error. These tests hold the two to the same result, and check the lazily built
``spans`` of the model and the lexer's line cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from compiler import Dialect, compile_text
from compiler.lexer import LexInput, Line, line_span, scan
from compiler.parser import Block, SyntaxFile, _fast_parse, _lark, _Recovery, parse_syntax
from compiler.source import Span
from tests.conftest import SAMPLES

pytestmark = pytest.mark.unit

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.cf"))


def _shape(item: Line | Block | SyntaxFile) -> tuple:
    if isinstance(item, SyntaxFile):
        return ("file", [_shape(i) for i in item.items])
    if isinstance(item, Block):
        close = _shape(item.close) if item.close else None
        return ("block", item.kind, _shape(item.header), [_shape(i) for i in item.items], close)
    return ("line", item.number, item.text, item.indent, item.words, item.quotes, item.synthetic)


def _with_lark(text: str) -> tuple[SyntaxFile, list]:
    data = LexInput("t.cf", text)
    tree = _lark().parse(data, on_error=_Recovery("t.cf", data.diagnostics))
    return tree, data.diagnostics


GUI = """serial_no = 3
primary = 192.0.2.1
service = lvs
network = direct
virtual web {
     active = 1
     address = 192.0.2.10 eth0:1
     port = 80
     send = "GET / HTTP/1.0\\r\\n\\r\\n"
     expect = "HTTP"
     scheduler = wlc
     server a {
         address = 198.18.0.1
         active = 1
         weight = 1
     }
     server b {
         address = 198.18.0.2
         active = 1
         weight = 1
     }
}
failover ftp {
     active = 0
     address = 192.0.2.11 eth0:2
     port = 21
}
"""

VALID = [
    GUI,
    "",
    "\n\n# only a comment\n",
    "virtual v {\n",  # unclosed: the lexer supplies the closing brace at EOF
    "virtual v {\n server s {\n  address = 10.0.0.1\n",
    "virtual v{\n}\n",  # a malformed header is the lexer's diagnostic, not a syntax error
    "virtual v\n{\n port = 80\n}\n",
    GUI.replace("\n", "\r\n"),
]

INVALID = [
    "}\n",
    "port = 80\n",
    "virtual v {\n weight = 1\n}\n",
    "server s {\n address = 10.0.0.1\n}\n",
    "virtual a {\nvirtual b {\n}\n",
    GUI + "}\n",
    GUI.replace("     active = 1\n", "     bogus = 1\n", 1),
]


@pytest.mark.parametrize("text", VALID + [p.read_text() for p in SAMPLES + EXAMPLES])
def test_fast_path_builds_what_lark_builds(text):
    data = LexInput("t.cf", text)
    fast = _fast_parse(data)
    slow, slow_diags = _with_lark(text)
    if fast is None:  # an example with a syntax error: the slow path is the only one
        return
    assert _shape(fast) == _shape(slow)
    assert data.diagnostics == slow_diags


@pytest.mark.parametrize("text", INVALID)
def test_syntax_errors_fall_back_to_lark(text):
    assert _fast_parse(LexInput("t.cf", text)) is None
    tree, diags = parse_syntax("t.cf", text)
    slow, slow_diags = _with_lark(text)
    assert _shape(tree) == _shape(slow)
    assert diags == slow_diags
    assert diags, "a syntax error must be reported"


def test_repeated_lines_are_separate_lines():
    # the lexer reuses what it read for an identical earlier line
    text = "virtual a {\n port = 80\n}\nvirtual b {\n port = 80\n}\n"
    ttypes, lines = scan(LexInput("t.cf", text))
    assert ttypes == ["VIRTUAL", "K_PORT", "RBRACE"] * 2
    assert [line.number for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[1].words == lines[4].words == ["port", "=", "80"]


def test_a_bad_line_is_reported_every_time():
    text = "virtual a {\n}  x\n}  x\n"
    r = compile_text("t.cf", text)
    extra = [d.span.line for d in r.diagnostics if d.code.code == "LVS014"]
    assert extra == [2, 3]


def test_spans_are_spans_of_the_lines():
    r = compile_text("t.cf", GUI)
    vs = r.config.virtuals[0]
    port = vs.spans.get("port")
    assert isinstance(port, Span)
    assert (port.line, port.col, port.end_col) == (8, 6, 15)
    assert vs.spans["port"] == port
    assert "port" in vs.spans and "fwmark" not in vs.spans
    assert vs.spans.get("fwmark") is None
    assert list(vs.spans) == [
        "active",
        "address",
        "port",
        "send",
        "expect",
        "scheduler",
    ]
    assert dict(vs.spans) == {k: vs.spans[k] for k in vs.spans}
    rs = vs.servers[1]
    assert rs.spans["address"] == Span("t.cf", 18, 10, 30)
    assert r.config.spans["network"].line == 4
    with pytest.raises(KeyError):
        vs.spans["fwmark"]


def test_span_of_a_line_keeps_its_rule():
    line = Line(7, "   port = 80  ", 3, ["port", "=", "80"])
    assert line_span("f", line) == Span("f", 7, 4, 13)


def test_dialects_agree_on_the_fast_path():
    for dialect in Dialect:
        r = compile_text("t.cf", GUI, dialect)
        assert r.config.virtuals[0].servers[1].weight == 1


def test_spans_of_a_syntax_file_built_by_hand():
    # without the file's lines (source_lines None), lower takes them from the Lines
    from compiler.lower import lower
    from compiler.model import Dialect

    header = Line(2, "virtual v {", 0, ["virtual", "v", "{"])
    port = Line(3, "   port = 8080 ", 3, ["port", "=", "8080"])
    close = Line(4, "}", 0, ["}"])
    syntax = SyntaxFile([Line(1, "keepalive = 3", 0, ["keepalive", "=", "3"])])
    syntax.items.append(Block("virtual", header, [port], close))
    config, diags = lower(syntax, "h.cf", Dialect.EXTENDED)
    assert diags == []
    assert config.virtuals[0].port == 8080
    assert config.virtuals[0].spans["port"] == line_span("h.cf", port)
    assert config.spans["keepalive"] == Span("h.cf", 1, 1, 14)
