"""Every diagnostic code the compiler can emit, in one place.

Codes are stable: a code is never reused for a different problem. Ranges:
LVS0xx file and syntax (the lines piranha's tokenizer and block parser reject),
LVS1xx values (a keyword's argument is not of its type), LVS2xx semantic checks
(the file parses but will not do what its author meant), LVS3xx dialect.
Each code has a section in docs/diagnostics.md; a test keeps the two in step.
"""

from __future__ import annotations

from .diagnostics import Severity, register

E, W, N = Severity.ERROR, Severity.WARNING, Severity.NOTE

# ---- file and syntax -------------------------------------------------------------
EMPTY_FILE = register("LVS001", "empty-configuration", E, "the file is empty")
NUL_BYTE = register("LVS002", "nul-byte", W, "a NUL byte ends the file for piranha")
UNKNOWN_KEYWORD = register("LVS010", "unknown-keyword", E, "no such lvs.cf keyword")
WRONG_BLOCK = register("LVS011", "keyword-not-allowed-here", E, "keyword belongs to another block")
EQUAL_EXPECTED = register("LVS012", "equal-expected", E, "`=` must follow the keyword")
MISSING_ARGS = register("LVS013", "missing-arguments", E, "too few values for the keyword")
EXTRA_ARGS = register("LVS014", "unexpected-arguments", E, "too many values on the line")
BAD_QUOTING = register("LVS015", "quotation-mismatch", E, "a quoted value is not closed")
BAD_BLOCK_HEADER = register(
    "LVS016", "malformed-block-header", E, "block opener is not `KIND NAME {`"
)
STRAY_BRACE = register("LVS017", "stray-brace", E, "a brace outside the block structure")
UNCLOSED_BLOCK = register("LVS018", "unclosed-block", W, "end of file inside a block")
LIST_EXPECTED = register("LVS019", "list-expected", E, "`dirs` needs `[ ... ]`")

# ---- values ----------------------------------------------------------------------
INT_EXPECTED = register("LVS101", "integer-expected", E, "value is not an integer")
BOOL_EXPECTED = register("LVS102", "boolean-expected", E, "value must be 0 or 1")
BAD_ARGUMENT = register("LVS103", "invalid-argument", E, "value is not one of the allowed words")
BAD_HOST = register("LVS104", "invalid-host", E, "not an IP address or host name")
BAD_NETMASK = register("LVS105", "invalid-netmask", E, "not a dotted-quad netmask")
UNKNOWN_SERVICE = register("LVS106", "unknown-service-name", E, "port name not in /etc/services")
ZERO_ADDRESS = register("LVS107", "zero-address", E, "address must not be 0.0.0.0")
BAD_IP = register("LVS108", "invalid-ip-address", E, "a literal IP address is required")
DUPLICATE_KEY = register("LVS110", "duplicate-keyword", W, "keyword given twice; last wins")
HOSTNAME = register("LVS111", "hostname-resolved-at-runtime", N, "a host name, not an address")
BAD_PMASK = register(
    "LVS113", "invalid-pmask-ignored", W, "pmask is not an address; piranha ignores it"
)
PMASK_FAMILY = register(
    "LVS114", "pmask-wrong-family", E, "a netmask on an IPv6 virtual, or a prefix on an IPv4 one"
)

# ---- dialect ---------------------------------------------------------------------
EXTENSION = register(
    "LVS301", "extension-not-in-piranha", N, "an extended-dialect feature piranha would reject"
)
NEWER_THAN_DIALECT = register(
    "LVS302", "newer-than-piranha-0.5", E, "a keyword or value piranha 0.5.x does not know"
)

