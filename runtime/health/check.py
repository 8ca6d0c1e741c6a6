"""What one health check of one real server does, derived from the model the way lvsd
built nanny's command line and nanny read it (spec §4.4, §5.1-5.4). Pure.

The result, :class:`CheckSpec`, is a value: two servers with equal specs are checked the
same way, and a reload compares specs to know whether a server's check changed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from compiler.model import Config, Protocol, RealServer, VirtualService

from .expect import Matcher, matcher, nanny_text, program_argv, to_bytes, unescape
from .nanny import interval_of

HTTP_SEND = "GET / HTTP/1.0\r\n\r\n"
HTTP_EXPECT = "HTTP"


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """One server's check. ``kind`` is ``tcp``, ``udp`` or ``program``; ``host`` the
    address as text (a name is resolved at check time); ``timeout`` both the interval
    and the connect / read / program time limit."""

    kind: str
    host: str
    port: int
    timeout: int
    send: bytes | None = None
    expect: Matcher | None = None
    argv: tuple[str, ...] = ()
    program_expect: bytes | None = None

    def describe(self) -> str:
        if self.kind == "program":
            return " ".join(self.argv)
        return f"{self.kind} {self.host}:{self.port}"


def load_command(config: Config, vs: VirtualService) -> str | None:
    """The load probe command of a virtual (lvsd 0.8: ``-U`` only when ``load_monitor``
    is set, ``uptime`` meaning ``rsh_command``), or None for no load monitoring."""
    lm = vs.load_monitor
    if lm is None or lm == "none":
        return None
    return config.rsh_command if lm == "uptime" else lm


def load_argv(command: str, host: str) -> tuple[str, ...]:
    """nanny 0.8's load probe: ``CMD RIP``, plus ``uptime`` when CMD is rsh or ssh (by
    basename here; nanny compared the whole string)."""
    argv = [command, host]
    if os.path.basename(command) in ("rsh", "ssh"):
        argv.append("uptime")
    return tuple(argv)


def check_spec(vs: VirtualService, rs: RealServer) -> CheckSpec:
    """The check nanny would run for real server ``rs`` of virtual ``vs``."""
    host = str(rs.address) if rs.address is not None else "0.0.0.0"
    timeout = interval_of(vs.timeout)
    program = nanny_text(vs, "send_program")
    send = nanny_text(vs, "send")
    expect = nanny_text(vs, "expect")
    if program is not None:
        send = None  # "External program use requested ... IGNORING send string"
    # nanny's default web probe looks at the *virtual* port (-p), not the real one
    elif vs.port == 80 and send is None and expect is None:
        send, expect = HTTP_SEND, HTTP_EXPECT
    if send is not None:
        send = unescape(send)
    if expect is not None:
        expect = unescape(expect)
    if program is not None:
        return CheckSpec(
            kind="program",
            host=host,
            port=rs.port,
            timeout=timeout,
            argv=program_argv(program, host, rs.port),
            program_expect=None if expect is None else to_bytes(expect),
        )
    return CheckSpec(
        kind="udp" if vs.protocol is Protocol.UDP else "tcp",
        host=host,
        port=rs.port,
        timeout=timeout,
        send=None if send is None else to_bytes(send),
        expect=None if expect is None else matcher(expect, vs.use_regex),
    )
