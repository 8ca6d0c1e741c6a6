"""TCP service names for ``port = http``: piranha calls getservbyname(name, "tcp").

The system's services database is consulted first, as piranha would; the built-in
table keeps the common names working where /etc/services is missing (minimal
containers), so a CI lint gives the same verdict as the router.
"""

from __future__ import annotations

import socket
from functools import cache

_BUILTIN = {
    "ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53,
    "gopher": 70, "finger": 79, "http": 80, "www": 80, "pop3": 110, "sunrpc": 111,
    "auth": 113, "nntp": 119, "ntp": 123, "imap": 143, "imap2": 143, "snmp": 161,
    "ldap": 389, "https": 443, "microsoft-ds": 445, "submission": 587, "ldaps": 636,
    "rsync": 873, "imaps": 993, "pop3s": 995, "ms-sql-s": 1433, "openvpn": 1194,
    "mysql": 3306, "postgresql": 5432, "sip": 5060, "sip-tls": 5061, "http-alt": 8080,
    "webcache": 8080, "login": 513, "shell": 514, "printer": 515,
}  # fmt: skip


@cache
def service_port(name: str) -> int | None:
    """The TCP port for a service name, or None if no database knows it."""
    if not name or "\x00" in name:
        return None
    try:
        return socket.getservbyname(name, "tcp")
    except (OSError, UnicodeError):
        return _BUILTIN.get(name)
