"""Every call the server makes to the engine, in one place, so that it can be re-pointed at another
facade in one edit. Each method calls the same function the CLI command calls; nothing here decides a
rule of its own (params, reruns, fire times, backfill intervals all come from the shared modules).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from scheduler import stats as history
from scheduler.agenda import Agenda
from scheduler.engine import Engine, Rerun
from scheduler.errors import ConveyorError, NotFoundError, SpecError
from scheduler.model import DagSpec, Priority, Trigger, run_ended
from scheduler.results import StepCancelStatus
from scheduler.rundiff import diff_runs
from scheduler.runview import log_attempt, run_object, shown_state, status_object
from scheduler.schedules import Schedule
from scheduler.server.errors import BadInput
from scheduler.service import (
    BackfillItem,
    BackfillPlan,
    Reprocess,
    load_version,
    plan_backfill,
    plan_rerun,
    store_calendars,
)
from scheduler.settings import Settings
from scheduler.spec import build_schedule, resolve_params
from scheduler.store import RunStore
from scheduler.upcoming import Upcoming, upcoming


@dataclass(frozen=True)
class Compiled:
    spec: DagSpec | None
    record: dict[str, Any]
    schedule: Schedule | None
    problems: list[str]


class Ops:
    """The engine as the server sees it. Thread-safe: FastAPI calls it from its worker threads."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine = Engine.connect(settings)  # every state change goes through it
        self.store: RunStore = self.engine.store
        self._compiled: dict[tuple[str, int, str], Compiled] = {}
        self._next: dict[tuple[str, int, str], tuple[float, datetime | None]] = {}
        self._lock = threading.Lock()

    # --- health ---------------------------------------------------------------------------------

    def ready(self) -> bool:
        try:
            self.store.ping()
            return True
        except ConveyorError:
            return False

    # --- DAGs -----------------------------------------------------------------------------------

    def _epoch(self) -> str:
        return self.store.sched_epoch()

    def compiled(self, name: str, record: dict[str, Any] | None = None, epoch: str | None = None) -> Compiled:
        """A stored DAG version validated again (as the daemon does), cached per version and calendar epoch;
        a version that no longer validates carries its problems (``file:line:col: message``)."""
        if record is None:  # the trigger path: one round trip when the cached version is still current
            version, current_epoch = self.store.dag_head(name)
            if version is None:
                raise NotFoundError(self.store.unknown_dag(name))
            epoch = epoch or current_epoch
        else:
            version = int(record["version"])
        key = (name, version, epoch or self._epoch())
        with self._lock:
            found = self._compiled.get(key)
        if found is not None:
            return found
        record = record or self.store.dag_version(name, version)
        calendars = store_calendars(self.store)
        try:
            spec, _ = load_version(self.store, name, int(record["version"]), calendars=calendars)
            schedule = build_schedule(spec.document, calendars, Agenda(self.store).global_outages())
            found = Compiled(spec, record, schedule, [])
        except SpecError as exc:
            found = Compiled(None, record, None, [str(p) for p in exc.problems])
        except ConveyorError as exc:
            found = Compiled(None, record, None, [str(exc)])
        with self._lock:
            self._compiled[key] = found
        return found

    def next_fire(self, name: str, compiled: Compiled, epoch: str, now: float) -> datetime | None:
        """The next fire after now, remembered until it passes."""
        if compiled.schedule is None:
            return None
        key = (name, int(compiled.record["version"]), epoch)
        with self._lock:
            cached = self._next.get(key)
        if cached and cached[0] > now:
            return cached[1]
        fires = compiled.schedule.next_fires(datetime.fromtimestamp(now, UTC), n=1)
        at = fires[0].due if fires else None
        with self._lock:
            self._next[key] = (at.timestamp() if at else now + 60, at)
        return at

    def dags(self, last: int = 10) -> list[dict[str, Any]]:
        """Every DAG: version, paused, schedule, next fire, its last runs, and why it fails to load if it does."""
        names = self.store.dag_names()
        summaries = self.store.dag_summaries(names, last)
        import_errors = {e["dag"]: e for e in self.store.import_errors().values() if e.get("dag")}
        epoch, now = self._epoch(), time.time()
        result = []
        for name, (meta, record, runs) in zip(names, summaries, strict=True):
            if record is None:
                continue
            compiled = self.compiled(name, record, epoch)
            paused = meta.get("paused") == "1"
            active = meta.get("deactivated") != "1"
            recent = []
            for run_id, state, created, staged in runs:
                if state is not None:
                    shown = shown_state({"state": state, "staged_due": staged or ""})
                    recent.append({"run_id": run_id, "state": shown, "created_at": created})
            schedule = record["document"].get("schedule") if isinstance(record.get("document"), dict) else None
            nxt = None if paused or not active else self.next_fire(name, compiled, epoch, now)
            problems = compiled.problems or (import_errors[name]["problems"] if name in import_errors else [])
            result.append({
                "name": name, "version": int(record["version"]), "description": record["document"].get(
                    "description", "") if isinstance(record.get("document"), dict) else "",
                "paused": paused, "schedule": schedule,
                "timezone": (schedule or {}).get("timezone", "UTC") if schedule else None,
                "next_fire": nxt.isoformat() if nxt else None,
                "last_run": recent[0] if recent else None, "recent_runs": recent,
                "active": active, "import_error": problems or None, "updated_at": meta.get("updated_at"),
                "scheduler_error": meta.get("error"),
            })
        return result

    def catalog(self) -> dict[str, Any]:
        """``ctl dags -o json``: :func:`scheduler.catalog.dag_rows`."""
        from scheduler.catalog import dag_rows

        rows, orphans = dag_rows(self.store)
        return {"dags": rows, "import_errors": orphans}

    def dag_error(self, name: str) -> tuple[str, str] | None:
        """Why the scheduler cannot evaluate or plan this DAG now, and since when."""
        return self.store.dag_error(name)

    def dag(self, name: str) -> dict[str, Any]:
        """One DAG: the :meth:`dags` entry plus its params, steps and dependencies."""
        if name not in self.store.dag_names():
            raise NotFoundError(self.store.unknown_dag(name))
        entry = next(d for d in self.dags() if d["name"] == name)
        compiled = self.compiled(name)
        spec = compiled.spec
        entry["params"] = [{"name": p.name, "type": p.type, "default": p.default, "required": p.required,
                            "enum": list(p.enum) or None, "description": p.description}
                           for p in (spec.params.values() if spec else ())]
        entry["steps"] = [{"name": s.name, "depends_on": list(s.depends_on), "image": s.image,
                           "trigger_rule": s.trigger_rule} for s in (spec.steps.values() if spec else ())]
        entry["sha256"] = compiled.record.get("sha256")
        entry["git_commit"] = compiled.record.get("git_commit")
        entry["path"] = compiled.record.get("path")
        return entry

    def loadable(self, name: str) -> Compiled:
        compiled = self.compiled(name)
        if compiled.spec is None:
            raise ConveyorError(f"DAG '{name}' does not load: " + "; ".join(compiled.problems))
        return compiled

    def next_fires(self, name: str, count: int = 10, after: datetime | None = None) -> Upcoming:
        """``ctl next DAG``: the same :func:`scheduler.upcoming.upcoming`."""
        calendars = store_calendars(self.store)
        spec, _ = load_version(self.store, name, calendars=calendars)
        return upcoming(spec, calendars, Agenda(self.store).global_outages(), after or datetime.now(UTC), count)

    def set_paused(self, name: str, paused: bool) -> None:
        Agenda(self.store).set_paused(name, paused)

    def emit_dataset(self, name: str, payload: Any, who: str) -> dict[str, Any]:
        """``ctl dataset emit``: an event of a dataset from outside Conveyor."""
        return self.engine.emit_dataset(name, payload, source=who)

    # --- runs -----------------------------------------------------------------------------------

    def trigger(self, dag: str, params: Mapping[str, Any], priority: Priority | None = None) -> str:
        """``ctl trigger``: a manual run (params typed and checked by the shared resolver). The DAG version
        validated once and kept (as the daemon keeps it), not re-validated per request."""
        compiled = self.compiled(dag)
        if compiled.spec is None:  # let the shared path raise the version's own problems
            return self.engine.create_run(dag, params, trigger=Trigger.MANUAL, priority=priority)
        return self.engine.create_run_of(compiled.spec, compiled.record, params, trigger=Trigger.MANUAL,
                                         priority=priority)

    def runs(self, dag: str | None = None, state: str | None = None, limit: int = 50,
             cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Runs newest first, ``limit`` at a time; the cursor is the last run's ``score:run_id``."""
        if dag and dag not in self.store.dag_names():
            raise NotFoundError(self.store.unknown_dag(dag))
        top: float | str = "+inf"
        after_id = None
        if cursor:
            try:
                mark, after_id = cursor.split(":", 1)
                top = float(mark)
            except ValueError:
                raise BadInput(f"invalid cursor {cursor!r}: pass the next_cursor of the previous page") from None
        found: list[dict[str, Any]] = []
        last: tuple[float | str, str] | None = None
        offset, batch = 0, max(limit * 2, 50)
        while len(found) < limit:
            chunk = self.store.runs_page(dag, top, offset, batch)
            if not chunk:
                break
            offset += len(chunk)
            for run_id, score, record in chunk:
                if after_id is not None and score == top and run_id >= after_id:
                    continue  # at the cursor's own score: members after it in reverse order only
                if not record:
                    continue
                last = (score, run_id)
                item = run_object(record)
                if state and item["state"] != state:
                    continue
                found.append(item)
                if len(found) == limit:
                    break
        more = len(found) == limit and last is not None
        return found, f"{last[0]!r}:{last[1]}" if more and last else None

    def grid(self, dag: str, limit: int = 25) -> list[dict[str, Any]]:
        """The DAG's last runs, each with every step's state (oldest first, for the grid view)."""
        return [self.status(run_id) for run_id in reversed(self.store.run_ids(dag, limit))]

    def status(self, run_id: str) -> dict[str, Any]:
        """``ctl status RUN -o json``."""
        return status_object(self.store, run_id)

    def previous_run(self, run_id: str) -> str | None:
        """The run of the same DAG created just before this one (what "compare with previous" diffs)."""
        return self.store.previous_run(self.store.run_record(run_id)["dag"], run_id)

    def step_plans(self, run_id: str) -> dict[str, list[str]]:
        """Each step's direct upstream steps in this run (from the run's own pinned plan)."""
        return self.store.step_upstreams(run_id, json.loads(self.store.run_record(run_id)["steps"]))

    def rerun(self, run_id: str, *, step: str | None = None, downstream: bool = True, everything: bool = False,
              latest: bool = False) -> Rerun:
        """``ctl rerun``: the same selection (:func:`scheduler.service.plan_rerun`) and transition."""
        chosen = plan_rerun(self.store, run_id, step=step, downstream=downstream, everything=everything,
                            latest=latest)
        self.engine.rerun(chosen)
        return chosen

    def cancel(self, run_id: str, step: str | None = None) -> dict[str, Any]:
        """``ctl cancel [--step]``: ``ended`` is True when there was nothing left to cancel."""
        if step is not None:
            done = self.engine.cancel_step(run_id, step)
            return {"run_id": run_id, "step": step, "state": done.status.value,
                    "ended": done.status is StepCancelStatus.DONE}
        result = self.engine.cancel(run_id)
        return {"run_id": run_id, "state": result.state, "stopping": result.running, "ended": result.already_ended}

    # --- logs -----------------------------------------------------------------------------------

    def log_attempt(self, run_id: str, step: str, attempt: int | None = None) -> int:
        return log_attempt(self.store, run_id, step, attempt)

    def read_log(self, run_id: str, step: str, attempt: int, offset: int = 0) -> bytes:
        return self.store.read_log(run_id, step, attempt, offset)

    def attempt_ended(self, run_id: str, step: str, attempt: int) -> bool:
        """Has this attempt ended (or been superseded)? A follow of its log stops then."""
        return self.store.attempt_ended(run_id, step, attempt)

    # --- backfill -------------------------------------------------------------------------------

    def backfill_plan(self, dag: str, start: date | datetime, end: date | datetime, *, batch: str | None = None,
                      schedule_aligned: bool = False, reprocess: Reprocess = Reprocess.none,
                      backwards: bool = False) -> BackfillPlan:
        return plan_backfill(self.store, dag, start, end, batch=batch, schedule_aligned=schedule_aligned,
                             reprocess=reprocess, backwards=backwards)

    def backfill(self, plan: BackfillPlan, params: Mapping[str, Any], priority: Priority = Priority.LOW,
                 max_active_runs: int | None = None) -> list[str]:
        """Create the plan's runs; with ``max_active_runs`` only that many now, the rest by a feeder thread
        as runs end (as ``ctl backfill`` would while it waits)."""
        todo = plan.todo
        resolve_params(plan.spec, params)  # checked up front: a bad param creates nothing
        first = todo if max_active_runs is None else todo[:max_active_runs]
        created = [self._create_interval_run(plan, item, params, priority) for item in first]
        rest = todo[len(first):]
        if rest:
            threading.Thread(target=self._feed, args=(plan, rest, params, priority, max_active_runs, created),
                             daemon=True, name=f"backfill-{plan.dag}").start()
        return created

    def _create_interval_run(self, plan: BackfillPlan, item: BackfillItem, params: Mapping[str, Any],
                             priority: Priority) -> str:
        item.run_id = self.engine.create_run_of(plan.spec, plan.record, params, trigger=Trigger.BACKFILL,
                                                priority=priority, logical_date=item.logical_date,
                                                interval=(item.start, item.end))
        return item.run_id

    def _feed(self, plan: BackfillPlan, pending: list[Any], params: Mapping[str, Any], priority: Priority,
              limit: int | None, created: list[str]) -> None:
        created = list(created)
        while pending:
            running = [rid for rid, state in self.store.run_states(created).items() if not run_ended(state)]
            while pending and (limit is None or len(running) < limit):
                run_id = self._create_interval_run(plan, pending.pop(0), params, priority)
                created.append(run_id)
                running.append(run_id)
            time.sleep(0.5)

    # --- history --------------------------------------------------------------------------------

    def stats(self, dag: str | None, since: float, by: str = "dag", top: int = 5) -> dict[str, Any]:
        """``ctl stats``."""
        history.check_by(by)
        if dag and dag not in self.store.dag_names():
            raise NotFoundError(self.store.unknown_dag(dag))
        return history.report(history.load(self.store, since, dag), by, now=time.time(), since=since, top=top)

    def diff(self, a: str, b: str) -> dict[str, Any]:
        """``ctl diff``."""
        return diff_runs(self.status(a), self.status(b))


