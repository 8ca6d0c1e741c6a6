"""Emitters: pure functions from the model to text.

``TARGETS`` maps each ``lvs-compile emit --target`` name to its function.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import Config

Emitter = Callable[[Config], str]
TARGETS: dict[str, Emitter] = {}


def _load() -> None:
    from . import json

    TARGETS.update({"json": json.emit})
