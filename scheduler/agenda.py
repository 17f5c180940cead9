"""Scheduling state in Redis: which DAG is due when, how far each DAG's schedule has been
evaluated (its cursor), pauses, named calendars, global outages, and the wake-up list that lets
the daemon sleep until the next due time yet react at once to a change.

Part of the store layer (see :mod:`scheduler.store`): it reads and writes its own Redis keys.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from scheduler.calendars import Calendar
from scheduler.errors import NotFoundError
from scheduler.outages import Outage
from scheduler.staging import unstage
from scheduler.store import RunStore, now_iso


class Agenda:
    def __init__(self, store: RunStore):
        self.store = store
        self.r: Any = store.r
        self._advance = store.script("advance_cursor.lua")
        self.keys = store.keys

    # --- the daemon's view ----------------------------------------------------------------------

    def due(self, now: datetime) -> list[str]:
        """DAGs whose next due time is at or before ``now``."""
        return list(self.r.zrangebyscore(self.keys.agenda(), "-inf", now.timestamp()))

    def next_due(self) -> float | None:
        first = self.r.zrange(self.keys.agenda(), 0, 0, withscores=True)
        return first[0][1] if first else None

    def set_next(self, dag: str, due: datetime | None, client: Any = None) -> None:
        client = client or self.r
        if due is None:
            client.zrem(self.keys.agenda(), dag)
        else:
            client.zadd(self.keys.agenda(), {dag: due.timestamp()})

    def cursor(self, dag: str) -> datetime | None:
        raw = self.r.hget(self.keys.dag(dag), "cursor")
        return datetime.fromisoformat(raw) if raw else None

    def advance(self, dag: str, to: datetime, client: Any = None) -> None:
        """Move the DAG's cursor forward (never back: a slow second scheduler cannot rewind it)."""
        self._advance(args=[self.keys.prefix, dag, to.timestamp(), to.astimezone(UTC).isoformat()],
                      client=client or self.r)

    def batch(self) -> Any:
        """A pipeline for many :meth:`set_next`/:meth:`advance` calls in one round trip."""
        return self.r.pipeline(transaction=False)

    def is_scheduled(self, dag: str) -> bool:
        return self.r.zscore(self.keys.agenda(), dag) is not None

    def is_paused(self, dag: str) -> bool:
        return self.r.hget(self.keys.dag(dag), "paused") == "1"

    def wait_for_wake(self, timeout: float) -> bool:
        """Block until someone calls :meth:`wake` or ``timeout`` seconds pass; True when woken."""
        got = self.r.blpop([self.keys.wake()], timeout=max(0.001, timeout))
        if got:
            self.r.delete(self.keys.wake())
        return bool(got)

    def wake(self) -> None:
        with self.r.pipeline() as pipe:
            pipe.rpush(self.keys.wake(), "1")
            pipe.ltrim(self.keys.wake(), -10, -1)
            pipe.execute()

    # --- DAGs -----------------------------------------------------------------------------------

    def schedule_now(self, dag: str, *, now: datetime | None = None) -> None:
        """After a submit or unpause: evaluate this DAG's schedule at once (from now on). Runs staged
        under the previous version are taken back first (and their fires evaluated again)."""
        now = now or datetime.now(UTC)
        unstage(self.store, [dag])
        with self.r.pipeline() as pipe:
            pipe.hsetnx(self.keys.dag(dag), "cursor", now.astimezone(UTC).isoformat())
            pipe.hsetnx(self.keys.dag(dag), "cursor_ts", now.timestamp())
            pipe.zadd(self.keys.agenda(), {dag: 0})
            pipe.execute()
        self.wake()

    def set_paused(self, dag: str, paused: bool) -> None:
        if not self.r.exists(self.keys.dag(dag)):
            raise NotFoundError(self.store.unknown_dag(dag))
        self.r.hset(self.keys.dag(dag), mapping={"paused": int(paused), "updated_at": now_iso()})
        if paused:
            self.r.zrem(self.keys.agenda(), dag)
            unstage(self.store, [dag])
            self.wake()
        else:
            self.schedule_now(dag)

    def is_deactivated(self, dag: str) -> bool:
        return self.r.hget(self.keys.dag(dag), "deactivated") == "1"

    def set_active(self, dag: str, active: bool) -> None:
        """A DAG whose file left its synced folder is deactivated: no new scheduled runs (staged ones are
        taken back), history and its pause flag kept. Its file coming back activates it again."""
        if not self.r.exists(self.keys.dag(dag)):
            raise NotFoundError(self.store.unknown_dag(dag))
        if active:
            self.r.hdel(self.keys.dag(dag), "deactivated", "deactivated_at")
            if not self.is_paused(dag):
                self.schedule_now(dag)
            return
        self.r.hset(self.keys.dag(dag), mapping={"deactivated": 1, "deactivated_at": now_iso()})
        self.r.zrem(self.keys.agenda(), dag)
        unstage(self.store, [dag])
        self.wake()

    # --- calendars and outages -----------------------------------------------------------------

    def calendars(self) -> dict[str, Any]:
        return {name: json.loads(spec) for name, spec in self.r.hgetall(self.keys.calendars()).items()}

    def put_calendars(self, specs: Mapping[str, Any]) -> list[str]:
        """Store named calendars (checked first: all or nothing) and re-evaluate every schedule."""
        for name, spec in specs.items():
            Calendar.from_spec(name, spec)  # a CalendarError names the calendar
        if specs:
            self.r.hset(self.keys.calendars(), mapping={k: json.dumps(v) for k, v in specs.items()})
        self._reschedule_all()
        return sorted(specs)

    def outages(self) -> dict[str, Any]:
        return {name: json.loads(spec) for name, spec in self.r.hgetall(self.keys.outages()).items()}

    def global_outages(self) -> list[Outage]:
        return [Outage.from_spec(name, spec) for name, spec in self.outages().items()]

    def put_outage(self, name: str, spec: Mapping[str, Any]) -> None:
        Outage.from_spec(name, spec)  # an OutageError names the outage
        self.r.hset(self.keys.outages(), name, json.dumps(dict(spec)))
        self._reschedule_all()

    def remove_outage(self, name: str) -> None:
        if not self.r.hdel(self.keys.outages(), name):
            raise NotFoundError(f"no global outage named '{name}'")
        self._reschedule_all()

    def _reschedule_all(self) -> None:
        """Calendars or global outages changed: every schedule is evaluated again, and staged runs
        (decided under the old rules) are taken back. The epoch makes a racing stage.lua refuse."""
        self.r.incr(self.keys.sched_epoch())
        unstage(self.store, self.store.dag_names())
        names = self.r.zrange(self.keys.agenda(), 0, -1)
        if names:
            self.r.zadd(self.keys.agenda(), dict.fromkeys(names, 0))
        self.wake()
