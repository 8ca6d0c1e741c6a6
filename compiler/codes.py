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
OUT_OF_RANGE = register("LVS112", "value-out-of-range", E, "number outside the range it can have")
BAD_PMASK = register(
    "LVS113", "invalid-pmask-ignored", W, "pmask is not an address; piranha ignores it"
)

# ---- dialect ---------------------------------------------------------------------
EXTENSION = register(
    "LVS301", "extension-not-in-piranha", N, "an extended-dialect feature piranha would reject"
)
NEWER_THAN_DIALECT = register(
    "LVS302", "newer-than-piranha-0.5", E, "a keyword or value piranha 0.5.x does not know"
)
