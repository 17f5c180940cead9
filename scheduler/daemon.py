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

The next fire, when it is less than ``lookahead`` away, is staged rather than waited for
(:mod:`scheduler.staging`): written now, with the cursor moved to its due time in the same
script, and released onto the queues at that time by a thread of its own. A DAG is looked at
once per fire, ``lookahead`` before it; DAGs that share a schedule share its cron walking.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from scheduler import health, stats
from scheduler.agenda import Agenda
from scheduler.clock import Clock
from scheduler.datasets import DatasetTriggers
from scheduler.engine import Engine
from scheduler.errors import ConveyorError
from scheduler.leader import Lease
from scheduler.model import DagSpec, Trigger
from scheduler.outages import Outage
from scheduler.plan import RunPlan, plan_run
from scheduler.reaper import Reaper
from scheduler.schedules import Fire, OutagePolicy, Schedule
from scheduler.service import load_version
from scheduler.settings import DEFAULT_LOOKAHEAD  # how far ahead runs are staged (see scheduler/staging.py)
from scheduler.spec import build_schedule, resolve_params
from scheduler.staging import Staging

log = logging.getLogger("conveyor.scheduler")
RETRY_LATER = timedelta(seconds=60)  # a DAG whose evaluation failed is tried again after this, then 2x, 4x...
MAX_RETRY_LATER = timedelta(minutes=30)
MAX_BLOCK = 1.0
STAGE_MARGIN = timedelta(seconds=1)  # a fire closer than this is created at its time, not staged
HOUSEKEEPING_GAP = 0.5  # real seconds: no reaping or pruning this close to a staged due time
RELEASE_POLL = 0.25  # real seconds: the releaser looks for newly staged runs at least this often
CHUNK = 500  # DAGs per pass; staged runs are released between passes
REAP_EVERY = 2.0
PRUNE_EVERY = 60.0  # real seconds: how long one wait may last, so stop and lease renewal stay prompt


