"""lvs.cf text -> syntax blocks (structure only), with parse errors as diagnostics.

One cached lark LALR parser, tree-less: the callbacks below run on each reduction
and build :class:`Block` objects directly, so no parse tree is ever materialised.
The callbacks are stateless; everything per-parse (file name, diagnostics) travels
in the :class:`~compiler.lexer.LexInput` and the error handler's closure.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from functools import cache

from lark import Lark, Token
from lark.exceptions import UnexpectedInput, UnexpectedToken

from grammars import grammar_text

from . import codes
from .diagnostics import Diagnostic, make
from .keywords import GLOBAL, SERVER, VIRTUAL, terminal_name
from .lexer import LexInput, Line, LineLexer, LineToken, comment_help, line_span, word_span
from .source import Span

_BLOCK_OF_TERMINAL = {"VIRTUAL": "virtual", "FAILOVER": "failover", "SERVER": "server"}


@dataclass(slots=True)
class Block:
    """``virtual|failover|server NAME { ... }``: its header line, items and closing line."""

    kind: str
    header: Line
    items: list[Line | Block] = field(default_factory=list)
    close: Line | None = None

    @property
    def name(self) -> str:
        words = self.header.words
        return words[1].rstrip("{") if len(words) > 1 else ""

    @property
    def unclosed_at_eof(self) -> bool:
        return self.close is not None and self.close.synthetic == "eof"


@dataclass(slots=True)
class SyntaxFile:
    """The top level: global statements and blocks in file order."""

    items: list[Line | Block]


class _Build:
    """Tree-less callbacks: rule name -> function of the children list."""

    @staticmethod
    def _block(children: list) -> Block:
        head: LineToken = children[0]
        close: LineToken = children[-1]
        items = [c.stmt if isinstance(c, Token) else c for c in children[1:-1]]
        return Block(_BLOCK_OF_TERMINAL[head.type], head.stmt, items, close.stmt)

    virtual = failover = server = _block

    @staticmethod
    def start(children: list) -> SyntaxFile:
        return SyntaxFile([c.stmt if isinstance(c, Token) else c for c in children])


@cache
def _lark() -> Lark:
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer=LineLexer,
        transformer=_Build(),
        maybe_placeholders=False,
    )


_CONTEXT_KEYWORDS = {"global": GLOBAL, "virtual": VIRTUAL, "server": SERVER}


def _context(expected: set[str]) -> str:
    if "SERVER" in expected:
        return "virtual"
    if "VIRTUAL" in expected:
        return "global"
    return "server"


def _home(keyword: str) -> str:
    homes = [c for c, t in _CONTEXT_KEYWORDS.items() if keyword in t]
    return " and ".join(f"{h} block" if h != "global" else "global section" for h in homes)


class _Recovery:
    """Turns lark's UnexpectedToken into a diagnostic and resumes parsing."""

    def __init__(self, file: str, diags: list[Diagnostic]) -> None:
        self.file = file
        self.diags = diags
        self.skipping_server = False  # inside a `server {` that had no virtual around it

    def __call__(self, e: UnexpectedInput) -> bool:
        if not isinstance(e, UnexpectedToken) or not isinstance(e.token, LineToken):
            return False
        tok: LineToken = e.token
        line = tok.stmt
        ctx = _context(set(e.expected))
        where = "the global section" if ctx == "global" else f"a {ctx} block"
        f = self.file
        if tok.type == "RBRACE":
            if self.skipping_server:
                self.skipping_server = False
            elif not line.synthetic:
                self.diags.append(
                    make(
                        codes.STRAY_BRACE,
                        "unknown command: `}` without an open block",
                        line_span(f, line),
                        help="remove it, or look for a block header above that is not "
                        "`virtual NAME {`",
                    )
                )
            return True
        if self.skipping_server:
            return True
        if tok.type in ("VIRTUAL", "FAILOVER") and ctx != "global":
            self.diags.append(
                make(
                    codes.STRAY_BRACE,
                    f"`{line.keyword}` block inside {where}: is a `}}` missing above?",
                    line_span(f, line),
                    help="every block ends with `}` alone on a line; blocks other than "
                    "`server` do not nest",
                )
            )
            ip = e.interactive_parser
            for _ in range(2 if ctx == "server" else 1):
                close = Line(line.number, "", 0, ["}"], None, synthetic="recovery")
                rb = LineToken("RBRACE", "}", None, line.number, 1, line.number, 2)
                rb.stmt = close
                ip.feed_token(rb)
            ip.feed_token(tok)
            return True
        if tok.type == "SERVER":
            self.diags.append(
                make(
                    codes.WRONG_BLOCK,
                    f"unknown command: a `server` block must be inside a virtual or failover "
                    f"block, not in {where}",
                    line_span(f, line),
                    help="move it into the virtual service it belongs to",
                )
            )
            self.skipping_server = ctx == "global"
            return True
        kw = line.keyword
        if tok.type == "UNKNOWN":
            self.diags.append(self._unknown(line, ctx, where))
        else:
            self.diags.append(
                make(
                    codes.WRONG_BLOCK,
                    f"unknown command: `{kw}` is not allowed in {where}",
                    word_span(f, line, 0),
                    help=f"`{kw}` belongs in the {_home(kw)}",
                )
            )
        return True

    def _unknown(self, line: Line, ctx: str, where: str) -> Diagnostic:
        word = line.keyword
        table = _CONTEXT_KEYWORDS[ctx]
        help_ = None
        if "=" in word and word.split("=", 1)[0] in table:
            help_ = "`=` is a word of its own: write `KEY = VALUE` with blanks around `=`"
        elif word.lower() in table:
            help_ = f"keywords are lower case: `{word.lower()}`"
        elif c := comment_help(word):
            help_ = c
        else:
            close = difflib.get_close_matches(word, list(table), n=1, cutoff=0.7)
            if close:
                help_ = f"did you mean `{close[0]}`?"
        return make(
            codes.UNKNOWN_KEYWORD,
            f"unknown command: `{word}` is not an lvs.cf keyword in {where}",
            word_span(self.file, line, 0),
            help=help_,
        )


def parse_syntax(file: str, text: str) -> tuple[SyntaxFile, list[Diagnostic]]:
    """Parse text into blocks and statements; never raises on bad input."""
    data = LexInput(file, text)
    recovery = _Recovery(file, data.diagnostics)
    tree = _lark().parse(data, on_error=recovery)  # type: ignore[arg-type]
    return tree, data.diagnostics


def terminal_of(keyword: str) -> str:
    return terminal_name(keyword)


__all__ = ["Block", "Line", "Span", "SyntaxFile", "parse_syntax"]
