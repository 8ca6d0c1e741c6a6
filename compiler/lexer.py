"""The lvs.cf lexer: piranha's line tokenizer, one lark token per line.

piranha reads a line at a time (ended by LF or CR), skips leading blanks (space,
TAB), ignores a line whose first non-blank character is ``#``, and splits the rest
on runs of blanks. A word that *starts* with ``"`` or ``'`` runs to the next same
quote on the line and loses its quotes; there are no escapes. This module does
exactly that (``tokenize`` mirrors ``tokenizeString`` of piranha 0.8.6 including
its odd corners) and then classifies each line for the LALR parser:

* ``virtual|failover|server NAME {`` -> ``VIRTUAL`` / ``FAILOVER`` / ``SERVER``
* ``}``                              -> ``RBRACE``
* a keyword from compiler/keywords.py -> ``K_<KEYWORD>``
* anything else                      -> ``UNKNOWN``

Lines are not tokenized into lark tokens word by word: one token per line keeps the
parser loop at a few hundred thousand tokens for the largest real configurations.
:func:`scan` reads the whole file into a list of terminals and a list of
:class:`Line` objects (what the parser's fast path consumes); :class:`LineLexer`
hands the same to lark as tokens when the file has a syntax error. Problems the
tokenizer alone can see (a quote left open, a malformed block header) are
collected as diagnostics here; the rest is judged with the parser's context.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from lark import Token
from lark.lexer import Lexer

from . import codes
from .diagnostics import Diagnostic, make
from .keywords import ALL_KEYWORDS, terminal_name
from .source import Span

MAX_WORDS = 99  # piranha's LVS_MAX_TOKENS - 1; further words on a line are dropped
_BLANKS = " \t"
_TERMINALS = {k: terminal_name(k) for k in ALL_KEYWORDS}
_BLOCK_TERMINALS = {"virtual": "VIRTUAL", "failover": "FAILOVER", "server": "SERVER"}
_UNSEEN = object()  # scan(): a line not met before


class QuoteError(Exception):
    """A word opened a quote that the line never closes (piranha's BADQUOTING)."""

    def __init__(self, col: int, closed_before_blank: bool = False) -> None:
        super().__init__(col)
        self.col = col
        # the word did close (`"abc"`), but blanks followed it: piranha searches for
        # the closing quote from the first blank on, so this is still a mismatch
        self.closed_before_blank = closed_before_blank


@dataclass(slots=True)
class Line:
    """One significant line: its number, its words, and how each word was quoted.

    ``indent`` is the number of leading blanks, so the keyword's column is
    ``indent + 1``; finer columns are recomputed by :func:`word_columns` only
    when a diagnostic needs them. Identical lines of a file share their ``text``,
    ``words`` and ``quotes`` objects (see :func:`scan`): treat them as read-only.
    """

    number: int
    text: str
    indent: int
    words: list[str]
    quotes: list[str] | None = None  # None when no word was quoted
    # "" for a real line; "eof" for a `}` the lexer supplies at end of file,
    # "recovery" for one the parser's error recovery supplies
    synthetic: str = ""

    @property
    def keyword(self) -> str:
        return self.words[0]

    def quote(self, i: int) -> str:
        return self.quotes[i] if self.quotes else ""


class LineToken(Token):
    """A lark token that carries the whole :class:`Line` it stands for."""

    __slots__ = ("stmt",)
    stmt: Line


def tokenize(s: str) -> tuple[list[str], list[str] | None, list[int]]:
    """Split one line (leading blanks already removed) into words, piranha's way.

    Returns the words, their quote characters (None if none was quoted) and the
    0-based start offset of each word in ``s`` (for columns in diagnostics).
    Raises :class:`QuoteError` where piranha returns LVS_ERROR_BADQUOTING.
    """
    words: list[str] = []
    quotes: list[str] = []
    starts: list[int] = []
    n = len(s)
    i = 0
    any_quote = False
    while i < n and len(words) < MAX_WORDS:
        end = i
        while end < n and s[end] not in _BLANKS:
            end += 1
        q = s[i] if s[i] in "\"'" else ""
        if q:
            any_quote = True
            start = i + 1
            first_blank = end
            while end < n and s[end] != q:
                end += 1
            if end < n:
                end += 1  # past the closing quote
            if end <= start or s[end - 1] != q:
                raise QuoteError(i + 1, first_blank > start and s[first_blank - 1] == q)
            words.append(s[start : end - 1])
        else:
            words.append(s[i:end])
        quotes.append(q)
        starts.append(i)
        i = end
        while i < n and s[i] in _BLANKS:
            i += 1
    return words, (quotes if any_quote else None), starts


def word_columns(line: Line) -> list[tuple[int, int]]:
    """(col, end_col) of each word of ``line``, 1-based, end exclusive, quotes included."""
    body = line.text[line.indent :]
    try:
        words, quotes, starts = tokenize(body)
    except QuoteError:
        return [(line.indent + 1, len(line.text) + 1)]
    cols = []
    for w, q, st in zip(words, quotes or [""] * len(words), starts, strict=True):
        width = len(w) + (2 if q else 0)
        cols.append((line.indent + st + 1, line.indent + st + 1 + width))
    return cols


def word_span(file: str, line: Line, index: int) -> Span:
    """The span of word ``index`` of a line (the last word if there are fewer)."""
    cols = word_columns(line)
    if not cols:
        return Span(file, line.number, line.indent + 1, line.indent + 2)
    col, end = cols[min(index, len(cols) - 1)]
    return Span(file, line.number, col, end)


def line_span(file: str, line: Line) -> Span:
    """From the first word to the end of the line."""
    end = len(line.text.rstrip(_BLANKS)) + 1
    return Span(file, line.number, line.indent + 1, max(end, line.indent + 2))


def source_line_span(file: str, number: int, text: str) -> Span:
    """:func:`line_span` of the line ``number`` whose text is ``text``."""
    indent = len(text) - len(text.lstrip(_BLANKS))
    end = len(text.rstrip(_BLANKS)) + 1
    return Span(file, number, indent + 1, max(end, indent + 2))


@dataclass
class LexInput:
    """What the parser is handed: the text plus a sink for the lexer's diagnostics."""

    file: str
    text: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    # for each of the lexer's diagnostics, how many lines (tokens) came before it
    diagnostic_at: list[int] = field(default_factory=list)
    # the file's lines as scan() split them (index = line number - 1), once scanned
    lines: list[str] | None = None
    # lark restarts ``lex()`` after error recovery; the one generator resumes
    stream: Iterator[Token] | None = None


def split_lines(text: str) -> list[str]:
    """Lines as piranha ends them: at LF, at CR, and at CRLF once."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def scan(data: LexInput) -> tuple[list[str], list[Line]]:
    """The terminal and the :class:`Line` of each significant line, then the EOF braces.

    This is the lexer proper; :class:`LineLexer` wraps its output in lark tokens for
    the error-recovering parser, and the parser's fast path consumes the two lists
    directly. Diagnostics are appended to ``data.diagnostics`` (and where each one
    falls among the tokens to ``data.diagnostic_at``).

    Why it is shaped like this (a 600,000-line file spends its lexing time in the
    per-line overhead of the interpreter, not in the rules):

    * The whole file is read in one plain loop that appends to two lists, the
      cheapest way to produce 600,000 entries in Python (not one generator step
      per parser step).
    * A GUI-written file repeats the same lines over and over (``active = 1``,
      ``weight = 1``, ``server rs01 {``, ``}``): only about one line in five is
      new. Each line is therefore looked up in ``seen`` by its whole text, and a
      hit reuses what its first occurrence gave: nothing (blank or comment), or
      its text, indentation, words, quotes, terminal and block depth change.
      These are then *shared* between identical lines, which keeps memory down
      (the duplicate strings are freed, also from ``data.lines``) and makes later
      dict lookups by the text cheap (the hash of the shared string is computed
      once); nothing may mutate them.
    * Only lines read without a diagnostic are remembered (a bad line is read
      again each time, so that each occurrence is reported), and never an
      ``UNKNOWN`` line or one with ``{`` alone, whose meaning depends on the line
      before.
    """
    file = data.file
    diags = data.diagnostics
    diag_at = data.diagnostic_at
    depth = 0
    expect_brace = False  # a header without `{` may be followed by a lone `{`
    terminals = _TERMINALS
    seen: dict[str, tuple[str, int, list[str], list[str] | None, str, int] | None] = {}
    ttypes: list[str] = []
    out: list[Line] = []
    add_ttype = ttypes.append
    add_line = out.append
    lookup = seen.get
    lines = data.lines = split_lines(data.text)
    for number, raw in enumerate(lines, 1):
        hit = lookup(raw, _UNSEEN)
        if hit is not _UNSEEN:
            if hit is None:
                continue  # a blank or comment line
            # a line met before; a pending `{` check cannot match it (see below)
            expect_brace = False
            text, indent, words, quotes, ttype, nesting = hit
            lines[number - 1] = text  # keep one copy of the string
            if nesting:
                depth += nesting
                if depth < 0:
                    depth = 0
            add_ttype(ttype)
            add_line(Line(number, text, indent, words, quotes))
            continue
        body = raw.lstrip(_BLANKS)
        if not body or body[0] == "#":
            seen[raw] = None
            continue
        indent = len(raw) - len(body)
        if '"' in body or "'" in body:
            try:
                words, quotes, _ = tokenize(body)
            except QuoteError as err:
                col = indent + err.col
                if err.closed_before_blank:
                    hint = (
                        "piranha looks for the closing quote from the first blank after "
                        "the opening one: a quoted value without blanks must end its line "
                        "(remove what follows, including trailing blanks)"
                    )
                else:
                    hint = (
                        "lvs.cf has no escapes; a value cannot contain its own "
                        "quote character (use the other quote, ' or \")"
                    )
                diags.append(
                    make(
                        codes.BAD_QUOTING,
                        "quotation mismatch: the quote opened here is not closed on this line",
                        Span(file, number, col, col + 1),
                        help=hint,
                    )
                )
                diag_at.append(len(ttypes))
                continue
        else:
            words = body.split(" ") if "\t" not in body else body.replace("\t", " ").split(" ")
            if "" in words:
                words = [w for w in words if w]
            if len(words) > MAX_WORDS:
                del words[MAX_WORDS:]
            quotes = None
        line = Line(number, raw, indent, words, quotes)
        first = words[0]
        if expect_brace:
            expect_brace = False
            if first == "{" and len(words) == 1:
                continue  # already reported with the header
        ttype = terminals.get(first)
        if ttype is not None:
            seen[raw] = (raw, indent, words, quotes, ttype, 0)
        elif first in _BLOCK_TERMINALS:
            ttype = _BLOCK_TERMINALS[first]
            ok, opens = LineLexer._check_header(file, line, diags)
            if ok:
                seen[raw] = (raw, indent, words, quotes, ttype, 1)
            else:
                diag_at.append(len(ttypes))
                expect_brace = not opens
            depth += 1
        elif first == "}":
            ttype = "RBRACE"
            if len(words) > 1:
                diags.append(
                    make(
                        codes.EXTRA_ARGS,
                        "unexpected arguments: `}` must be alone on its line",
                        word_span(file, line, 1),
                        help=_comment_help(words[1])
                        or "put the closing brace on a line of its own",
                    )
                )
                diag_at.append(len(ttypes))
            else:
                seen[raw] = (raw, indent, words, quotes, ttype, -1)
            depth = max(0, depth - 1)
        else:
            ttype = "UNKNOWN"
        add_ttype(ttype)
        add_line(line)
    last = len(lines)
    for _ in range(depth):
        add_ttype("RBRACE")
        add_line(Line(last, "", 0, ["}"], None, synthetic="eof"))
    return ttypes, out


class LineLexer(Lexer):
    """lark custom lexer (interface 0): ``lex(LexInput)`` yields one token per line.

    Used by the parser's error-recovering path; :func:`scan` does the work.
    """

    def __init__(self, lexer_conf: object) -> None:
        pass

    def lex(self, data: LexInput) -> Iterator[Token]:  # type: ignore[override]
        if data.stream is None:
            data.stream = self._lines(data)
        return data.stream

    def _lines(self, data: LexInput) -> Iterator[Token]:
        """The tokens, with each lexer diagnostic added just before the next token.

        The parser's error recovery appends to the same list, so this keeps the
        diagnostics in the order in which the file is read.
        """
        lexed = LexInput(data.file, data.text)
        ttypes, lines = scan(lexed)
        pending = iter(zip(lexed.diagnostic_at, lexed.diagnostics, strict=True))
        nxt = next(pending, None)
        for i, (ttype, line) in enumerate(zip(ttypes, lines, strict=True)):
            while nxt is not None and nxt[0] <= i:
                data.diagnostics.append(nxt[1])
                nxt = next(pending, None)
            first = line.words[0]
            n, col = line.number, line.indent + 1
            tok = LineToken(ttype, first, None, n, col, n, col + len(first))
            tok.stmt = line
            yield tok
        if nxt is not None:  # diagnostics after the last token
            data.diagnostics.append(nxt[1])
        data.diagnostics.extend(d for _, d in pending)

    @staticmethod
    def _check_header(file: str, line: Line, diags: list[Diagnostic]) -> tuple[bool, bool]:
        """Is ``line`` exactly ``KIND NAME {``? Returns (well-formed, has an opening brace)."""
        words = line.words
        kind = words[0]
        if len(words) == 3 and words[2] == "{":
            return True, True
        opens = words[-1].endswith("{")
        if len(words) > 3:
            msg = f"unexpected arguments: a block header is exactly `{kind} NAME {{`"
            at = 3
        else:
            msg = f"missing arguments: a block header is exactly `{kind} NAME {{`"
            at = len(words) - 1
        hint = f"write `{kind} NAME {{` on one line, with blanks around the name"
        if len(words) > 3 and (c := _comment_help(words[3])):
            hint = c
        diags.append(make(codes.BAD_BLOCK_HEADER, msg, word_span(file, line, at), help=hint))
        return False, opens


def _comment_help(word: str) -> str | None:
    if word.startswith("#"):
        return "lvs.cf has no trailing comments: a comment must be a line of its own"
    return None


comment_help = _comment_help
