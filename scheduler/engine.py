"""The engine: every state transition, and the enqueueing of what it made ready, in one call.

A transition (a Lua script of the store) returns the attempts that became ready; they must reach
RQ or the steps wait for the reconciler. So no caller gets them: :class:`Engine` performs the
transition and hands the ready attempts to the dispatcher itself (as huey's ``_execute`` and
rq's ``enqueue_dependents`` do). The CLI, the scheduler daemon, the workers, the reaper and the
HTTP server all change state through it, and only through it.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from scheduler.dispatch import Dispatcher
from scheduler.errors import ParamError
from scheduler.gcpause import paused_gc
from scheduler.model import DagSpec, Priority, StepState, Trigger
from scheduler.plan import RunPlan, plan_run
from scheduler.results import Adopted, Created, Finished, Ready, RunCancel, SlaMiss, Started, StepCancel
from scheduler.settings import Settings
from scheduler.spec import resolve_params
from scheduler.store import RunStore

MAX_PARAMS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Rerun:
    """What a rerun runs (see :func:`scheduler.service.plan_rerun`): steps in topological order and,
    per step, the plan to run it with when it changes (pinned image ids, or ``--latest`` plans)."""

    run_id: str
    steps: list[str]
    plans: Mapping[str, Any]  # step -> StepPlan
    notes: list[str]
    version: int | None = None  # the DAG version the rerun uses, when pinned
    resume: bool = False  # the steps find their last saved checkpoints (ctl rerun --resume)


class Engine:
    """State transitions over one store and one dispatcher. Cheap to build; holds no state."""

    def __init__(self, store: RunStore, dispatcher: Dispatcher):
        self.store = store
        self.dispatcher = dispatcher

    @classmethod
    def connect(cls, settings: Settings) -> Engine:
        store = RunStore.connect(settings)
        return cls(store, Dispatcher(settings.connect(decode=False), settings.prefix))

    def _enqueue(self, ready: tuple[Ready, ...] | list[Ready]) -> None:
        if ready:
            self.dispatcher.enqueue(ready)

    # --- runs -------------------------------------------------------------------------------------

    def create_run(self, dag: str, given_params: Mapping[str, Any], *, version: int | None = None,
                   **options: Any) -> str:
        """A run of the DAG's latest (or given) version, its ready steps enqueued; returns its id (the
        existing run's id when ``idempotency_key`` was used before). Options as :meth:`create_run_of`."""
        from scheduler.service import load_version

        spec, record = load_version(self.store, dag, version)
        return self.create_run_of(spec, record, given_params, **options)

    def create_run_of(
        self,
        spec: DagSpec,
        record: Mapping[str, Any],
        given_params: Mapping[str, Any],
        *,
        trigger: Trigger = Trigger.MANUAL,
        priority: Priority | None = None,
        logical_date: datetime | None = None,
        interval: tuple[datetime | None, datetime | None] = (None, None),
        now: datetime | None = None,
        idempotency_key: str | None = None,
        due_at: datetime | None = None,
        only: Collection[str] = (),
        datasets: str = "[]",
    ) -> str:
        """:meth:`create_run` for a DAG version already loaded (the daemon keeps them compiled). ``only``:
        run just these steps, their upstream treated as succeeded (:func:`scheduler.plan.assume`)."""
        params = resolve_params(spec, given_params)
        size = len(json.dumps(params))
        if size > MAX_PARAMS_BYTES:  # one bad run must not fill Redis: every step plan carries the params
            raise ParamError(f"{spec.name}: the params take {size:,} bytes; the limit is {MAX_PARAMS_BYTES:,}")
        with paused_gc():  # a large DAG's plan is millions of objects (scheduler/gcpause.py)
            plan = plan_run(
                spec, version=record["version"], params=params, now=now or datetime.now(UTC), trigger=trigger,
                priority=priority, logical_date=logical_date, interval=interval, only=only, datasets=datasets,
                provenance={"dag_sha256": record["sha256"], "git_commit": record.get("git_commit"),
                            "git_dirty": record.get("git_dirty"), "dag_path": record.get("path"),
                            **({"due_at": due_at.isoformat()} if due_at else {})},
            )
            created = self.store.create_run(plan, idempotency_key=idempotency_key)
        self._enqueue(created.ready)
        return created.run_id

    def emit_dataset(self, name: str, payload: Any = None, *, source: str = "") -> dict[str, Any]:
        """An external producer's event of a dataset (``dataset_emit.lua``); its consumers are the
        scheduler's to trigger. Returns the event."""
        return self.store.emit_dataset(name, payload, source=source)

    def consume_datasets(self, dag: str, seen: Mapping[str, int]) -> None:
        """The DAG's dataset-triggered run for these events exists: they are consumed (only forward)."""
        self.store.mark_datasets_seen(dag, seen)

    def create_planned(self, plans: list[tuple[RunPlan, str | None]]) -> list[Created]:
        """Runs already planned (the scheduler's due fires), in one round trip, each atomic on its own."""
        created = self.store.create_runs(plans)
        self._enqueue([item for c in created for item in c.ready])
        return created

    def cancel(self, run_id: str, *, now: datetime | None = None) -> RunCancel:
        result = self.store.cancel_run(run_id, now=now)
        self._enqueue(result.ready)  # other runs' slots (max_active_runs, pools), 'always' steps
        return result

    def cancel_step(self, run_id: str, step: str, *, now: datetime | None = None) -> StepCancel:
        result = self.store.cancel_step(run_id, step, now=now)
        self._enqueue(result.ready)
        return result

    def rerun(self, rerun: Rerun, *, now: datetime | None = None) -> None:
        self._enqueue(self.store.rerun(rerun.run_id, rerun.steps, plans=rerun.plans, now=now,
                                            resume=rerun.resume))

    def set_pool(self, name: str, slots: int | None) -> None:
        """Define, resize or (``None``) remove a pool; waiting steps that now fit are enqueued."""
        self._enqueue(self.store.set_pool(name, slots))

    # --- attempts (workers) -----------------------------------------------------------------------

    def start(self, run_id: str, step: str, attempt: int, *, host: str, pid: int, worker: str,
              lease: float, engine_id: str = "") -> Started:
        return self.store.start_attempt(run_id, step, attempt, host=host, pid=pid, worker=worker, lease=lease,
                                        engine_id=engine_id)

    def finish(self, run_id: str, step: str, attempt: int, outcome: str, record: Mapping[str, Any], *,
               retry_delay: float = 0.0, now: datetime | None = None, holder: str = "") -> Finished:
        finished = self.store.finish_attempt(run_id, step, attempt, outcome, record, retry_delay=retry_delay,
                                             now=now, holder=holder)
        self._enqueue(finished.ready)
        return finished

    def poke(self, run_id: str, step: str, attempt: int, *, interval: float, timeout: float | None, since: float,
             record: Mapping[str, Any], retry_delay: float = 0.0, holder: str = "") -> Finished:
        """A sensor is not ready yet: its attempt waits in Redis and is delivered again after ``interval``
        (or fails with ``sensor_timeout``); no worker is held in between."""
        finished = self.store.poke(run_id, step, attempt, interval=interval, timeout=timeout, since=since,
                                   record=record, retry_delay=retry_delay, holder=holder)
        self._enqueue(finished.ready)
        return finished

    def wait(self, run_id: str, step: str, attempt: int) -> Finished | None:
        """A step with ``wait_for`` about to start: None when what it waits for holds (start it); else its
        attempt waits in Redis, holding no worker, and is delivered again to check (or it failed with
        ``wait_timeout``)."""
        waited = self.store.wait_check(run_id, step, attempt)
        if waited is not None:
            self._enqueue(waited.ready)
        return waited

    def skip(self, run_id: str, step: str, attempt: int) -> Finished:
        """Skip a queued step whose ``when:`` is false; its downstream follow their trigger rules."""
        finished = self.store.skip_step(run_id, step, attempt)
        self._enqueue(finished.ready)
        return finished

    def defer(self, run_id: str, step: str, attempt: int, until: datetime, *, now: datetime) -> None:
        """Deliver a queued attempt again at ``until`` (a global outage holds it back until then)."""
        queue, timeout = self.store.queue_of(run_id, step)
        self._enqueue([Ready(run_id, step, attempt, queue, timeout, delay=(until - now).total_seconds(),
                             tag=f"after-{int(until.timestamp())}")])
        self.store.postpone_queued(run_id, step, attempt, until)

    # --- sweeps (reaper, scheduler) ---------------------------------------------------------------

    def adopt(self, entry: str, *, adopter: str, lease: float, container_id: str = "") -> Adopted:
        """Take over a running attempt whose worker died, its container still there (``adopt.lua``): the
        same attempt goes on under ``adopter``; nothing is enqueued, nothing runs again."""
        return self.store.adopt(entry, adopter=adopter, lease=lease, container_id=container_id)

    def hand_over(self, run_id: str, step: str, attempt: int, holder: str) -> bool:
        """A stopping worker lets go of its running attempt for another worker to adopt (``hand_over.lua``)."""
        return self.store.hand_over(run_id, step, attempt, holder)

    def lose(self, entry: str, *, retry_delay: float = 0.0, counts: bool = True, grace: float = 0.0) -> Finished:
        finished = self.store.lose(entry, retry_delay=retry_delay, counts=counts, grace=grace)
        self._enqueue(finished.ready)
        return finished

    def sweep_slas(self) -> list[SlaMiss]:
        misses = self.store.missed_slas()
        self._enqueue([item for miss in misses for item in miss.ready])
        return misses

    def requeue(self, run_id: str, step: str, attempt: int) -> int:
        """Enqueue a queued attempt again (its RQ job vanished); a no-op if it moved on meanwhile."""
        state, current = self.store.step_fields(run_id, step, "state", "attempt")
        if state not in {StepState.QUEUED, StepState.RETRYING, StepState.WAITING} or current != str(attempt):
            return 0
        queue, timeout = self.store.queue_of(run_id, step)
        return self.dispatcher.enqueue([Ready(run_id, step, attempt, queue, timeout)])

    def move_due(self) -> int:
        """Enqueue the delayed attempts that are due (retries after their backoff, deferred steps)."""
        return self.dispatcher.move_due()
