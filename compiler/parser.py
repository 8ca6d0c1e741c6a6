"""lvs.cf text -> syntax blocks (structure only), with parse errors as diagnostics.

One cached lark LALR parser built from grammars/lvs_cf.lark, used two ways:

* a valid file takes the fast path (:func:`_fast_parse`): lark's parse table is
  replayed one memoised step per line by :class:`_Automaton`, and the
  :class:`Block` objects are built as the steps say, with no parse tree and no
  per-reduction callbacks (600,000 lines in well under a second);
* at the first syntax error the file is parsed again by lark itself, tree-less:
  the :class:`_Build` callbacks run on each reduction, and :class:`_Recovery`
  turns each error into a diagnostic and resumes. The callbacks are stateless;
  everything per-parse (file name, diagnostics) travels in the
  :class:`~compiler.lexer.LexInput` and the error handler's closure.

Both paths build the same :class:`SyntaxFile` (tests/unit/test_parse_fast_path.py).
"""

from __future__ import annotations

import difflib
import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

from lark import Lark, Token
from lark.exceptions import UnexpectedInput, UnexpectedToken
from lark.parsers.lalr_analysis import Shift

from grammars import grammar_text

from . import codes
from .diagnostics import Diagnostic, make
from .keywords import GLOBAL, SERVER, VIRTUAL, terminal_name
from .lexer import (
    LexInput,
    Line,
    LineLexer,
    LineToken,
    comment_help,
    line_span,
    scan,
    split_lines,
    word_span,
)
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
    """The top level: global statements and blocks in file order.

    ``source_lines`` are the file's lines (index = line number - 1), which the model
    keeps to compute the spans of its statements on demand; None when unknown (a
    SyntaxFile built by hand), in which case they are taken from the Line objects.
    """

    items: list[Line | Block]
    source_lines: list[str] | None = None


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


_END = "$END"
_SHIFT_ITEM, _SHIFT_OPEN, _SHIFT_CLOSE = 0, 1, 2


class _Automaton:
    """lark's LALR table, replayed one whole step per token and memoised.

    lark's parser spends about 10 µs per token: each line is shifted, then reduced
    through ``?service_stmt``, ``_service_item`` and the ``*`` list rules, each
    reduction calling a tree-builder wrapper. For 600,000 lines that is most of a
    compile. Yet the grammar is tiny and its stack stays shallow (blocks nest two
    deep), so the number of distinct parser stacks is small. This class runs
    lark's own table once for each (stack, terminal) pair met and remembers the
    outcome: the stack after the token is shifted, how many blocks the reductions
    before that shift closed, and whether the token opens a block, closes one or
    is an item. Replaying a step is then one dict lookup per line, with no
    callbacks; the syntax objects are built by :func:`_fast_parse`.

    The grammar stays the only authority on structure: a token the table has no
    action for is a syntax error, and the caller then parses the file again with
    lark's parser and its error recovery (``_Recovery``), so diagnostics come from
    exactly one place. The shape this relies on is checked when the table is
    loaded: a block rule (``virtual``, ``failover``, ``server``) starts with its
    header terminal and ends with ``RBRACE``, and only block rules and ``start``
    build values (see :class:`_Build`).
    """

    def __init__(self, lark: Lark) -> None:
        table = lark.parser.parser.parser.parse_table  # lark's LALR_Parser -> _Parser
        self._states = table.states
        self._end_state = table.end_states["start"]
        blocks = set(_BLOCK_OF_TERMINAL.values())
        self._block_rules = set()
        for rule in lark.rules:
            if rule.origin.name in blocks:
                names = [s.name for s in rule.expansion]
                if names[0] not in _BLOCK_OF_TERMINAL or names[-1] != "RBRACE":
                    raise RuntimeError(f"grammar: block rule {rule} is not HEADER ... RBRACE")
                self._block_rules.add(rule)
        self._stacks: list[tuple[int, ...]] = []
        self._ids: dict[tuple[int, ...], int] = {}
        self._lock = threading.Lock()  # steps are added by whichever thread meets them
        # steps[stack id]: terminal -> (next stack id, blocks closed, shift kind)
        self.steps: list[dict[str, tuple[int, int, int]]] = []
        self.start = self._id((table.start_states["start"],))

    def _id(self, stack: tuple[int, ...]) -> int:
        sid = self._ids.get(stack)
        if sid is None:
            sid = self._ids[stack] = len(self._stacks)
            self._stacks.append(stack)
            self.steps.append({})
        return sid

    def step(self, sid: int, ttype: str) -> tuple[int, int, int] | None:
        """Run lark's table for one token from stack ``sid``; None on a syntax error."""
        with self._lock:
            return self._step(sid, ttype)

    def _step(self, sid: int, ttype: str) -> tuple[int, int, int] | None:
        states = self._states
        stack = list(self._stacks[sid])
        closed = 0
        while True:
            action = states[stack[-1]].get(ttype)
            if action is None:
                return None
            kind, arg = action
            if kind is Shift:
                if ttype == _END:
                    return None  # lark never shifts $END; accept is by reduction
                stack.append(arg)
                break
            # reduce: pop the rule's symbols, then take the goto on its origin
            if arg in self._block_rules:
                closed += 1
            if arg.expansion:
                del stack[-len(arg.expansion) :]
            stack.append(states[stack[-1]][arg.origin.name][1])
            if ttype == _END and stack[-1] == self._end_state:
                break
        if ttype in _BLOCK_OF_TERMINAL:
            shift = _SHIFT_OPEN
        elif ttype == "RBRACE":
            shift = _SHIFT_CLOSE
        else:
            shift = _SHIFT_ITEM
        result = (self._id(tuple(stack)), closed, shift)
        self.steps[sid][ttype] = result
        return result


