"""A real web server for the demo's real servers: HTTP/1.0 on each ``--port``, every
answer names the server (so the client sees who served it). ``--greet``: instead, send
the name on accept and then echo (bench/failover_bench.py holds such connections
across a failover). Prints ``ready`` once listening; SIGTERM stops it."""

from __future__ import annotations

import argparse
import asyncio
import signal


async def main(name: str, ports: list[int], greet: bool = False) -> None:
    body = f"{name}\n".encode()
    answer = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(name.encode())
            await w.drain()
            while data := await r.read(4096):
                w.write(data)
                await w.drain()
        except OSError:
            pass
        finally:
            w.close()

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
            w.write(answer)
            await w.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            w.close()

    serve = echo if greet else handle
    servers = [await asyncio.start_server(serve, "0.0.0.0", p, reuse_address=True) for p in ports]
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, action="append", default=[])
    p.add_argument("--greet", action="store_true", help="greet with the name, then echo")
    a = p.parse_args()
    asyncio.run(main(a.name, a.port or [80], a.greet))
