"""The daemon's control socket: a UNIX stream socket speaking one JSON object per line.

Requests are ``{"command": "status"}`` or ``{"command": "reload"}``; every request gets
exactly one response line, ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
The socket is created with mode 0600 (root only: it can reload the router), in a
directory created 0700 when missing; a stale socket file left by a killed daemon is
replaced, a live one (another daemon answering) is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

DEFAULT_SOCKET = "/run/lvs-router/control.sock"
MAX_LINE = 1 << 16

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    pass


def _alive(path: str) -> bool:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


class ControlServer:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> None:
        p = Path(self.path)
        if not p.parent.exists():
            p.parent.mkdir(parents=True, mode=0o700)
        if p.exists() or p.is_symlink():
            if _alive(self.path):
                raise ControlError(f"{self.path}: another daemon is answering on it")
            p.unlink()
        old = os.umask(0o177)  # the socket is born 0600: no window where others can connect
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients.add(task)
        try:
            while line := await reader.readline():
                try:
                    request = json.loads(line)
                    if not isinstance(request, dict):
                        raise ValueError("a request is a JSON object")
                    response = await self.handler(request)
                except (ValueError, TypeError) as err:
                    response = {"ok": False, "error": f"bad request: {err}"}
                writer.write(json.dumps(response, default=str).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._clients.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._clients):  # connected clients: hang up on them
                task.cancel()
            for task in list(self._clients):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def request(path: str, command: str, *, timeout: float = 60.0) -> dict[str, Any]:
    """Send one command to a running daemon and return its response (blocking client)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except OSError as err:
            raise ControlError(f"cannot reach the daemon at {path}: {err.strerror or err}") from err
        s.sendall(json.dumps({"command": command}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(MAX_LINE)
            if not chunk:
                raise ControlError(f"{path}: the daemon closed the connection")
            buf += chunk
        return json.loads(buf)
    finally:
        s.close()
