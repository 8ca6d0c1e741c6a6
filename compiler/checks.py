"""Semantic checks over the model: mistakes piranha accepts but that will not work.

Each check is a function ``(config, dialect) -> Iterable[Diagnostic]`` registered in
``CHECKS``. Checks only read the model; they never re-parse text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from .diagnostics import Diagnostic
from .model import Config, Dialect

Check = Callable[[Config, Dialect], Iterable[Diagnostic]]
CHECKS: list[Check] = []


def check(config: Config, dialect: Dialect) -> Iterator[Diagnostic]:
    for c in CHECKS:
        yield from c(config, dialect)
