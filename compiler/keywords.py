"""The lvs.cf vocabulary: every keyword, where it may appear, its value type and arity.

This table is the parser's knowledge of *values*; the grammar
(grammars/lvs_cf.lark) is its knowledge of *structure* (which keywords each block
accepts). Defaults live on the model classes (compiler/model.py), and
docs/lvs.cf.md documents each keyword; tests check all three agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Kind(Enum):
    """How a keyword's value tokens are read (mirrors piranha's get* helpers)."""

    INT = "integer"  # strtol(tok, &end, 0): decimal, 0x hex, leading-0 octal
    SECONDS = "seconds"  # INT in piranha; a decimal fraction in the extended dialect
    BOOL = "boolean"  # INT that must be 0 or 1
    PORT = "port"  # INT or an /etc/services name (tcp)
    HOST = "host"  # inet_aton, else a host name resolved at run time
    HOST_NONZERO = "host (not 0.0.0.0)"
    IP = "IP address"  # inet_aton only (sorry_server)
    NETMASK = "netmask"  # inet_aton only
    PMASK = "netmask (ignored if invalid)"  # piranha ignores an unparsable pmask
    STRING = "string"
    QSTRING = "quoted string"  # piranha keeps the quote characters around it
    CHOICE = "one of"
    HOST_DEVICE = "IP device"  # two values: address and interface (alias) name
    LIST = "[ list ]"


@dataclass(frozen=True, slots=True)
class Keyword:
    name: str
    kind: Kind
    choices: tuple[str, ...] = ()
    # extended-dialect-only choices (noted as extensions when used)
    ext_choices: tuple[str, ...] = ()
    ignored: bool = False  # piranha parses it and never uses it
    since: str = "0.4"
    # the keyword exists only in the extended dialect (in this block)
    extension: bool = False

    @property
    def in_piranha_05(self) -> bool:
        """Known to piranha 0.5.x (2001): the keywords that predate July 2001."""
        return self.since in ("0.4", "2000-08")

    @property
    def arity(self) -> int:
        return 2 if self.kind is Kind.HOST_DEVICE else 1


def _table(*kws: Keyword) -> dict[str, Keyword]:
    return {k.name: k for k in kws}


SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh")
SCHEDULERS_05 = ("rr", "wrr", "lc", "wlc")  # lblc, lblcr, dh, sh arrived in July 2001
EXT_SCHEDULERS = ("sed", "nq", "fo", "ovf", "mh")

GLOBAL = _table(
    Keyword("service", Kind.CHOICE, ("lvs", "fos")),
    Keyword("serial_no", Kind.INT, ignored=True, since="2001-07"),
    Keyword("primary", Kind.HOST_NONZERO),
    Keyword("primary_private", Kind.HOST_NONZERO, since="2001-07"),
    Keyword("primary_shared", Kind.STRING, since="2001-07"),
    Keyword("backup", Kind.HOST),
    Keyword("backup_active", Kind.BOOL),
    Keyword("backup_private", Kind.HOST_NONZERO, since="2001-07"),
    Keyword("backup_shared", Kind.STRING, since="2001-07"),
    Keyword("reservation_conflict_action", Kind.CHOICE, ("nothing", "preempt"), since="2001-07"),
    Keyword("heartbeat", Kind.BOOL, ignored=True),
    Keyword("heartbeat_port", Kind.PORT),
    Keyword("keepalive", Kind.SECONDS),
    Keyword("deadtime", Kind.SECONDS),
    Keyword("network", Kind.CHOICE, ("nat", "direct", "tunnel")),
    Keyword("nat_router", Kind.HOST_DEVICE),
    Keyword("nat_nmask", Kind.NETMASK, since="2000-08"),
    Keyword("rsh_command", Kind.STRING),
    Keyword("debug_level", Kind.STRING, ignored=True, since="2000-08"),
    Keyword("ipvsadm", Kind.STRING),
    Keyword("sync", Kind.BOOL, ignored=True),
    Keyword("monitor_links", Kind.INT, since="0.8.1"),
    Keyword("syncdaemon", Kind.BOOL, since="0.8"),
    Keyword("syncd_iface", Kind.STRING, since="0.8.6"),
    Keyword("syncd_id", Kind.INT, since="0.8.6"),
    Keyword("tcp_timeout", Kind.INT, since="0.8.6"),
    Keyword("tcpfin_timeout", Kind.INT, since="0.8.6"),
    Keyword("udp_timeout", Kind.INT, since="0.8.6"),
    Keyword("hard_shutdown", Kind.BOOL, since="0.8.6"),
    Keyword("active_cmd", Kind.STRING, since="0.7.8"),
    Keyword("inactive_cmd", Kind.STRING, since="0.7.8"),
)

VIRTUAL = _table(
    Keyword("active", Kind.BOOL),
    Keyword("address", Kind.HOST_DEVICE),
    Keyword("sorry_server", Kind.IP, since="0.8"),
    Keyword("vip_nmask", Kind.NETMASK, since="2000-08"),
    Keyword("fwmark", Kind.INT, since="2001-08"),
    Keyword("protocol", Kind.CHOICE, ("tcp", "udp")),
    Keyword("port", Kind.PORT),
    # extended: a virtual may override the global forwarding method
    Keyword("network", Kind.CHOICE, ("nat", "direct", "tunnel"), extension=True, since="ext"),
    Keyword("scheduler", Kind.CHOICE, SCHEDULERS, ext_choices=EXT_SCHEDULERS),
    Keyword("persistent", Kind.INT),
    Keyword("pmask", Kind.PMASK),
    Keyword("client_monitor", Kind.STRING),
    Keyword("send_program", Kind.QSTRING, since="2001-09"),
    Keyword("send", Kind.QSTRING),
    Keyword("expect", Kind.QSTRING),
    Keyword("use_regex", Kind.BOOL, since="2002-10"),
    Keyword("timeout", Kind.INT),
    Keyword("reentry", Kind.INT),
    Keyword("load_monitor", Kind.STRING),
    Keyword("quiesce_server", Kind.BOOL, since="2001-11"),
    Keyword("start_cmd", Kind.QSTRING),
    Keyword("stop_cmd", Kind.QSTRING),
    Keyword("master", Kind.HOST, ignored=True),
    Keyword("dirs", Kind.LIST, ignored=True),
)

SERVER = _table(
    Keyword("address", Kind.HOST),
    Keyword("active", Kind.BOOL),
    Keyword("weight", Kind.INT),
    Keyword("port", Kind.INT, since="0.8"),
)

BLOCKS = ("virtual", "failover", "server")

# Every word that can start a statement, in any block: the lexer's vocabulary.
ALL_KEYWORDS: frozenset[str] = frozenset(GLOBAL) | frozenset(VIRTUAL) | frozenset(SERVER)


def terminal_name(keyword: str) -> str:
    """The grammar terminal for a keyword: ``send_program`` -> ``K_SEND_PROGRAM``."""
    return "K_" + keyword.upper()
