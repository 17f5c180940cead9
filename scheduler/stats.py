"""Run history: statistics over runs, steps and attempts (``ctl stats``) and retention (:func:`prune`).

:func:`load` reads records from the store; :func:`report` is pure over them (and takes ``now``).

Definitions (docs/operations.md repeats them):

- **failure rate**: failed / (success + failed) units, where a unit is a run (``--by dag``), a step of
  a run (``--by step``, ``--by tag:KEY``) or an attempt (``--by host``; ``lost`` counts as failed).
  Cancelled units and ``upstream_failed`` steps never had a fair chance and count in neither.
- **retries**: attempts after a step's first (a retry after a failure, a lost worker or a hand-back).
- **p50 / p95**: of successful units' durations (started to ended), linear interpolation.
- **too long** (:func:`slow_attempts`): an attempt of a step, compared with that step's *earlier*
  successful attempts (the last ``HISTORY`` of them, at least ``MIN_SAMPLES``), is too long when it
  took more than ``max(FACTOR x p95, p50 + MADS x MAD)`` and at least ``MIN_EXCESS`` seconds more
  than p50. Running attempts are judged on their time so far; an attempt found too long does not
  join the history (one slow day does not hide the next).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from scheduler.model import run_ended
from scheduler.store import RunStore

MIN_SAMPLES = 5
HISTORY = 100
FACTOR = 2.0
MADS = 3.0
MIN_EXCESS = 1.0  # seconds: a 20 ms step taking 60 ms is not worth anyone's attention
DIMENSIONS = ("dag", "step", "host")


@dataclass(frozen=True)
class Attempt:
    number: int
    state: str
    host: str
    started: float | None
    ended: float | None

    def duration(self, now: float | None = None) -> float | None:
        if self.started is None:
            return None
        end = self.ended if self.ended is not None else now
        return None if end is None else max(0.0, end - self.started)


@dataclass(frozen=True)
class Step:
    name: str
    state: str
    tags: dict[str, str] = field(default_factory=dict)
    attempts: tuple[Attempt, ...] = ()
    sla_missed: bool = False


@dataclass(frozen=True)
class Run:
    run_id: str
    dag: str
    state: str
    created: float
    started: float | None = None
    ended: float | None = None
    steps: tuple[Step, ...] = ()
    deadline_missed: bool = False

    @property
    def duration(self) -> float | None:
        return None if self.started is None or self.ended is None else max(0.0, self.ended - self.started)


# --- reading ------------------------------------------------------------------------------------


def since_epoch(value: str, *, now: float | None = None) -> float:
    """``ctl stats --since`` and the API's ``since``: ``7d``/``12h`` back from now, or a date/time (UTC
    unless it has an offset), as epoch seconds. A value that is neither is an InputError."""
    from scheduler.durations import DurationError, parse_duration
    from scheduler.errors import InputError

    try:
        return (time.time() if now is None else now) - parse_duration(value).total_seconds()
    except DurationError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"since: {value!r} is neither a duration (7d, 12h) nor a date/time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _epoch(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _tag_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def load(store: RunStore, since: float, dag: str | None = None, chunk: int = 200) -> list[Run]:
    """Runs created at or after ``since`` (epoch seconds), oldest first, with steps and attempts.
    Three pipelined round trips per ``chunk`` runs."""
    ids = store.run_ids_since(since, dag)
    runs: list[Run] = []
    for offset in range(0, len(ids), chunk):
        part = ids[offset:offset + chunk]
        loaded = store.runs_with_steps([run_id for run_id, _ in part])
        for (run_id, created), (record, steps) in zip(part, loaded, strict=True):
            built = []
            for step in steps:
                attempts = step["attempts"]
                built.append(Step(
                    step.get("name", ""), step.get("state", ""),
                    {str(k): _tag_value(v) for k, v in (step.get("tags") or {}).items()},
                    tuple(Attempt(int(a.get("number") or 0), a.get("state", ""), a.get("host") or "",
                                  _epoch(a.get("started_at")), _epoch(a.get("ended_at"))) for a in attempts if a),
                    bool(step.get("sla_missed")),
                ))
            if record:
                runs.append(Run(run_id, record.get("dag", ""), record.get("state", ""), float(created),
                                _epoch(record.get("started_at")), _epoch(record.get("ended_at")), tuple(built),
                                bool(record.get("deadline_missed"))))
    return runs


# --- statistics (pure) --------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation between closest ranks; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mad(values: Sequence[float]) -> float:
    """Median absolute deviation (unscaled)."""
    median = percentile(values, 50) or 0.0
    return percentile([abs(v - median) for v in values], 50) or 0.0


def threshold(history: Sequence[float]) -> float | None:
    """How long is too long after this history of successful durations; None below MIN_SAMPLES."""
    if len(history) < MIN_SAMPLES:
        return None
    p50, p95 = percentile(history, 50) or 0.0, percentile(history, 95) or 0.0
    return max(FACTOR * p95, p50 + MADS * mad(history), p50 + MIN_EXCESS)


@dataclass
class _Group:
    count: int = 0
    failed: int = 0
    succeeded: int = 0
    retries: int = 0
    durations: list[float] = field(default_factory=list)

    def add(self, state: str, duration: float | None, failed_states: Iterable[str] = ("failed",)) -> None:
        if state == "success":
            self.count += 1
            self.succeeded += 1
            if duration is not None:
                self.durations.append(duration)
        elif state in failed_states:
            self.count += 1
            self.failed += 1

    def to_json(self, key: str) -> dict[str, Any]:
        return {
            "key": key, "count": self.count, "failed": self.failed,
            "failure_rate": round(self.failed / self.count, 4) if self.count else None,
            "retries": self.retries,
            "p50_seconds": _round(percentile(self.durations, 50)),
            "p95_seconds": _round(percentile(self.durations, 95)),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _last_duration(step: Step) -> float | None:
    return step.attempts[-1].duration() if step.attempts else None


def group(runs: Iterable[Run], by: str) -> list[dict[str, Any]]:
    """One row per dag, ``dag.step``, host or tag value (``tag:KEY``), the most failures first."""
    groups: dict[str, _Group] = defaultdict(_Group)
    tag = by.removeprefix("tag:") if by.startswith("tag:") else None
    for run in runs:
        if by == "dag":
            g = groups[run.dag]
            if run_ended(run.state):
                g.add(run.state, run.duration)
            g.retries += sum(max(0, len(s.attempts) - 1) for s in run.steps)
            continue
        for step in run.steps:
            if by == "host":
                for a in step.attempts:
                    g = groups[a.host or "(none)"]
                    g.add(a.state, a.duration(), ("failed", "lost"))
                    g.retries += int(a.number > 1)
                continue
            if tag is not None:
                if tag not in step.tags:
                    continue
                key = step.tags[tag]
            else:
                key = f"{run.dag}.{step.name}"
            g = groups[key]
            g.add(step.state, _last_duration(step))
            g.retries += max(0, len(step.attempts) - 1)
    rows = [g.to_json(key) for key, g in groups.items()]
    return sorted(rows, key=lambda r: (-r["failed"], -(r["failure_rate"] or 0), r["key"]))


def slow_attempts(runs: Iterable[Run], now: float) -> list[dict[str, Any]]:
    """Attempts that took far longer than their step's own history (see the module's docstring)."""
    by_step: dict[tuple[str, str], list[tuple[Run, Attempt]]] = defaultdict(list)
    for run in runs:
        for step in run.steps:
            for a in step.attempts:
                if a.started is not None:
                    by_step[(run.dag, step.name)].append((run, a))
    found = []
    for (dag, step_name), attempts in by_step.items():
        history: list[float] = []
        for run, a in sorted(attempts, key=lambda item: item[1].started or 0.0):
            took = a.duration(now)
            limit = threshold(history[-HISTORY:])
            if took is not None and limit is not None and took > limit:
                window = history[-HISTORY:]
                found.append({
                    "run_id": run.run_id, "dag": dag, "step": step_name, "attempt": a.number, "state": a.state,
                    "host": a.host or None, "seconds": round(took, 3), "threshold_seconds": round(limit, 3),
                    "p50_seconds": _round(percentile(window, 50)), "p95_seconds": _round(percentile(window, 95)),
                    "samples": len(window), "ratio": round(took / (percentile(window, 50) or 1e-9), 1),
                    "started_at": datetime.fromtimestamp(a.started or 0, UTC).isoformat(),
                })
                continue  # an outlier does not become the norm for the next attempts
            if a.state == "success" and took is not None:
                history.append(took)
    return sorted(found, key=lambda f: -f["ratio"])


def failing_hosts(runs: Iterable[Run], top: int = 5) -> list[dict[str, Any]]:
    rows = [r for r in group(runs, "host") if r["failed"]]
    return [{"host": r["key"], "failures": r["failed"], "attempts": r["count"], "failure_rate": r["failure_rate"]}
            for r in rows[:top]]


def failing_tags(runs: Iterable[Run], top: int = 5) -> list[dict[str, Any]]:
    """Tag values (every key) whose steps failed most."""
    runs = list(runs)
    keys = sorted({k for run in runs for step in run.steps for k in step.tags})
    rows = []
    for key in keys:
        for row in group(runs, f"tag:{key}"):
            if row["failed"]:
                rows.append({"tag": key, "value": row["key"], "failures": row["failed"], "steps": row["count"],
                             "failure_rate": row["failure_rate"]})
    return sorted(rows, key=lambda r: (-r["failures"], -(r["failure_rate"] or 0)))[:top]


def report(runs: Sequence[Run], by: str = "dag", *, now: float, since: float, top: int = 5) -> dict[str, Any]:
    """Everything ``ctl stats`` shows, as plain data."""
    states: dict[str, int] = defaultdict(int)
    for run in runs:
        states[run.state] += 1
    return {
        "since": datetime.fromtimestamp(since, UTC).isoformat(timespec="seconds"),
        "runs": len(runs),
        "run_states": dict(sorted(states.items())),
        "by": by,
        "groups": group(runs, by),
        "slow_attempts": slow_attempts(runs, now),
        "failing_hosts": failing_hosts(runs, top),
        "failing_tags": failing_tags(runs, top),
        "sla_misses": sla_misses(runs),
    }


def sla_misses(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """Every missed step SLA and run deadline (step null), newest run first."""
    misses = []
    for run in runs:
        if run.deadline_missed:
            misses.append({"run_id": run.run_id, "dag": run.dag, "step": None})
        misses += [{"run_id": run.run_id, "dag": run.dag, "step": s.name} for s in run.steps if s.sla_missed]
    return misses[::-1]


def check_by(by: str) -> str:
    if by in DIMENSIONS or (by.startswith("tag:") and len(by) > 4):
        return by
    raise ValueError(f"unknown grouping {by!r}; use dag, step, host or tag:KEY")


# --- retention ----------------------------------------------------------------------------------

def prune(store: RunStore, older_than: datetime | float, *, limit: int = 1000) -> int:
    """Delete whole runs created before ``older_than`` that have ended, with every key of theirs
    (handler steps, attempts and logs included: :meth:`RunStore.delete_run`). Active runs are never
    touched. Returns how many runs were deleted (at most ``limit`` per call: call again while it
    returns ``limit``).

    After pruning, ``ctl backfill --reprocess none`` treats a pruned interval as never run.
    """
    cutoff = older_than.timestamp() if isinstance(older_than, datetime) else float(older_than)
    return sum(store.delete_run(run_id) for run_id in store.runs_created_before(cutoff, limit))