@cache
def _automaton() -> _Automaton:
    return _Automaton(_lark())


def _fast_parse(data: LexInput) -> SyntaxFile | None:
    """Parse a syntactically valid file without lark's per-token machinery.

    Builds the same :class:`SyntaxFile` as the :class:`_Build` callbacks would, but
    top-down: a block is created when its header is shifted, statements are
    appended to the innermost open block as they come, ``}`` is recorded as its
    close, and the block is attached to its parent when the table reduces it.
    Returns None at the first syntax error.
    """
    auto = _automaton()
    steps = auto.steps
    sid = auto.start
    top: list[Line | Block] = []
    items = top
    open_blocks: list[Block] = []
    for ttype, line in zip(*scan(data), strict=True):
        step = steps[sid].get(ttype) or auto.step(sid, ttype)
        if step is None:
            return None
        sid, closed, shift = step
        while closed:
            block = open_blocks.pop()
            items = open_blocks[-1].items if open_blocks else top
            items.append(block)
            closed -= 1
        if shift == _SHIFT_ITEM:
            items.append(line)
        elif shift == _SHIFT_OPEN:
            block = Block(_BLOCK_OF_TERMINAL[ttype], line, [])
            open_blocks.append(block)
            items = block.items
        else:
            open_blocks[-1].close = line
    step = auto.step(sid, _END)
    if step is None:
        return None
    for _ in range(step[1]):
        block = open_blocks.pop()
        (open_blocks[-1].items if open_blocks else top).append(block)
    return SyntaxFile(top, data.lines)


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
    with gc_paused():
        data = LexInput(file, text)
        tree = _fast_parse(data)
        if tree is None:
            # a syntax error: start again with lark's parser, whose error recovery
            # turns each problem into a diagnostic and carries on
            data = LexInput(file, text)
            recovery = _Recovery(file, data.diagnostics)
            tree = _lark().parse(data, on_error=recovery)  # type: ignore[arg-type]
            tree.source_lines = split_lines(text)
    return tree, data.diagnostics


@contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector away from a big structure while it is built.

    Every Line, Block, list and model object allocated while compiling stays
    alive, so each automatic collection scans an ever larger young heap and finds
    nothing: on a 600,000-line file that was over half of the time. The collector
    is therefore disabled inside the block. On the way out, what was allocated is
    handed to the oldest generation with ``gc.freeze(); gc.unfreeze()``: otherwise
    the first allocation after re-enabling would scan all of it as "young" (0.3 s
    for a large file), and again when promoting it. Nothing is exempted from
    collection for good: a bare ``gc.freeze()`` would do that, and in a
    long-running process, objects alive now that later become cyclic garbage
    would leak. A short-lived program that wants no collections at all can
    disable the collector itself; this then leaves it alone.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()  # moves every tracked object to the permanent generation...
        gc.unfreeze()  # ...and back into the oldest one, without scanning them
        gc.enable()


def terminal_of(keyword: str) -> str:
    return terminal_name(keyword)


__all__ = ["Block", "Line", "Span", "SyntaxFile", "parse_syntax"]
