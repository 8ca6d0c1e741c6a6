"""Source files and positions.

Every diagnostic and every model node points back into the lvs.cf it came from, so
the runtime's own errors can name the line that caused them. Columns are 1-based
and count characters (a TAB is one column), which is what editors and SARIF expect.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Span:
    """A range on one line of one file: ``line`` and ``col`` 1-based, ``end_col`` exclusive."""

    file: str
    line: int
    col: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Source:
    """The text of one configuration file and its display name."""

    name: str
    text: str

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Source:
        # lvs.cf is bytes to piranha; undecodable bytes must survive to the
        # diagnostics instead of raising, hence surrogateescape.
        return cls(name, data.decode("utf-8", errors="surrogateescape"))

    @classmethod
    def read(cls, path: str | Path) -> Source:
        p = Path(path)
        return cls.from_bytes(str(path), p.read_bytes())

    def line_text(self, line: int) -> str:
        """The text of a 1-based line without its terminator ('' when out of range)."""
        lines = self._lines
        return lines[line - 1] if 0 < line <= len(lines) else ""

    @cached_property
    def _lines(self) -> list[str]:
        # piranha ends a line at LF or CR, so CRLF files have the same line numbers
        # as LF files here (piranha itself counts the empty line between CR and LF).
        return self.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
