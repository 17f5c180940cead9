"""Plain data for workers: what ``ctl workers`` prints (and the HTTP server can return).

Two sources joined: RQ's worker registry (name, host, pid, queues, state, last heartbeat) and
Conveyor's running attempts (each names the worker that holds its lease). An attempt whose worker
is no longer registered (killed, cut off) is shown too, as ``unregistered``, until the reaper
declares it lost.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis

from scheduler.store import RunStore


def workers(store: RunStore, rq_connection: redis.Redis) -> list[dict[str, Any]]:
    """Every worker, by name: ``name``, ``host``, ``pid``, ``queues``, ``state``, ``current`` (the attempt it
    runs: run_id, step, attempt, started_at; or None) and ``last_heartbeat`` (ISO, UTC)."""
    from rq import Worker

    running = store.running_attempt_records()
    rows = []
    for worker in Worker.all(connection=rq_connection):
        mine = [a for a in running if a.get("worker") == worker.name
                or (a.get("host"), a.get("pid")) == (worker.hostname, str(worker.pid))]
        for attempt in mine:
            running.remove(attempt)
        beat = worker.last_heartbeat
        rows.append({
            "name": worker.name, "host": worker.hostname, "pid": worker.pid, "queues": worker.queue_names(),
            "state": str(worker.get_state() or "unknown"),
            "current": _current(mine[0]) if mine else None,
            "last_heartbeat": _iso(beat),
        })
    for attempt in running:  # leases held by workers RQ no longer knows
        rows.append({"name": attempt.get("worker") or "", "host": attempt.get("host") or "",
                     "pid": int(attempt["pid"]) if attempt.get("pid") else None, "queues": [],
                     "state": "unregistered", "current": _current(attempt), "last_heartbeat": None})
    return sorted(rows, key=lambda row: (row["name"], row["host"]))


def _current(attempt: dict[str, Any]) -> dict[str, Any]:
    return {"run_id": attempt["run_id"], "step": attempt["step"], "attempt": attempt["attempt"],
            "started_at": attempt.get("started_at") or None}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
