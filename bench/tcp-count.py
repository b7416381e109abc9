#!/usr/bin/env python3
"""A TCP relay that counts the connections it accepts: `tcp-count.py LISTEN_PORT
UPSTREAM_PORT COUNT_FILE`. Put in front of the EC2 endpoint, it shows how many
connections a run opens (one pooled client reuses them; a new client per call does not)."""
import asyncio
import sys

listen, upstream, count_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
accepted = 0


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def handle(client_reader, client_writer):
    global accepted
    accepted += 1
    with open(count_file, "w") as f:
        f.write(f"{accepted}\n")
    up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream)
    await asyncio.gather(pipe(client_reader, up_writer), pipe(up_reader, client_writer))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


asyncio.run(main())
