"""Nobody cleans up by hand: lost attempts are retried, vanished jobs re-enqueued, orphans removed.

Three sweeps, each safe to run from any number of processes at once (every change is a fenced
Lua script, and enqueueing an attempt twice is a no-op):

1. **Lost attempts.** A worker renews the lease of the attempt it runs every third of the lease
   TTL. An attempt whose lease expired by Redis's clock (its worker was killed, froze, or lost
   Redis) is declared lost: it counts as a failed try unless ``CONVEYOR_LOST_COUNTS=0``, and the
   step is retried like any failure. A late result from the lost attempt is then ignored.
2. **Vanished jobs.** A queued attempt whose RQ job does not exist (a crash between the state
   change and the enqueue, a Redis failover) is enqueued again.
3. **Orphan containers** on this worker's engine: a container labelled with our prefix whose
   attempt holds no lease (its worker died) is removed.

Workers run the sweeps in a thread every few seconds; the scheduler's leader runs the first two.
"""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass, field

import redis
from rq.job import Job

from scheduler.dispatch import job_id
from scheduler.engine import Engine
from scheduler.errors import NotFoundError
from scheduler.store import RunStore, parse_member

log = logging.getLogger("conveyor.reaper")
INTERVAL = 2.0
QUEUED_GRACE = 30.0  # seconds a queued attempt may sit without its RQ job before it is enqueued again


@dataclass
class Reaper:
    engine: Engine
    runtime: object | None = None  # a ContainerRuntime with orphans()/reap(), for sweep 3
    lost_counts: bool = True
    queued_grace: float = QUEUED_GRACE
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def store(self) -> RunStore:
        return self.engine.store

    def once(self) -> dict[str, int]:
        return {"lost": self.lost_attempts(), "requeued": self.vanished_jobs(), "orphans": self.orphans(),
                "sla_misses": self.sla_misses()}

    def sla_misses(self) -> int:
        """SLAs and deadlines that fell due unmet: recorded once, and their on_sla_miss handlers started."""
        misses = self.engine.sweep_slas()
        for miss in misses:
            what = f"step {miss.step}" if miss.step else "the run's deadline"
            log.warning("%s: %s missed its SLA", miss.run_id, what)
        return len(misses)

    def lost_attempts(self) -> int:
        count = 0
        for entry in self.store.expired():
            run_id, step, attempt = parse_member(entry)
            try:
                backoff = self.store.step_plan(run_id, step).backoff
            except NotFoundError:
                backoff = None
            delay = backoff.delay(attempt) if backoff else 0.0
            finished = self.engine.lose(entry, retry_delay=delay, counts=self.lost_counts)
            if not finished.changed:
                continue
            count += 1
            log.warning("%s %s attempt %d lost (its worker stopped renewing the lease): %s", run_id, step, attempt,
                        finished.state)
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
            self.runtime.reap([x.id for x in leftovers])  # type: ignore[attr-defined]
            for x in leftovers:
                log.warning("removed orphan container %s of %s %s attempt %d", x.id[:12], x.run_id, x.step, x.attempt)
        return len(leftovers)
    def run_in_thread(self, interval: float = INTERVAL) -> threading.Thread:
        def loop() -> None:
            while not self.stop.wait(interval * random.uniform(0.75, 1.25)):
                try:
                    self.once()
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    log.warning("reaper: Redis or the engine is unreachable (%s); trying again", exc)
                except Exception:
                    log.exception("reaper: sweep failed")

        thread = threading.Thread(target=loop, name="conveyor-reaper", daemon=True)
        thread.start()
        return thread
