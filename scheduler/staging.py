"""Scheduled runs written ahead of their due time and released onto the queues at it.

Creating a run is tens of microseconds of Lua and more of Python (planning, templating, the RQ
job). Ten thousand DAGs due at the same minute boundary would make the last of them wait seconds.
So the leading scheduler *stages* a run a little ahead (``lookahead``, 60 s by default): the run,
its steps and its root attempts' RQ jobs are written, but the job ids wait in a list per queue and
due time (``{prefix}:staged:QUEUE|DUE``). At the due time ``release.lua`` pushes every due id onto
its RQ queue in a few bulk commands: that is all that happens at the boundary (RQ's own scheduled jobs
work the same way, one job at a time).

A staged run exists before its due time: ``ctl runs`` shows it as ``scheduled``. Pausing the DAG,
submitting a new version of it, or changing calendars or global outages takes back the staged runs
that are not released yet (:func:`unstage`): they are deleted as if never created and the DAG's
cursor moves back, so that the scheduler evaluates those fires again under the new rules.
Part of the store layer (see :mod:`scheduler.store`), like the agenda.
``stage.lua`` refuses a run whose DAG changed since the scheduler read it, so a change racing the
scheduler cannot leave a stale run behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from rq.job import Job

from scheduler.dispatch import Dispatcher, job_id
from scheduler.model import QUEUES
from scheduler.plan import RunPlan
from scheduler.results import Ready
from scheduler.store import RunStore, now_iso

RELEASE_BATCH = 1000  # lists (one per queue and due time) per call


def _roots(plan: RunPlan) -> list[Ready]:
    """The attempts stage.lua queues: attempt 1 of every step without upstream steps."""
    return [Ready(plan.run_id, name, 1, plan.steps[name].queue, plan.steps[name].timeout)
            for name in plan.order if not plan.upstream[name]]


class Staging:
    def __init__(self, store: RunStore, dispatcher: Dispatcher):
        self.store = store
        self.dispatcher = dispatcher
        self._stage = store.script("stage.lua")
        self._release = store.script("release.lua")
        self._pairs = [x for name in QUEUES for x in (name, dispatcher.queues[name].key)]

    def epoch(self) -> str:
        """The scheduling epoch: read it *before* calendars and outages, and stage under it."""
        return self.store.r.get(self.store.keys.sched_epoch()) or "0"

    def stage(self, plans: Iterable[tuple[RunPlan, str, datetime]], epoch: str, *,
              now: datetime | None = None) -> list[str]:
        """Stage each ``(plan, idempotency key, due)``; returns the ids of the runs staged (a fire that
        already has a run, or a DAG that changed meanwhile, stages nothing)."""
        plans = list(plans)
        if not plans:
            return []
        staged_at = now_iso(now)
        # The RQ jobs first: an id released onto a queue always finds its job.
        held: dict[datetime, list[Ready]] = {}
        for plan, _, due in plans:
            held.setdefault(due, []).extend(_roots(plan))
        for due, items in held.items():
            self.dispatcher.hold(items, due)
        with self.store.r.pipeline(transaction=False) as pipe:
            for plan, key, due in plans:
                args = self.store.create_args(plan, key, due)
                args += [f"{due.timestamp():.3f}", plan.dag_version, epoch, staged_at,
                         due.astimezone(UTC).isoformat()]
                self._stage(args=args, client=pipe)
            results = pipe.execute()
        staged, dropped = [], []
        for (plan, _, _), result in zip(plans, results, strict=True):
            if result[0] == "staged":
                staged.append(plan.run_id)
            else:
                dropped += [Job.key_for(job_id(r.run_id, r.step, r.attempt)) for r in _roots(plan)]
        if dropped:
            self.store.r.delete(*dropped)
        return staged

    def release(self, now: datetime) -> int:
        """Push every staged attempt due at ``now`` onto its queue; returns how many."""
        moved = 0
        while True:
            ids, lists = self._release(args=[self.store.prefix, now.timestamp(), RELEASE_BATCH, *self._pairs])
            moved += int(ids)
            if int(lists) < RELEASE_BATCH:
                return moved

    def next_due(self) -> float | None:
        first = self.store.r.zrange(self.store.keys.staged(), 0, 0, withscores=True)
        return first[0][1] if first else None


def unstage(store: RunStore, dags: Iterable[str]) -> int:
    """Take back the DAGs' staged runs that were not released yet; returns how many."""
    script = store.script("unstage.lua")
    with store.r.pipeline(transaction=False) as pipe:
        for dag in dags:
            script(args=[store.prefix, dag, Job.redis_job_namespace_prefix], client=pipe)
        return sum(int(n) for n in pipe.execute())