@dataclass(frozen=True)
class Compiled:
    version: int
    context: str  # hash of the named calendars and global outages it was built with
    spec: DagSpec
    schedule: Schedule | None  # shared by every DAG with the same schedule (see Scheduler._schedule)
    schedule_key: str
    params: dict[str, Any]  # a scheduled run takes the params' defaults
    provenance: dict[str, Any]

    @property
    def sched(self) -> Schedule:
        """The schedule of a DAG that has one (the only kind the daemon walks)."""
        assert self.schedule is not None, "an unscheduled DAG is never walked"
        return self.schedule


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
    def __init__(self, engine: Engine, *, clock: Clock | None = None,
                 lease_ttl: float = 10.0, history_days: float = 30.0, lookahead: float = DEFAULT_LOOKAHEAD):
        self.engine = engine
        self.store = store = engine.store
        self.dispatcher = engine.dispatcher
        self.agenda = Agenda(store)
        self.staging = Staging(store, engine.dispatcher)
        self.lookahead = timedelta(seconds=lookahead)  # 0: never stage, create every run at its due time
        self.clock = clock or Clock()
        self.lease = Lease(store, ttl=lease_ttl)
        self.stop = threading.Event()
        self._compiled: dict[str, Compiled] = {}
        self._schedules: dict[str, Schedule | None] = {}
        self._memo: dict[tuple[Any, ...], Any] = {}
        self.leading = False  # read by the release thread
        # DAG -> (cursor, version, context, due time of the first fire after that cursor), epoch seconds
        self._known: dict[str, tuple[float, int, str, float]] = {}
        self._seen_context = ""
        self.created = 0
        self.staged = 0
        self.reaper = Reaper(engine)  # lost attempts and vanished jobs (workers also sweep)
        self._failures: dict[str, int] = {}  # DAG -> consecutive failures to evaluate or plan it
        self._swept = 0.0
        self.history_days = history_days  # ended runs older than this are deleted (0: keep everything)
        self._pruned = 0.0
        self.datasets = DatasetTriggers(engine)

    # --- one pass -------------------------------------------------------------------------------

    def tick(self, now: datetime) -> float | None:
        """Release the staged runs due at ``now``, then look at every DAG whose agenda time has come:
        create the runs due (late ones included), stage the next one if it is due within the
        lookahead, and set the DAG's next agenda time. Returns the next time to wake (epoch seconds).

        Staged runs are released before anything else and again between chunks of DAGs, so a long
        pass (thousands of DAGs to stage) never holds back a boundary.
        """
        self._memo.clear()
        began = self.clock.now()
        self.staging.release(now)
        due = self.agenda.due(now)
        if due:
            epoch = self.staging.epoch()
            context = self._context()
            if self._schedules and context[2] != self._seen_context:
                self._schedules.clear()  # built under calendars or outages that no longer exist
            self._seen_context = context[2]
            for i in range(0, len(due), CHUNK):
                current = now + (self.clock.now() - began)  # ``now`` as time goes on during a long pass
                self.staging.release(current)
                self._visit(due[i:i + CHUNK], current, epoch, context)
            self.staging.release(now + (self.clock.now() - began))
        self._dataset_runs(now)
        return self._next_wake()

    def _dataset_runs(self, now: datetime) -> None:
        """DAGs with ``schedule: {on: [...]}`` whose datasets all have new events get their run."""
        try:
            self.created += len(self.datasets.check(now))
        except (ConveyorError, redis.RedisError) as exc:  # tried again next pass
            log.warning("dataset triggers: %s", exc)

    def _next_wake(self) -> float | None:
        times = [t for t in (self.agenda.next_due(), self.staging.next_due()) if t is not None]
        return min(times) if times else None

    def _visit(self, dags: list[str], now: datetime, epoch: str,
               context: tuple[dict[str, Any], list[Outage], str]) -> None:
        records = self.store.dag_records(dags)
        work: list[tuple[str, Compiled, list[Fire]]] = []
        for dag, record in zip(dags, records, strict=True):
            try:
                if not record or record.get("paused") == "1" or record.get("deactivated") == "1":
                    self.agenda.set_next(dag, None)
                    continue
                compiled = self._compile(dag, int(record["latest"]), *context)
                if compiled.schedule is None:
                    self.agenda.set_next(dag, None)
                    continue
                cursor = datetime.fromisoformat(record["cursor"]) if record.get("cursor") else now
                work.append((dag, compiled, self._due_fires(dag, compiled, cursor, now)))
            except Exception as exc:  # one DAG's problem never stops the loop or the other DAGs
                self._failed(dag, "cannot evaluate its schedule", exc, now)
        failed = self._create(work)
        work = [w for w in work if w[0] not in failed]  # their cursors stay: the fires are tried again
        # Then, with the due runs in place, the next fires: staged now if within the lookahead.
        to_stage = []
        with self.agenda.batch() as pipe:
            for dag, compiled, _ in work:
                self.agenda.advance(dag, now, client=pipe)
                schedule = compiled.sched
                upcoming = self._memoized(compiled, "next", now)
                wake = next_due(schedule, now, upcoming)
                known = (now, upcoming[0].due) if upcoming else None  # the first fire after the new cursor
                if self._stageable(compiled, upcoming, now):
                    if upcoming[0].due - now <= self.lookahead:
                        to_stage.append((compiled, upcoming[0]))  # stage.lua moves the cursor to its due time
                        wake = upcoming[1].due - self.lookahead if len(upcoming) > 1 else None
                        known = (upcoming[0].due, upcoming[1].due) if len(upcoming) > 1 else None
                    else:
                        wake = upcoming[0].due - self.lookahead
                self.agenda.set_next(dag, wake, client=pipe)
                if known and not schedule.outages:
                    self._known[dag] = (known[0].timestamp(), compiled.version, compiled.context, known[1].timestamp())
                else:
                    self._known.pop(dag, None)
            pipe.execute()
        for dag, _, _ in work:
            if self._failures.pop(dag, None):
                self.store.set_dag_error(dag, None)
        self._stage(to_stage, epoch, now)

    def _failed(self, dag: str, what: str, exc: Exception, now: datetime) -> None:
        """Record a DAG that cannot be evaluated or planned (shown by ``ctl runs``/``ctl next``), and look
        at it again later with a back-off: 1 min, 2, 4, ... at most ``MAX_RETRY_LATER``."""
        failures = self._failures[dag] = self._failures.get(dag, 0) + 1
        later = min(RETRY_LATER * 2 ** (failures - 1), MAX_RETRY_LATER)
        message = str(exc) if isinstance(exc, ConveyorError) else f"{type(exc).__name__}: {exc}"
        log.error("%s: %s: %s (trying again in %s)", dag, what, message, later)
        with contextlib.suppress(redis.RedisError):
            self.store.set_dag_error(dag, f"{what}: {message}")
        self.agenda.set_next(dag, now + later)

    def _stageable(self, compiled: Compiled, upcoming: list[Fire], now: datetime) -> bool:
        """Whether the next fire may be staged: not within ``STAGE_MARGIN`` of now (it is created at
        its time instead), no max_active_runs (a waiting run could start early), and no outage
        around it (outages move fires; the plain path handles them)."""
        if not self.lookahead or not upcoming or compiled.spec.max_active_runs:
            return False
        fire = upcoming[0]
        if fire.due - now < STAGE_MARGIN or fire.deferred_by:
            return False
        outages = compiled.sched.outages
        return not outages or (outages.find(now) is None and outages.find(fire.due) is None)

    def _memoized(self, compiled: Compiled, what: str, *args: datetime) -> Any:
        """Schedule walks per distinct schedule and instant, once per tick: DAGs that share a schedule
        (every ``0 * * * *`` DAG in UTC) share the cron walking."""
        key = (compiled.schedule_key, what, *args)
        if key not in self._memo:
            schedule = compiled.sched
            self._memo[key] = (schedule.next_fires(args[0], 2) if what == "next"
                               else schedule.due_between(args[0], args[1]))
        return self._memo[key]

    def _due_fires(self, dag: str, compiled: Compiled, cursor: datetime, now: datetime) -> list[Fire]:
        """The fires due in ``(cursor, now]`` (catchup rules, outages, restarts). None, without walking
        the schedule, when the last look at this DAG found the first fire after the cursor later than now."""
        if cursor >= now:
            return []
        known = self._known.get(dag)
        if known and known[:3] == (cursor.timestamp(), compiled.version, compiled.context) and \
                now.timestamp() < known[3]:
            return []
        fires, not_created = self._memoized(compiled, "due", cursor, now)
        if not_created:
            schedule = compiled.sched
            how = "catchup is off: only the latest is created" if not schedule.catchup else (
                f"max_catchup is {schedule.max_catchup}")
            log.warning("%s: %d missed run(s) not created (%s)", dag, not_created, how)
        return fires

    def _plan(self, compiled: Compiled, fire: Fire, now: datetime, **provenance: Any) -> RunPlan:
        return plan_run(
            compiled.spec, version=compiled.version, params=compiled.params, now=now,
            trigger=Trigger.SCHEDULE, logical_date=fire.logical_date,
            interval=(fire.data_interval_start, fire.data_interval_end),
            provenance={**compiled.provenance, "due_at": fire.due.isoformat(), **provenance},
        )

    def _create(self, work: list[tuple[str, Compiled, list[Fire]]]) -> set[str]:
        """Create the due runs; returns the DAGs whose fires could not be planned (none of theirs is
        created, and their cursors stay, so that the same fires are tried again after the back-off)."""
        plans: list[tuple[RunPlan, str | None]] = []
        failed: set[str] = set()
        for dag, compiled, fires in work:
            try:
                planned = [(self._plan(compiled, fire, self.clock.now()), fire.logical_date.astimezone(UTC).isoformat())
                           for fire in fires]
            except Exception as exc:  # a template or param problem of this DAG: record it, go on
                self._failed(dag, "cannot plan its run", exc, self.clock.now())
                failed.add(dag)
                continue
            plans += planned
        if not plans:
            return failed
        created = self.engine.create_planned(plans)
        self.created += len(created)
        for (plan, _), run in zip(plans, created, strict=True):
            log.info("%s: run %s for %s", plan.dag, run.run_id, plan.logical_date.isoformat())
        return failed

    def _stage(self, work: list[tuple[Compiled, Fire]], epoch: str, now: datetime) -> None:
        plans = []
        for compiled, fire in work:
            try:
                plans.append((self._plan(compiled, fire, fire.due, staged=True),
                              fire.logical_date.astimezone(UTC).isoformat(), fire.due))
            except Exception as exc:
                self._failed(compiled.spec.name, "cannot plan its run", exc, now)
        staged = self.staging.stage(plans, epoch, now=self.clock.now())
        self.staged += len(staged)
        if staged:
            log.info("staged %d run(s), the first due at %s", len(staged), min(due for _, _, due in plans).isoformat())

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
        key, schedule = self._schedule(spec.document, calendars, outages, context)
        compiled = Compiled(version, context, spec, schedule, key, resolve_params(spec, {}), provenance)
        self._compiled[dag] = compiled
        return compiled

    def _schedule(self, document: Mapping[str, Any], calendars: dict[str, Any], outages: list[Outage],
                  context: str) -> tuple[str, Schedule | None]:
        """One Schedule object per distinct schedule (with its calendars, outages and batch)."""
        key = json.dumps([document.get(k) for k in ("schedule", "calendars", "outages", "batch")] + [context],
                         sort_keys=True, default=str)
        if key not in self._schedules:
            self._schedules[key] = build_schedule(dict(document), calendars, outages)
        return key, self._schedules[key]

    # --- the loop -------------------------------------------------------------------------------

    def release_loop(self) -> None:
        """Release staged runs at their due times, precisely (a Python sleep, not a Redis timeout, which
        fires on Redis's 100 ms timer). In its own thread, so that a long pass of the main loop (staging
        thousands of runs) never holds back a boundary. Runs are staged at least ``STAGE_MARGIN`` ahead,
        so looking for new ones every ``RELEASE_POLL`` misses none."""
        while not self.stop.is_set():
            try:
                due = self.staging.next_due() if self.leading else None
                wait = RELEASE_POLL if due is None else min(self.clock.real_seconds(due), RELEASE_POLL)
                if wait > 0:
                    self.stop.wait(wait + 0.0002)
                if due is not None and self.clock.now().timestamp() >= due:
                    self.staging.release(self.clock.now())
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self.stop.wait(RELEASE_POLL)

    def turn_within(self) -> float:
        """How long one turn of :meth:`serve` may take before ``/readyz`` says the loop is stuck: a
        standby sleeps up to a lease, a leader's pass may be long (thousands of DAGs to stage)."""
        return max(30.0, 3 * self.lease.ttl)

    def serve(self) -> None:
        """Lead (or stand by) until :attr:`stop` is set. Survives Redis restarts with a backoff."""
        backoff = 0.1
        self.store.warn_if_exposed(log)
        threading.Thread(target=self.release_loop, name="conveyor-release", daemon=True).start()
        while not self.stop.is_set():
            try:
                was_leading, self.leading = self.leading, self.lease.hold()
                health.beat("scheduler", self.turn_within(), "leader" if self.leading else "standby")
                if not self.leading:
                    if was_leading:
                        log.warning("lost the leadership (lease taken by %s)", self.lease.holder())
                    # Sleep until the current lease would expire, then try at once.
                    self.stop.wait(min(self.lease.seconds_left() + 0.002, MAX_BLOCK))
                    continue
                if not was_leading:
                    log.info("leading (fencing token %d, lease %.1fs)", self.lease.token, self.lease.ttl)
                nxt = self.tick(self.clock.now())
                self.engine.move_due()
                soon = self.staging.next_due()
                if soon is not None and self.clock.real_seconds(soon) < HOUSEKEEPING_GAP:
                    pass  # a boundary is near: sweeping and pruning wait until it is past
                elif time.monotonic() - self._swept > REAP_EVERY:
                    self.reaper.lost_attempts()
                    self.reaper.vanished_jobs()
                    self.reaper.sla_misses()
                    self._swept = time.monotonic()
                elif self.history_days and time.monotonic() - self._pruned > PRUNE_EVERY:
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
                self.leading = False
                log.warning("Redis unreachable (%s); retrying in %.1fs", exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        with contextlib.suppress(redis.ConnectionError, redis.TimeoutError, OSError):
            self.lease.release()
