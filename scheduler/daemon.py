"""``ctl scheduler``: creates scheduled runs when they are due.

The daemon keeps no list of DAGs to poll. Redis holds an agenda (a sorted set of scheduled DAGs
by their next due time); the leader takes the due ones, creates their runs, computes each one's
next due time and then blocks on the wake-up list until the earliest next due time. A submit,
pause, unpause or outage change pushes to that list, so a change is seen at once.

Per DAG, a cursor in Redis records how far its schedule has been evaluated. Runs are created for
the fires due in ``(cursor, now]`` (``Schedule.due_between``: with ``catchup`` the oldest first,
at most ``max_catchup``; without it only the latest), each with the logical date as its
idempotency key, then the cursor moves to ``now``. A scheduler killed at any point therefore
neither loses nor repeats a run: the next leader starts from the cursor, and a fire that was
already created is not created again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from scheduler.agenda import Agenda
from scheduler.clock import Clock
from scheduler.dispatch import Dispatcher
from scheduler.errors import ConveyorError
from scheduler.leader import Lease
from scheduler.model import DagSpec, Trigger
from scheduler.outages import Outage
from scheduler.reaper import Reaper
from scheduler.schedules import OutagePolicy, Schedule
from scheduler.service import create_run_of, load_version
from scheduler.spec import build_schedule
from scheduler.store import RunStore

log = logging.getLogger("conveyor.scheduler")
RETRY_LATER = timedelta(seconds=60)  # a DAG whose evaluation failed is tried again after this
MAX_BLOCK = 1.0
REAP_EVERY = 2.0  # real seconds: how long one wait may last, so stop and lease renewal stay prompt


@dataclass(frozen=True)
class Compiled:
    version: int
    context: str  # hash of the named calendars and global outages it was built with
    spec: DagSpec
    record: dict[str, Any]
    schedule: Schedule | None


def next_due(schedule: Schedule, now: datetime) -> datetime | None:
    """When the daemon must look at this DAG again: its next fire's due time, or sooner, the end of
    an outage that holds deferred fires."""
    upcoming = schedule.next_fires(now, 1)
    due = upcoming[0].due if upcoming else None
    if schedule.outages and schedule.outage_policy is OutagePolicy.DEFER:
        hit = schedule.outages.find(now)
        if hit is not None and (due is None or hit[2] < due):
            due = hit[2]
    return due


class Scheduler:
    def __init__(self, store: RunStore, dispatcher: Dispatcher, *, clock: Clock | None = None,
                 lease_ttl: float = 10.0):
        self.store = store
        self.dispatcher = dispatcher
        self.agenda = Agenda(store)
        self.clock = clock or Clock()
        self.lease = Lease(store.r, store.keys, ttl=lease_ttl)
        self.stop = threading.Event()
        self._compiled: dict[str, Compiled] = {}
        self.created = 0
        self.reaper = Reaper(store, dispatcher)  # lost attempts and vanished jobs (workers also sweep)
        self._swept = 0.0

    # --- one pass -------------------------------------------------------------------------------

    def tick(self, now: datetime) -> float | None:
        """Create every run due at ``now``; returns the next due time (epoch seconds) or None."""
        due = self.agenda.due(now)
        if due:
            calendars, outages, context = self._context()
            for dag in due:
                try:
                    self.evaluate(dag, now, calendars, outages, context)
                except ConveyorError as exc:
                    log.error("%s: cannot evaluate its schedule: %s (trying again in %s)", dag, exc, RETRY_LATER)
                    self.agenda.set_next(dag, now + RETRY_LATER)
        return self.agenda.next_due()

    def evaluate(self, dag: str, now: datetime, calendars: dict[str, Any], outages: list[Outage],
                 context: str) -> int:
        """Create the DAG's runs due in ``(cursor, now]`` and put it back on the agenda."""
        record = self.store.r.hgetall(self.store.keys.dag(dag))
        if not record or record.get("paused") == "1":
            self.agenda.set_next(dag, None)
            return 0
        compiled = self._compile(dag, int(record["latest"]), calendars, outages, context)
        if compiled.schedule is None:
            self.agenda.set_next(dag, None)
            return 0
        cursor = self.agenda.cursor(dag) or now
        fires, not_created = compiled.schedule.due_between(cursor, now)
        if not_created:
            how = "catchup is off: only the latest is created" if not compiled.schedule.catchup else (
                f"max_catchup is {compiled.schedule.max_catchup}")
            log.warning("%s: %d missed run(s) not created (%s)", dag, not_created, how)
        for fire in fires:
            key = fire.logical_date.astimezone(UTC).isoformat()
            run_id = create_run_of(
                self.store, self.dispatcher, compiled.spec, compiled.record, {}, trigger=Trigger.SCHEDULE,
                logical_date=fire.logical_date, interval=(fire.data_interval_start, fire.data_interval_end),
                now=self.clock.now(), idempotency_key=key, due_at=fire.due,
            )
            self.created += 1
            log.info("%s: run %s for %s", dag, run_id, fire.logical_date.isoformat())
        self.agenda.advance(dag, now)
        self.agenda.set_next(dag, next_due(compiled.schedule, now))
        return len(fires)

    def _context(self) -> tuple[dict[str, Any], list[Outage], str]:
        calendars = self.agenda.calendars()
        raw_outages = self.agenda.outages()
        digest = hashlib.sha256(json.dumps([calendars, raw_outages], sort_keys=True).encode()).hexdigest()
        return calendars, self.agenda.global_outages(), digest

    def _compile(self, dag: str, version: int, calendars: dict[str, Any], outages: list[Outage],
                 context: str) -> Compiled:
        """The DAG's spec and effective schedule, parsed once per version (not on every fire)."""
        known = self._compiled.get(dag)
        if known and known.version == version and known.context == context:
            return known
        spec, record = load_version(self.store, dag, version, calendars)
        compiled = Compiled(version, context, spec, record, build_schedule(spec.document, calendars, outages))
        self._compiled[dag] = compiled
        return compiled

    # --- the loop -------------------------------------------------------------------------------

    def serve(self) -> None:
        """Lead (or stand by) until :attr:`stop` is set. Survives Redis restarts with a backoff."""
        leading = False
        backoff = 0.1
        while not self.stop.is_set():
            try:
                if not self.lease.hold():
                    if leading:
                        log.warning("lost the leadership (lease taken by %s)", self.lease.holder())
                        leading = False
                    # Sleep until the current lease would expire, then try at once.
                    self.stop.wait(min(self.lease.seconds_left() + 0.002, MAX_BLOCK))
                    continue
                if not leading:
                    log.info("leading (fencing token %d, lease %.1fs)", self.lease.token, self.lease.ttl)
                    leading = True
                nxt = self.tick(self.clock.now())
                if time.monotonic() - self._swept > REAP_EVERY:
                    self.reaper.lost_attempts()
                    self.reaper.vanished_jobs()
                    self._swept = time.monotonic()
                wait = min(self.lease.ttl / 3, MAX_BLOCK)
                if nxt is not None:
                    wait = min(wait, self.clock.real_seconds(nxt))
                if wait > 0:
                    self.agenda.wait_for_wake(wait)
                backoff = 0.1
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                log.warning("Redis unreachable (%s); retrying in %.1fs", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, OSError):
            self.lease.release()
