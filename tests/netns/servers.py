"""Real servers for live tests: TCP and UDP listeners that answer with their name.

TCP: on accept, send the name; then echo whatever the client sends until it closes
(so a test can hold a connection open and prove it still reaches the same server).
UDP: answer every datagram with the name. Prints ``ready`` once every socket listens.

    python servers.py --name rs1 --tcp 80 --udp 53 [--bind ADDR]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(self.name, addr)


async def _main(name: str, bind: str, tcp: list[int], udp: list[int]) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    tag = name.encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(tag)
            await writer.drain()
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    servers = [
        await asyncio.start_server(
            handle, bind, port, family=family, reuse_address=True, backlog=1024
        )
        for port in tcp
    ]
    for port in udp:
        await loop.create_datagram_endpoint(
            lambda: _Udp(tag), local_addr=(bind, port), family=family
        )
    print("ready", flush=True)
    await stop
    for s in servers:
        s.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--name", required=True)
    p.add_argument("--bind", default="0.0.0.0")
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    a = p.parse_args()
    asyncio.run(_main(a.name, a.bind, a.tcp, a.udp))


if __name__ == "__main__":
    main()
