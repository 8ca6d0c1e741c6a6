"""Diagnostics: stable codes, severities, and the three renderings (text, JSON, SARIF).

A diagnostic is data; nothing here prints. The compiler collects diagnostics
instead of raising, so one run reports every problem in a file, and the CLI
decides the exit status from the worst severity.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .source import Source, Span


class Severity(Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"

    @property
    def rank(self) -> int:
        return {"error": 2, "warning": 1, "note": 0}[self.value]


@dataclass(frozen=True, slots=True)
class Code:
    """A stable diagnostic code: ``LVS101`` plus a kebab-case name and a one-line summary."""

    code: str
    name: str
    severity: Severity
    summary: str


CODES: dict[str, Code] = {}


def register(code: str, name: str, severity: Severity, summary: str) -> Code:
    """Declare a code once; docs/diagnostics.md has a section per registered code."""
    if code in CODES:
        raise ValueError(f"diagnostic code {code} registered twice")
    c = Code(code, name, severity, summary)
    CODES[code] = c
    return c


@dataclass(frozen=True, slots=True)
class Diagnostic:
    code: Code
    message: str
    span: Span | None
    severity: Severity
    help: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR


def make(
    code: Code,
    message: str,
    span: Span | None,
    *,
    help: str | None = None,
    severity: Severity | None = None,
    notes: Sequence[str] = (),
) -> Diagnostic:
    return Diagnostic(code, message, span, severity or code.severity, help, tuple(notes))


def sort_key(d: Diagnostic) -> tuple:
    s = d.span
    return (s.file, s.line, s.col, d.code.code) if s else ("", 0, 0, d.code.code)


# --------------------------------------------------------------------------- text


def render_text(diags: Iterable[Diagnostic], sources: dict[str, Source]) -> str:
    """rustc/ruff style: header line, the source line, a caret under the span, help."""
    out: list[str] = []
    for d in diags:
        where = f"{d.span}: " if d.span else ""
        out.append(f"{where}{d.severity.value}[{d.code.code}]: {d.message}")
        src = sources.get(d.span.file) if d.span else None
        if d.span and src is not None:
            text = src.line_text(d.span.line).expandtabs(1)
            gutter = str(d.span.line)
            pad = " " * len(gutter)
            width = max(1, d.span.end_col - d.span.col)
            out.append(f"{pad} |")
            out.append(f"{gutter} | {text}")
            out.append(f"{pad} | {' ' * (d.span.col - 1)}{'^' * width}")
        for n in d.notes:
            out.append(f"  = note: {n}")
        if d.help:
            out.append(f"  = help: {d.help}")
        out.append("")
    return "\n".join(out)


def summary_line(diags: Sequence[Diagnostic]) -> str:
    counts = {s: 0 for s in Severity}
    for d in diags:
        counts[d.severity] += 1
    parts = [f"{counts[s]} {s.value}{'s' if counts[s] != 1 else ''}" for s in Severity]
    return ", ".join(parts)


# --------------------------------------------------------------------------- json


def to_dict(d: Diagnostic) -> dict:
    return {
        "code": d.code.code,
        "name": d.code.name,
        "severity": d.severity.value,
        "message": d.message,
        "file": d.span.file if d.span else None,
        "line": d.span.line if d.span else None,
        "column": d.span.col if d.span else None,
        "end_column": d.span.end_col if d.span else None,
        "help": d.help,
        "notes": list(d.notes),
    }


def render_json(diags: Iterable[Diagnostic]) -> str:
    return json.dumps([to_dict(d) for d in diags], indent=2) + "\n"


# --------------------------------------------------------------------------- sarif

_SARIF_LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.NOTE: "note"}


def render_sarif(diags: Sequence[Diagnostic], tool_version: str) -> str:
    """SARIF 2.1.0, so CI systems (GitHub code scanning and others) annotate lines."""
    used = sorted({d.code.code for d in diags})
    rules = [
        {
            "id": c,
            "name": CODES[c].name,
            "shortDescription": {"text": CODES[c].summary},
            "helpUri": f"docs/diagnostics.md#{c.lower()}",
            "defaultConfiguration": {"level": _SARIF_LEVEL[CODES[c].severity]},
        }
        for c in used
    ]
    results = []
    for d in diags:
        r: dict = {
            "ruleId": d.code.code,
            "ruleIndex": used.index(d.code.code),
            "level": _SARIF_LEVEL[d.severity],
            "message": {"text": d.message + (f" (help: {d.help})" if d.help else "")},
        }
        if d.span:
            r["locations"] = [
                {
                    "physicalLocation": {
                        "artifactLocation": {"uri": d.span.file},
                        "region": {
                            "startLine": d.span.line,
                            "startColumn": d.span.col,
                            "endColumn": max(d.span.end_col, d.span.col + 1),
                        },
                    }
                }
            ]
        results.append(r)
    doc = {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "lvs-compile",
                        "version": tool_version,
                        "informationUri": "docs/diagnostics.md",
                        "rules": rules,
                    }
                },
                "results": results,
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"
