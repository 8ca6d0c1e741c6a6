"""The tests' client: a long-running process in a client namespace (or the VM's guest)
that takes one JSON command per stdin line and answers one JSON line, ``{"ok": ...}``
or ``{"error": "..."}``, so a test can hold TCP connections open across its steps.

Run it as a script (``python tests/netns/client.py``, see ``SCRIPT``) and talk to it
with ``tests.netns.topo.ask``. The real servers it talks to are tests/netns/servers.py:
they greet with their name and then echo.

Commands (``src``: optional source address to bind; ``timeout``: seconds, default 5):

* ``names {dst, port, n}``: n TCP connections, each read once; the greetings.
  With ``tolerant``: a failed connection is the string ``"error"`` instead of an error.
* ``many {dst, port, n}``: n TCP connections, each greeted and then echoing ``ping``;
  ``[source port, greeting]`` per connection.
* ``udp {dst, port, n}``: n datagrams from n fresh sockets; the answers, or with
  ``ports`` ``[source port, answer]``; ``tolerant`` as for names.
* ``hold {dst, port}``: open a connection and keep it: ``[source port, greeting]``.
* ``echo {sport, data}``: send data on a held connection; what came back.
* ``close {sport}``: close a held connection.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

SCRIPT = str(Path(__file__).resolve())

_held: dict[int, socket.socket] = {}


def _family(c: dict) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in c["dst"] else socket.AF_INET


def _tcp(c: dict) -> tuple[socket.socket, int, str]:
    s = socket.socket(_family(c))
    s.settimeout(c.get("timeout", 5))
    try:
        if c.get("src"):
            s.bind((c["src"], 0))
        s.connect((c["dst"], c["port"]))
        name = s.recv(100).decode()
    except OSError:
        s.close()
        raise
    return s, s.getsockname()[1], name


def _echo(s: socket.socket, data: str) -> str:
    s.sendall(data.encode())
    got = b""
    while len(got) < len(data):
        chunk = s.recv(100)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got.decode()


def _names(c: dict) -> list[str]:
    out = []
    for _ in range(c["n"]):
        try:
            s, _port, name = _tcp(c)
        except OSError:
            if not c.get("tolerant"):
                raise
            name = "error"
        else:
            s.close()
        out.append(name)
    return out


def _many(c: dict) -> list[list]:
    out = []
    for _ in range(c["n"]):
        s, sport, name = _tcp(c)
        try:
            if _echo(s, "ping") != "ping":
                raise ConnectionError("echo mismatch")
        finally:
            s.close()
        out.append([sport, name])
    return out


def _udp(c: dict) -> list:
    out: list = []
    for _ in range(c["n"]):
        u = socket.socket(_family(c), socket.SOCK_DGRAM)
        u.settimeout(c.get("timeout", 5))
        try:
            u.bind((c.get("src") or ("::" if ":" in c["dst"] else "0.0.0.0"), 0))
            u.sendto(b"q", (c["dst"], c["port"]))
            answer = u.recv(100).decode()
        except OSError:
            if not c.get("tolerant"):
                raise
            answer = "error"
        finally:
            sport = u.getsockname()[1]
            u.close()
        out.append([sport, answer] if c.get("ports") else answer)
    return out


def _hold(c: dict) -> list:
    s, sport, name = _tcp(c)
    _held[sport] = s
    return [sport, name]


def _close(c: dict) -> None:
    _held.pop(c["sport"]).close()


COMMANDS = {
    "names": _names,
    "many": _many,
    "udp": _udp,
    "hold": _hold,
    "echo": lambda c: _echo(_held[c["sport"]], c["data"]),
    "close": _close,
}


def main() -> None:
    for line in sys.stdin:
        c = json.loads(line)
        try:
            answer = {"ok": COMMANDS[c["op"]](c)}
        except Exception as e:  # every failure goes back to the test as an answer
            answer = {"error": repr(e)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
