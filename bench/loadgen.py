"""A lean HTTP load generator for bench/server.py, run as its own process so that it does not share the
server's (or the benchmark's) interpreter lock: ``clients`` keep-alive connections on one asyncio loop,
each sending its share of requests one after the other (a closed loop, as a person or a script would).

    python bench/loadgen.py URL METHOD PATH_TEMPLATE TOTAL CLIENTS [BODY] < ids

``PATH_TEMPLATE`` may hold ``{id}``, replaced by the ids read from stdin (one a line, in turn). Prints one
JSON object: ``latencies`` (seconds) and ``bodies`` (each response's JSON, for POSTs) on stdout. Requests are
written by hand (HTTP/1.1, Content-Length bodies only): a client library would cost more CPU per request
than the server does, and that CPU comes out of the same two cores.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import urlsplit


async def client(host: str, port: int, requests: list[tuple[str, bytes]], method: str, body: bytes,
                 latencies: list[float], bodies: list[object], keep: bool, token: str | None) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    try:
        for path, _ in requests:
            head = (f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
            began = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
            latencies.append(time.perf_counter() - began)
            status = int(status_line.split()[1])
            if status >= 300:
                raise SystemExit(f"{method} {path}: HTTP {status}: {payload[:200]!r}")
            if keep:
                bodies.append(json.loads(payload))
    finally:
        writer.close()


async def main(url: str, method: str, template: str, total: int, clients: int, body: bytes,
               ids: list[str], token: str | None) -> dict[str, list]:
    parts = urlsplit(url)
    paths = [(template.format(id=ids[i % len(ids)]) if ids else template, b"") for i in range(total)]
    shares = [paths[i::clients] for i in range(clients)]
    latencies: list[float] = []
    bodies: list[object] = []
    await asyncio.gather(*(client(parts.hostname or "127.0.0.1", parts.port or 80, share, method, body,
                                  latencies, bodies, method == "POST", token) for share in shares))
    return {"latencies": latencies, "bodies": bodies}


if __name__ == "__main__":
    url, method, template, total, clients = sys.argv[1:6]
    body = sys.argv[6].encode() if len(sys.argv) > 6 else b""
    ids = [line.strip() for line in sys.stdin if line.strip()]
    import os

    work = main(url, method, template, int(total), int(clients), body, ids, os.environ.get("LOADGEN_TOKEN"))
    try:
        import uvloop

        result = uvloop.run(work)
    except ImportError:
        result = asyncio.run(work)
    json.dump(result, sys.stdout)
