"""Nobody cleans up by hand: lost attempts are retried, vanished jobs re-enqueued, orphans removed.

Three sweeps, each safe to run from any number of processes at once (every change is a fenced
Lua script, and enqueueing an attempt twice is a no-op):

1. **Adopted or lost attempts.** A worker renews the lease of the attempt it runs every third of
   the lease TTL. When a lease expired by Redis's clock (its worker was killed, froze, or lost
   Redis), a worker's sweep first looks for the attempt's container on its engine (the
   ``adopter``, see ``runner/adoption.py``): if it is still there, the worker *adopts* it (the
   same attempt, leased to it, followed to its end: nothing runs twice). Only when the container
   is gone is the attempt declared lost: at once by a worker on the engine that ran it, and by
   anyone else (another engine, the scheduler) only ``adopt_grace`` seconds after the expiry
   (``CONVEYOR_ADOPT_GRACE``, default 30 s), the bound for an engine unreachable from every
   worker. A lost attempt counts as a failed try unless ``CONVEYOR_LOST_COUNTS=0``, and the step
   is retried like any failure. A late result from the lost attempt is then ignored.
2. **Vanished jobs.** A queued attempt whose RQ job does not exist (a crash between the state
   change and the enqueue, a Redis failover) is enqueued again.
3. **Orphan containers** on this worker's engine: a container labelled with our prefix whose
   attempt holds no lease (its worker died) is removed.

Workers run the sweeps in a thread every few seconds; the scheduler's leader runs the first two.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol

import redis
from rq.job import Job

from scheduler.dispatch import job_id
from scheduler.engine import Engine
from scheduler.errors import NotFoundError
from scheduler.store import RunStore, parse_member

log = logging.getLogger("conveyor.reaper")
INTERVAL = 2.0
QUEUED_GRACE = 30.0  # seconds a queued attempt may sit without its RQ job before it is enqueued again
ORPHAN_GRACE = 30.0  # seconds after its attempt ended before a leftover container is the reaper's
ADOPT_GRACE = 30.0  # seconds after a lease's expiry before a sweeper that cannot see the container declares it lost


def adopt_grace_from_env() -> float:
    return float(os.environ.get("CONVEYOR_ADOPT_GRACE") or ADOPT_GRACE)


class Sighting(StrEnum):
    """What an adopter found for an attempt whose lease expired."""

    ADOPTED = "adopted"  # its container is there and this worker now follows it
    GONE = "gone"  # no container on the engine that ran it: the attempt is lost
    UNSEEN = "unseen"  # cannot tell (another engine, the engine unreachable): leave it to the grace
    BUSY = "busy"  # someone holds it (this process, or another adopter was first): leave it


class Adopter(Protocol):
    """Looks for an expired attempt's container and adopts it (``runner.adoption.Adopter``)."""

    def consider(self, entry: str) -> Sighting: ...


@dataclass
class Reaper:
    engine: Engine
    runtime: object | None = None  # a ContainerRuntime with orphans()/reap(), for sweep 3
    lost_counts: bool = True
    adopter: Adopter | None = None  # workers only: the scheduler sees no engine
    adopt_grace: float = field(default_factory=adopt_grace_from_env)
    queued_grace: float = QUEUED_GRACE
    stop: threading.Event = field(default_factory=threading.Event)
    adopted: int = 0  # attempts the last sweep adopted

    @property
    def store(self) -> RunStore:
        return self.engine.store

    def once(self) -> dict[str, int]:
        return {"lost": self.lost_attempts(), "adopted": self.adopted, "requeued": self.vanished_jobs(),
                "orphans": self.orphans(), "sla_misses": self.sla_misses()}

    def sla_misses(self) -> int:
        """SLAs and deadlines that fell due unmet: recorded once, and their on_sla_miss handlers started."""
        misses = self.engine.sweep_slas()
        for miss in misses:
            what = f"step {miss.step}" if miss.step else "the run's deadline"
            log.warning("%s: %s missed its SLA", miss.run_id, what)
        return len(misses)

    def lost_attempts(self) -> int:
        """Adopt what can be adopted; declare lost what cannot (see the module's docstring)."""
        count = 0
        self.adopted = 0
        for entry in self.store.expired():
            run_id, step, attempt = parse_member(entry)
            grace, why = self.adopt_grace, "no worker could see its container"
            if self.adopter is not None:
                sighting = self.adopter.consider(entry)
                if sighting is Sighting.ADOPTED:
                    self.adopted += 1
                    continue
                if sighting is Sighting.BUSY:
                    continue
                if sighting is Sighting.GONE:
                    grace, why = 0.0, "its container is gone"
            try:
                backoff = self.store.step_plan(run_id, step).backoff
            except NotFoundError:
                backoff = None
            delay = backoff.delay(attempt) if backoff else 0.0
            finished = self.engine.lose(entry, retry_delay=delay, counts=self.lost_counts, grace=grace)
            if not finished.changed:
                continue
            count += 1
            log.warning("%s %s attempt %d lost (its worker stopped renewing the lease and %s): %s", run_id, step,
                        attempt, why, finished.state)
        return count

    def vanished_jobs(self) -> int:
        count = 0
        connection = self.engine.dispatcher.connection
        for run_id, step, attempt in self.store.overdue_queued(self.queued_grace):
            if Job.exists(job_id(run_id, step, attempt), connection=connection):
                continue
            requeued = self.engine.requeue(run_id, step, attempt)
            if requeued:
                count += requeued
                log.warning("%s %s attempt %d was queued without a job: enqueued again", run_id, step, attempt)
        return count

    def orphans(self) -> int:
        finder = getattr(self.runtime, "orphans", None)
        if finder is None:
            return 0
        live = self.store.running_attempts()
        mine = self.store.store_id
        leftovers = [x for x in finder(self.store.prefix, live) if x.labels.get("dev.conveyor.store") == mine]
        if leftovers:
            # Look again: an attempt that started between the two reads is live, not an orphan.
            live |= self.store.running_attempts()
            leftovers = [x for x in leftovers if x.key not in live]
            # The container of an attempt that ended a moment ago is its worker's to remove (after the
            # result is recorded): not an orphan yet.
            now = datetime.now(UTC)
            leftovers = [x for x in leftovers if not self._just_ended(x.run_id, x.step, x.attempt, now)]
            self.runtime.reap([x.id for x in leftovers])  # type: ignore[attr-defined]
            for x in leftovers:
                log.warning("removed orphan container %s of %s %s attempt %d", x.id[:12], x.run_id, x.step, x.attempt)
        return len(leftovers)

    def _just_ended(self, run_id: str, step: str, attempt: int, now: datetime) -> bool:
        ended = self.store.attempt_ended_at(run_id, step, attempt)
        return ended is not None and (now - ended).total_seconds() < ORPHAN_GRACE

    def run_in_thread(self, interval: float = INTERVAL) -> threading.Thread:
        def loop() -> None:
            while not self.stop.wait(interval * random.uniform(0.75, 1.25)):
                try:
                    self.once()
                except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OSError) as exc:
                    # (ReadOnlyError: a replica answered during a failover, before clients moved on)
                    log.warning("reaper: Redis or the engine is unreachable (%s); trying again", exc)
                except Exception:
                    log.exception("reaper: sweep failed")

        thread = threading.Thread(target=loop, name="conveyor-reaper", daemon=True)
        thread.start()
        return thread
