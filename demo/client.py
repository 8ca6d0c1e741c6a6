"""The client of the failover lab, run inside the client namespace: one JSON command per
line on stdin, one JSON answer per line on stdout, so the driver can hold a TCP
connection open across a failover and run a steady stream of short connections while
it injects a fault.

Commands (``http``: the servers speak HTTP, else they greet with their name first):

* ``{"op": "get", "dst", "port", "n", "http"}`` → the names of ``n`` servers that answered
  (``"error"`` for a failed connection);
* ``{"op": "hold", ...}`` → ``[id, name]`` of a connection kept open; ``{"op": "echo",
  "id", "data"}`` → what came back; ``{"op": "close", "id"}``;
* ``{"op": "stream", "dst", "port", "seconds", "every", "timeout", "http"}`` → every
  ``every`` seconds a new connection starts (they overlap), each given ``timeout`` (under
  the kernel's 1 s SYN retransmission, so a lost SYN is a lost request, not a late one);
  answer: ``[[start, end, ok, name], ...]`` with CLOCK_MONOTONIC times, which the host
  shares with every namespace.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n"


def _name(data: bytes, http: bool) -> str:
    text = data.decode(errors="replace")
    return text.rsplit("\r\n\r\n", 1)[-1].strip() if http else text.strip()


def get_one(dst: str, port: int, http: bool, timeout: float = 2.0) -> str:
    s = socket.socket()
    s.settimeout(timeout)
    try:
        s.connect((dst, port))
        if http:
            s.sendall(REQUEST)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        else:
            data = s.recv(100)
        return _name(data, http) or "error"
    except OSError:
        return "error"
    finally:
        s.close()


async def _attempt(dst: str, port: int, http: bool, timeout: float, out: list) -> None:
    start = time.monotonic()
    ok, name = False, ""
    try:
        async with asyncio.timeout(timeout):
            r, w = await asyncio.open_connection(dst, port)
            try:
                if http:
                    w.write(REQUEST)
                    data = await r.read()
                else:
                    data = await r.read(100)
                name = _name(data, http)
                ok = bool(name)
            finally:
                w.close()
    except (OSError, TimeoutError):
        pass
    out.append([start, time.monotonic(), ok, name])


async def stream(
    dst: str, port: int, seconds: float, every: float, timeout: float, http: bool
) -> list:
    out: list = []
    tasks = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        tasks.append(asyncio.create_task(_attempt(dst, port, http, timeout, out)))
        await asyncio.sleep(every)
    await asyncio.gather(*tasks)
    return sorted(out)


async def forever(dst: str, port: int, every: float, timeout: float, http: bool) -> None:
    """``--forever``: a connection every ``every`` seconds until killed, one JSON line
    ``[start, end, ok, name]`` per finished connection (the demo's traffic)."""
    out: list = []
    tasks: set[asyncio.Task] = set()
    while True:
        t = asyncio.create_task(_attempt(dst, port, http, timeout, out))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        await asyncio.sleep(every)
        while out:
            print(json.dumps(out.pop(0)), flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--forever":
        dst, port, every, timeout = sys.argv[2], int(sys.argv[3]), *map(float, sys.argv[4:6])
        asyncio.run(forever(dst, port, every, timeout, http=True))
        return
    held: dict[int, socket.socket] = {}
    for line in sys.stdin:
        c = json.loads(line)
        try:
            http = c.get("http", False)
            if c["op"] == "get":
                out: object = [get_one(c["dst"], c["port"], http) for _ in range(c["n"])]
            elif c["op"] == "hold":
                s = socket.socket()
                s.settimeout(10)
                s.connect((c["dst"], c["port"]))
                held[s.getsockname()[1]] = s
                out = [s.getsockname()[1], _name(s.recv(100), False)]
            elif c["op"] == "echo":
                s = held[c["id"]]
                s.sendall(c["data"].encode())
                got = b""
                while len(got) < len(c["data"]):
                    chunk = s.recv(100)
                    if not chunk:
                        raise ConnectionError("closed by the server")
                    got += chunk
                out = got.decode()
            elif c["op"] == "close":
                held.pop(c["id"]).close()
                out = None
            elif c["op"] == "stream":
                out = asyncio.run(
                    stream(c["dst"], c["port"], c["seconds"], c["every"], c["timeout"], http)
                )
            else:
                raise ValueError(f"unknown op {c['op']}")
            print(json.dumps({"ok": out}), flush=True)
        except Exception as e:  # the driver sees the error; the client goes on
            print(json.dumps({"error": repr(e)}), flush=True)


if __name__ == "__main__":
    main()
