"""Emitters: pure functions from the model to text.

``TARGETS`` maps each ``lvs-compile emit --target`` name to its function. An emitter
returns the whole text or raises :class:`EmitError` when the model asks for something
its target format cannot say (a host name where ipvsadm needs an address, a value
lvs.cf cannot quote); it never raises anything else for a model that compiled
without errors.
"""

from __future__ import annotations

from collections.abc import Callable

from ..model import Config
from ..source import Span

Emitter = Callable[[Config], str]
TARGETS: dict[str, Emitter] = {}
# Targets that do something differently from what lvs.cf says for IPVS (the XDP
# dataplane) explain it: lines ``FILE:LINE:COL: note: ...`` the CLI prints on stderr.
NOTES: dict[str, Callable[[Config], list[str]]] = {}


class EmitError(Exception):
    """The model cannot be written in the target format.

    Carries what a diagnostic would: a message, the span of the lvs.cf line that
    asks for the impossible (when known) and a ``help`` line. :meth:`render` gives
    the text the CLI prints, ``FILE:LINE:COL: error: MESSAGE`` and ``= help: ...``.
    """

    def __init__(
        self, target: str, message: str, span: Span | None = None, help: str | None = None
    ) -> None:
        super().__init__(message)
        self.target = target
        self.message = message
        self.span = span
        self.help = help

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}error: cannot emit {self.target}: {self.message}"]
        if self.help:
            lines.append(f"  = help: {self.help}")
        return "\n".join(lines) + "\n"


def emit(target: str, config: Config) -> str:
    """Run one emitter by its target name (``KeyError`` for an unknown target)."""
    _load()
    return TARGETS[target](config)


def _load() -> None:
    from . import ipvsadm, json, lvscf, xdp

    TARGETS.update(
        {
            "ipvsadm": ipvsadm.emit,
            "json": json.emit,
            "lvs.cf": lvscf.emit,
            "xdp": xdp.emit_c,
            "xdp-maps": xdp.emit_maps,
        }
    )
    NOTES.update({"xdp": xdp.notes, "xdp-maps": xdp.notes})


__all__ = ["NOTES", "TARGETS", "EmitError", "Emitter", "emit"]
