"""The DAGs as people look at them: one row per DAG with its schedule in words, next fire, last run
and problems. ``ctl dags`` renders these rows; the HTTP API serves the same data."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

from scheduler.agenda import Agenda
from scheduler.errors import ConveyorError, NotFoundError
from scheduler.service import load_version, store_calendars
from scheduler.spec import build_schedule
from scheduler.staging import unstage
from scheduler.store import RunStore


@functools.lru_cache(maxsize=4096)
def cron_in_words(cron: str) -> str:
    """"0 17 * * 1-5" -> "At 05:00 PM, Monday through Friday" (cron-descriptor). Conveyor's six-field
    crons put seconds last; cron-descriptor reads them first, so they are moved for it."""
    from cron_descriptor import ExpressionDescriptor, Options

    fields = cron.split()
    if len(fields) == 6:
        fields = [fields[5], *fields[:5]]
    options = Options()
    options.use_24hour_time_format = True
    options.verbose = False
    try:
        return str(ExpressionDescriptor(" ".join(fields), options).get_description())
    except Exception:  # its own parse errors: the cron was validated already, so say it plainly
        return cron


def schedule_in_words(schedule: dict[str, Any] | None) -> str:
    if not schedule:
        return "manual only"
    crons = schedule.get("cron")
    crons = [crons] if isinstance(crons, str) else list(crons or [])
    words = "; ".join(cron_in_words(c) for c in crons) or "no cron"
    extras = []
    if schedule.get("calendar"):
        extras.append(f"on {schedule['calendar']} business days" if not isinstance(schedule["calendar"], dict)
                      else "on business days")
    if schedule.get("business_day"):
        extras.append(f"business day {schedule['business_day']} of the month")
    return ", ".join([words, *extras])


def dag_row(store: RunStore, name: str, *, now: datetime | None = None,
            context: tuple[dict[str, Any], list[Any]] | None = None,
            import_errors: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One DAG as ``ctl dags`` and ``GET /api/v1/dags`` show it."""
    now = now or datetime.now(UTC)
    state = store.dag_state(name)
    if not state:
        raise NotFoundError(store.unknown_dag(name))
    calendars, outages = context if context is not None else (store_calendars(store), Agenda(store).global_outages())
    row: dict[str, Any] = {"name": name, "version": int(state.get("latest") or 0),
                           "paused": state.get("paused") == "1", "active": state.get("deactivated") != "1",
                           "file": None, "schedule": None, "schedule_words": "manual only", "timezone": None,
                           "next_fire": None, "last_run": None, "import_error": None, "scheduler_error": None}
    try:
        spec, record = load_version(store, name, calendars=calendars)
        row["file"] = record.get("path") or None
        document = dict(spec.document)
        row["schedule"] = document.get("schedule")
        row["schedule_words"] = schedule_in_words(document.get("schedule"))
        schedule = build_schedule(document, calendars, outages)
        if schedule is not None:
            row["timezone"] = str(schedule.tz)
            upcoming = schedule.next_fires(now, 1) if row["active"] and not row["paused"] else []
            row["next_fire"] = upcoming[0].logical_date.isoformat() if upcoming else None
    except ConveyorError as exc:  # the stored version no longer validates (a calendar was removed, say)
        row["scheduler_error"] = str(exc)
    last = store.run_ids(name, 1)
    if last:
        record = store.run_record(last[0])
        row["last_run"] = {"run_id": last[0], "state": record.get("state"), "created_at": record.get("created_at")}
    problem = store.dag_error(name)
    if problem and not row["scheduler_error"]:
        row["scheduler_error"] = problem[0]
    errors = import_errors if import_errors is not None else store.import_errors()
    for error in errors.values():
        if error.get("dag") == name:
            row["import_error"] = error
    return row


def dag_rows(store: RunStore, *, now: datetime | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every DAG's row, and the import errors of files that never defined a valid DAG."""
    context = (store_calendars(store), Agenda(store).global_outages())
    errors = store.import_errors()
    rows = [dag_row(store, name, now=now, context=context, import_errors=errors) for name in store.dag_names()]
    orphans = [e for e in errors.values() if not e.get("dag")]
    return rows, orphans


def dag_detail(store: RunStore, name: str) -> dict[str, Any]:
    """``ctl dags show``: the stored version, where it came from, its source text."""
    record = store.dag_version(name)
    return {**dag_row(store, name), "sha256": record["sha256"], "git_commit": record.get("git_commit"),
            "git_dirty": record.get("git_dirty"), "submitted_at": record.get("submitted_at"),
            "source": record["source"]}


def delete_dag(store: RunStore, name: str, *, purge: bool = False) -> int:
    """Remove a DAG's definition and schedule (staged runs taken back); ``purge`` also deletes its ended
    runs. Returns how many runs were deleted."""
    if not store.dag_state(name):
        raise NotFoundError(store.unknown_dag(name))
    unstage(store, [name])
    for key, dag in store.synced_files().items():
        if dag == name:
            store.set_synced_file(key, None)
    return store.delete_dag(name, purge=purge)