# ---- semantic checks (compiler/checks.py) ----------------------------------------
# virtual services
NO_ACTIVE_SERVICE = register(
    "LVS201", "no-active-service", W, "no virtual (or, for FOS, failover) service is active"
)
VIRTUAL_WITHOUT_ADDRESS = register(
    "LVS202", "virtual-without-address", W, "an active virtual service has no `address`"
)
DUPLICATE_VIRTUAL = register(
    "LVS203", "duplicate-virtual-service", E, "two active virtuals claim one VIP, protocol and port"
)
SHARED_FWMARK = register(
    "LVS204", "shared-fwmark", N, "virtuals with the same fwmark form one IPVS service"
)
SHARED_FWMARK_CONFLICT = register(
    "LVS205", "shared-fwmark-conflict", E, "virtuals sharing an fwmark disagree on scheduling"
)
DUPLICATE_NAME = register(
    "LVS206", "duplicate-name", W, "two virtuals, or two servers of one virtual, share a name"
)
FAILOVER_IGNORED = register(
    "LVS207", "failover-ignored", N, "failover blocks are not used with `service = lvs`"
)
VIRTUAL_IGNORED = register(
    "LVS208", "virtual-ignored", W, "virtual blocks are not used with `service = fos`"
)
# real servers
NO_ACTIVE_REAL_SERVER = register(
    "LVS210", "no-active-real-server", W, "an active virtual has no active real server"
)
SERVER_WITHOUT_ADDRESS = register(
    "LVS211", "real-server-without-address", W, "an active real server has no `address`"
)
DUPLICATE_REAL_SERVER = register(
    "LVS212", "duplicate-real-server", W, "one address and port twice in a virtual"
)
REAL_PORT_IGNORED = register(
    "LVS213", "real-server-port-ignored", W, "direct routing and tunnelling keep the virtual port"
)
DESTINATION_COLLISION = register(
    "LVS214", "destination-collision", E, "two real servers become one IPVS destination"
)
WEIGHT_OUT_OF_RANGE = register(
    "LVS215", "weight-out-of-range", E, "weight outside the 0..65535 ipvsadm accepts"
)
ZERO_WEIGHT = register("LVS216", "zero-weight", W, "an active real server with weight 0")
PORT_AFTER_SERVERS = register(
    "LVS217", "port-after-servers", W, "`port` below server blocks does not reach them"
)
SORRY_IS_REAL_SERVER = register(
    "LVS218", "sorry-server-is-real-server", W, "the sorry server is one of the real servers"
)
NAT_OFF_SUBNET = register(
    "LVS219", "nat-real-server-off-subnet", W, "a NAT real server outside nat_router's subnet"
)
FAMILY_MISMATCH = register(
    "LVS220", "address-family-mismatch", E, "IPv4 and IPv6 mixed where IPVS refuses it"
)
# IPVS parameters
PORT_OUT_OF_RANGE = register("LVS225", "port-out-of-range", E, "a port outside 0..65535")
ZERO_PORT = register(
    "LVS226", "zero-port-not-persistent", E, "port 0 on a service without persistence"
)
PERSISTENCE_TOO_LONG = register(
    "LVS227", "persistence-too-long", E, "persistent above the 31 days ipvsadm accepts"
)
NEGATIVE_PERSISTENCE = register(
    "LVS228", "negative-persistence", W, "a negative `persistent` turns persistence off"
)
FWMARK_OUT_OF_RANGE = register(
    "LVS229", "fwmark-out-of-range", E, "fwmark outside the 1..2147483647 piranha can pass"
)
PMASK_WITHOUT_PERSISTENCE = register(
    "LVS230", "pmask-without-persistence", W, "pmask only applies to persistent services"
)
NONCONTIGUOUS_MASK = register(
    "LVS231", "non-contiguous-netmask", W, "the one bits of a netmask are not contiguous"
)
UDP_FWMARK = register(
    "LVS232", "udp-fwmark-service", N, "the mark, not `protocol`, selects an fwmark service"
)
# health checks (nanny)
SEND_IGNORED = register("LVS240", "send-ignored", W, "`send` is ignored when `send_program` is set")
SEND_PROGRAM_WITHOUT_EXPECT = register(
    "LVS241", "send-program-without-expect", E, "send_program without expect fails every check"
)
UDP_WITHOUT_EXPECT = register(
    "LVS242", "udp-without-expect", E, "a UDP check without expect crashes nanny"
)
INVALID_REGEX = register(
    "LVS243", "invalid-regex", E, "expect is not a POSIX extended regular expression"
)
PERL_REGEX_ESCAPE = register(
    "LVS244", "regex-perl-escape", W, "a Perl escape that POSIX regcomp reads as a letter"
)
USE_REGEX_INEFFECTIVE = register(
    "LVS245", "use-regex-ineffective", W, "use_regex has no expect string to apply to"
)
UNSUPPORTED_ESCAPE = register(
    "LVS246", "unsupported-escape", E, "a backslash escape that makes nanny loop forever"
)
SINGLE_QUOTED = register(
    "LVS247", "single-quoted-string", W, "single quotes reach nanny as part of the string"
)
PLACEHOLDER_INSIDE_WORD = register(
    "LVS248", "placeholder-inside-word", W, "%h or %p inside a word of send_program stays literal"
)
TIMEOUT_NOT_POSITIVE = register(
    "LVS249", "timeout-not-positive", E, "timeout must be at least one second"
)
REENTRY_SHORTER_THAN_TIMEOUT = register(
    "LVS250", "reentry-shorter-than-timeout", W, "a failed server returns on its first good check"
)
REENTRY_ZERO = register("LVS251", "reentry-zero", W, "`reentry = 0` means nanny's default 180 s")
LOAD_MONITOR = register(
    "LVS252", "load-monitor", N, "what the load monitor needs on every real server"
)
# routers, heartbeat and global settings
NAT_WITHOUT_ROUTER = register(
    "LVS260", "nat-without-nat-router", E, "NAT forwarding without a `nat_router`"
)
DEADTIME_TOO_SHORT = register(
    "LVS261", "deadtime-too-short", W, "deadtime is not well above keepalive"
)
BACKUP_ACTIVE_WITHOUT_BACKUP = register(
    "LVS262", "backup-active-without-backup", W, "backup_active = 1 without a backup address"
)
PRIMARY_IS_BACKUP = register(
    "LVS263", "primary-equals-backup", W, "primary and backup are the same address"
)
IGNORED_KEYWORD = register(
    "LVS264", "ignored-keyword", N, "piranha parses this keyword and never uses it"
)
SHARED_SCSI_INCOMPLETE = register(
    "LVS265", "shared-scsi-incomplete", W, "shared-SCSI settings that cannot take effect"
)
IPVS_TIMEOUT_OUT_OF_RANGE = register(
    "LVS266", "ipvs-timeout-out-of-range", W, "an IPVS timeout `ipvsadm --set` rejects"
)
SYNCD_ID_TRUNCATED = register("LVS267", "syncd-id-truncated", W, "syncd_id is used modulo 256")
MONITOR_LINKS_WITHOUT_BACKUP = register(
    "LVS268", "monitor-links-without-backup", W, "monitor_links only works with a backup router"
)
NETWORK_DEFAULTS_TO_NAT = register(
    "LVS269", "network-defaults-to-nat", W, "no `network` line: NAT, and no `nat_router`"
)
