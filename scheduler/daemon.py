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

from scheduler import stats
from scheduler.agenda import Agenda
from scheduler.clock import Clock
from scheduler.dispatch import Dispatcher
from scheduler.errors import ConveyorError
from scheduler.leader import Lease
from scheduler.model import DagSpec, Trigger
from scheduler.outages import Outage
from scheduler.plan import plan_run
from scheduler.reaper import Reaper
from scheduler.schedules import Fire, OutagePolicy, Schedule
from scheduler.service import load_version
from scheduler.spec import build_schedule, resolve_params
from scheduler.store import RunStore

log = logging.getLogger("conveyor.scheduler")
RETRY_LATER = timedelta(seconds=60)  # a DAG whose evaluation failed is tried again after this
MAX_BLOCK = 1.0
REAP_EVERY = 2.0
PRUNE_EVERY = 60.0  # real seconds: how long one wait may last, so stop and lease renewal stay prompt


@dataclass(frozen=True)
class Compiled:
    version: int
    context: str  # hash of the named calendars and global outages it was built with
    spec: DagSpec
    record: dict[str, Any]
    schedule: Schedule | None
    params: dict[str, Any]  # a scheduled run takes the params' defaults
    provenance: dict[str, Any]


def next_due(schedule: Schedule, now: datetime, upcoming: list[Fire] | None = None) -> datetime | None:
    """When the daemon must look at this DAG again: its next fire's due time, or sooner, the end of
    an outage that holds deferred fires."""
    upcoming = schedule.next_fires(now, 1) if upcoming is None else upcoming
    due = upcoming[0].due if upcoming else None
    if schedule.outages and schedule.outage_policy is OutagePolicy.DEFER:
        hit = schedule.outages.find(now)
        if hit is not None and (due is None or hit[2] < due):
            due = hit[2]
    return due


class Scheduler:
    def __init__(self, store: RunStore, dispatcher: Dispatcher, *, clock: Clock | None = None,
                 lease_ttl: float = 10.0, history_days: float = 30.0):
        self.store = store
        self.dispatcher = dispatcher
        self.agenda = Agenda(store)
        self.clock = clock or Clock()
        self.lease = Lease(store.r, store.keys, ttl=lease_ttl)
        self.stop = threading.Event()
        self._compiled: dict[str, Compiled] = {}
        self._upcoming: dict[str, tuple[float, int, str, list[Fire]]] = {}
        self.created = 0
        self.reaper = Reaper(store, dispatcher)  # lost attempts and vanished jobs (workers also sweep)
        self._swept = 0.0
        self.history_days = history_days  # ended runs older than this are deleted (0: keep everything)
        self._pruned = 0.0

    # --- one pass -------------------------------------------------------------------------------

    def tick(self, now: datetime) -> float | None:
        """Create every run due at ``now``; returns the next due time (epoch seconds) or None.

        In two phases, so that a minute boundary with thousands of due DAGs is cheap where it counts:
        first every due run is planned and created (one pipeline of Lua creates, one of RQ enqueues),
        then, with the runs already in place, each DAG's next fires are computed (the cron walking).
        """
        due = self.agenda.due(now)
        if not due:
            return self.agenda.next_due()
        calendars, outages, context = self._context()
        with self.store.r.pipeline(transaction=False) as pipe:
            for dag in due:
                pipe.hgetall(self.store.keys.dag(dag))
            records = pipe.execute()
        work: list[tuple[str, Compiled, list[Fire]]] = []
        for dag, record in zip(due, records, strict=True):
            try:
                if not record or record.get("paused") == "1":
                    self.agenda.set_next(dag, None)
                    continue
                compiled = self._compile(dag, int(record["latest"]), calendars, outages, context)
                if compiled.schedule is None:
                    self.agenda.set_next(dag, None)
                    continue
                cursor = datetime.fromisoformat(record["cursor"]) if record.get("cursor") else now
                work.append((dag, compiled, self._due_fires(dag, compiled, cursor, now)))
            except ConveyorError as exc:
                log.error("%s: cannot evaluate its schedule: %s (trying again in %s)", dag, exc, RETRY_LATER)
                self.agenda.set_next(dag, now + RETRY_LATER)
        self._create(work)
        with self.store.r.pipeline(transaction=False) as pipe:
            for dag, compiled, _ in work:
                self.agenda.advance(dag, now, client=pipe)
                upcoming = compiled.schedule.next_fires(now, 2) if compiled.schedule else []
                self._upcoming[dag] = (now.timestamp(), compiled.version, compiled.context, upcoming)
                self.agenda.set_next(dag, next_due(compiled.schedule, now, upcoming), client=pipe)
            pipe.execute()
        return self.agenda.next_due()

    def _due_fires(self, dag: str, compiled: Compiled, cursor: datetime, now: datetime) -> list[Fire]:
        """The fires due in ``(cursor, now]``: from the fires computed when the cursor last moved (the
        common case, no cron walking), else from the schedule (catchup rules, outages, restarts)."""
        cached = self._upcoming.get(dag)
        schedule = compiled.schedule
        if (cached and cached[0] == cursor.timestamp() and cached[1:3] == (compiled.version, compiled.context)
                and not schedule.outages and len(cached[3]) == 2):
            first, second = cached[3]
            if second.due.timestamp() > now.timestamp():
                return [first] if first.due.timestamp() <= now.timestamp() else []
        fires, not_created = schedule.due_between(cursor, now)
        if not_created:
            how = "catchup is off: only the latest is created" if not schedule.catchup else (
                f"max_catchup is {schedule.max_catchup}")
            log.warning("%s: %d missed run(s) not created (%s)", dag, not_created, how)
        return fires

    def _create(self, work: list[tuple[str, Compiled, list[Fire]]]) -> None:
        plans = []
        for _, compiled, fires in work:
            for fire in fires:
                plan = plan_run(
                    compiled.spec, version=compiled.version, params=compiled.params, now=self.clock.now(),
                    trigger=Trigger.SCHEDULE, logical_date=fire.logical_date,
                    interval=(fire.data_interval_start, fire.data_interval_end),
                    provenance={**compiled.provenance, "due_at": fire.due.isoformat()},
                )
                plans.append((plan, fire.logical_date.astimezone(UTC).isoformat()))
        if not plans:
            return
        created = self.store.create_runs(plans)
        self.dispatcher.enqueue([item for _, ready in created for item in ready])
        self.created += len(created)
        for (plan, _), (run_id, _) in zip(plans, created, strict=True):
            log.info("%s: run %s for %s", plan.dag, run_id, plan.logical_date.isoformat())

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
        provenance = {"dag_sha256": record["sha256"], "git_commit": record.get("git_commit"),
                      "git_dirty": record.get("git_dirty"), "dag_path": record.get("path")}
        compiled = Compiled(version, context, spec, record, build_schedule(spec.document, calendars, outages),
                            resolve_params(spec, {}), provenance)
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
                self.dispatcher.move_due()
                if time.monotonic() - self._swept > REAP_EVERY:
                    self.reaper.lost_attempts()
                    self.reaper.vanished_jobs()
                    self.reaper.sla_misses()
                    self._swept = time.monotonic()
                if self.history_days and time.monotonic() - self._pruned > PRUNE_EVERY:
                    # A few hundred runs per pass keeps each pass short next to the lease renewal.
                    stats.prune(self.store, self.clock.now() - timedelta(days=self.history_days), limit=200)
                    self._pruned = time.monotonic()
                wait = min(self.lease.ttl / 3, MAX_BLOCK, self.dispatcher.next_delayed() or MAX_BLOCK)
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
