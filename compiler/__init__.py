"""lvs-compile: parse piranha's lvs.cf into a typed model, check it, emit rules.

Pure code: reading the named file is the only I/O. Entry point for other layers::

    result = compile_text("lvs.cf", text, dialect=Dialect.EXTENDED)
    result.config        # compiler.model.Config
    result.diagnostics   # list[Diagnostic], sorted by position
    result.ok            # no errors
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codes
from .diagnostics import Diagnostic, Severity, make, sort_key
from .model import Config, Dialect
from .source import Source, Span

__version__ = "0.1.0"


@dataclass(frozen=True, slots=True)
class Result:
    source: Source
    config: Config
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity is Severity.ERROR)


def compile_source(
    source: Source, dialect: Dialect = Dialect.EXTENDED, *, run_checks: bool = True
) -> Result:
    """Parse, lower and check one file. Never raises on any input text."""
    from .checks import check
    from .lower import lower
    from .parser import parse_syntax

    text = source.text
    diags: list[Diagnostic] = []
    if text == "":
        diags.append(
            make(
                codes.EMPTY_FILE,
                "Empty configuration: the file has no content",
                Span(source.name, 1, 1, 1),
                help="an lvs.cf needs at least the global settings and one virtual block",
            )
        )
        return Result(source, Config(file=source.name), tuple(diags))
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        col = nul - (text.rfind("\n", 0, nul) + 1) + 1
        diags.append(
            make(
                codes.NUL_BYTE,
                "NUL byte: piranha stops reading the file here and ignores the rest",
                Span(source.name, line, col, col + 1),
                help="remove the NUL byte; the file is probably not text",
            )
        )
        text = text[:nul]
    syntax, syntax_diags = parse_syntax(source.name, text)
    diags.extend(syntax_diags)
    config, value_diags = lower(syntax, source.name, dialect)
    diags.extend(value_diags)
    if run_checks:
        diags.extend(check(config, dialect))
    diags.sort(key=sort_key)
    return Result(source, config, tuple(diags))


def compile_text(name: str, text: str, dialect: Dialect = Dialect.EXTENDED) -> Result:
    return compile_source(Source(name, text), dialect)


def compile_file(path: str, dialect: Dialect = Dialect.EXTENDED) -> Result:
    """Read and compile a file; OSError propagates (the CLI maps it to exit status 2)."""
    return compile_source(Source.read(path), dialect)


__all__ = [
    "Config",
    "Diagnostic",
    "Dialect",
    "Result",
    "Severity",
    "Source",
    "compile_file",
    "compile_source",
    "compile_text",
]
