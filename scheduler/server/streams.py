"""Long responses: Server-Sent Events from the events stream, and a log that grows while its attempt runs.

Both end when the client goes away; neither holds a thread while it waits (the events use Redis's
blocking XREAD on an asyncio connection; the log is polled with short sleeps).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from scheduler.server.ops import Ops

EVENT_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
KEEPALIVE_SECONDS = 15
LOG_POLL_SECONDS = 0.25


def valid_id(value: str) -> bool:
    return bool(EVENT_ID.match(value))


async def events(request: Request, start: str, run: str | None) -> AsyncIterator[str]:
    """``id:``/``data:`` frames of every state change after ``start`` (``$``: from now), in stream order."""
    client = request.app.state.async_redis
    key = request.app.state.ops.store.keys.events()
    last = start
    yield "retry: 2000\n\n"
    while not await request.is_disconnected():
        found = await client.xread({key: last}, count=200, block=KEEPALIVE_SECONDS * 1000)
        if not found:
            yield ": keepalive\n\n"
            continue
        for entry_id, fields in found[0][1]:
            last = entry_id
            if run and fields.get("run") != run:
                continue
            data = {"id": entry_id, **fields}
            yield f"id: {entry_id}\ndata: {json.dumps(data)}\n\n"


async def follow_log(ops: Ops, request: Request, run_id: str, step: str, attempt: int) -> AsyncIterator[bytes]:
    """The attempt's log so far, then each new chunk, until the attempt ends (then whatever came last)."""
    offset = 0
    while True:
        ended = await run_in_threadpool(ops.attempt_ended, run_id, step, attempt)
        chunk = await run_in_threadpool(ops.read_log, run_id, step, attempt, offset)
        if chunk:
            offset += len(chunk)
            yield chunk
        if ended or await request.is_disconnected():
            return
        await asyncio.sleep(LOG_POLL_SECONDS)
