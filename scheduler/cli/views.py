"""Plain data for runs (what ``--output json`` prints) and the rich renderings of the same data.

Commands build data here; nothing here talks to Redis except through the store passed in.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from scheduler.store import RunStore

ATTEMPT_FIELDS = ("number", "state", "exit_code", "image", "image_id", "image_digest", "container_id", "host",
                  "pid", "worker", "engine_version", "started_at", "ended_at", "reason", "error")
STATE_STYLE = {
    "success": "green", "failed": "red", "upstream_failed": "dark_orange", "running": "cyan", "queued": "blue",
    "retrying": "yellow", "cancelled": "magenta", "skipped": "grey50", "pending": "grey50", "waiting": "blue",
    "scheduled": "grey50",
}

# No emoji codes or highlighting: names and messages from users are printed verbatim.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160, emoji=False, highlight=False)
err = Console(stderr=True, soft_wrap=True, emoji=False, highlight=False)


def _none(value: str | None) -> str | None:
    return value if value not in (None, "") else None


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def shown_state(record: dict[str, str]) -> str:
    """A staged run (see scheduler/staging.py) is ``scheduled`` until its due time, then ``queued``."""
    due = record.get("staged_due")
    if record["state"] == "queued" and due and float(due) > time.time():
        return "scheduled"
    return record["state"]


def run_object(record: dict[str, str]) -> dict[str, Any]:
    """A run without its steps (``ctl runs --output json``)."""
    provenance = json.loads(record.get("provenance") or "{}")
    return {
        "run_id": record["run_id"],
        "dag": record["dag"],
        "dag_version": int(record["dag_version"]),
        "dag_sha256": provenance.get("dag_sha256"),
        "git_commit": provenance.get("git_commit"),
        "git_dirty": provenance.get("git_dirty"),
        "state": shown_state(record),
        "trigger": record.get("trigger"),
        "priority": record.get("priority"),
        "params": json.loads(record.get("params") or "{}"),
        "logical_date": _none(record.get("logical_date")),
        "data_interval_start": _none(record.get("data_interval_start")),
        "data_interval_end": _none(record.get("data_interval_end")),
        "created_at": _none(record.get("created_at")),
        "started_at": _none(record.get("started_at")),
        "ended_at": _none(record.get("ended_at")),
    }


def attempt_object(raw: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {key: _none(raw.get(key)) for key in ATTEMPT_FIELDS}
    data["number"] = _int(raw.get("number"))
    data["exit_code"] = _int(raw.get("exit_code"))
    data["pid"] = _int(raw.get("pid"))
    data["outputs"] = json.loads(raw["outputs"]) if raw.get("outputs") else None
    if raw.get("argv"):  # rendered when the attempt started (it read upstream outputs)
        data["argv"] = json.loads(raw["argv"])
    return data


def status_object(store: RunStore, run_id: str) -> dict[str, Any]:
    """``ctl status RUN_ID --output json``: the run and every step with its attempts."""
    data = run_object(store.run_record(run_id))
    data["steps"] = [
        {
            "name": step["name"],
            "state": step["state"],
            "attempts": [attempt_object(a) for a in step["attempts"]],
            **_mapped_object(step),
        }
        for step in store.step_records(run_id)
    ]
    return data


def _mapped_object(step: dict[str, str]) -> dict[str, Any]:
    """A mapped step's fan-out (how many instances, its outputs gathered, why it did not expand) or an
    instance's mapped step and index; nothing for a plain step."""
    if step.get("parent"):
        return {"mapped_step": step["parent"], "index": _int(step.get("index"))}
    if "for_each" not in step:
        return {}
    return {"instances": _int(step.get("instances")), "error": _none(step.get("error")),
            "outputs": json.loads(step["outputs"]) if step.get("outputs") else None}


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


def steps_table(status: dict[str, Any]) -> Table:
    title = f"{status['run_id']}  [{STATE_STYLE.get(status['state'], '')}]{status['state']}[/]"
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("step", "state", "attempt", "exit", "started", "duration", "error"):
        table.add_column(column)
    for step in status["steps"]:
        last = step["attempts"][-1] if step["attempts"] else {}
        table.add_row(
            ("  " if step.get("mapped_step") else "") + step["name"], styled(step["state"]),
            str(len(step["attempts"]) or (f"×{step['instances']}" if step.get("instances") else "")),
            "" if last.get("exit_code") is None else str(last["exit_code"]),
            (last.get("started_at") or "")[11:23], duration(last.get("started_at"), last.get("ended_at")),
            Text(last.get("error") or step.get("error") or "", style="red"),
        )
    return table


def runs_table(runs: list[dict[str, Any]], numbered: bool = False) -> Table:
    """Runs as given (newest first); ``numbered`` adds the ``#`` of each run's column in :func:`grid_table`."""
    table = Table(expand=False)
    for column in (("#",) if numbered else ()) + ("run_id", "dag", "version", "state", "trigger", "created",
                                                   "duration"):
        table.add_column(column)
    for i, run in enumerate(runs):
        table.add_row(*((str(len(runs) - i),) if numbered else ()), run["run_id"], run["dag"],
                      str(run["dag_version"]), styled(run["state"]), run["trigger"] or "",
                      (run["created_at"] or "")[:19], duration(run["started_at"], run["ended_at"]))
    return table


GRID_GLYPH = {
    "success": "s", "failed": "F", "upstream_failed": "U", "running": "R", "queued": "q", "retrying": "r",
    "cancelled": "C", "skipped": "-", "pending": ".", "waiting": "w", "scheduled": "S",
}


def grid_cell(state: str | None) -> Text:
    if not state:
        return Text("")
    color = STATE_STYLE.get(state, "")
    return Text(f" {GRID_GLYPH.get(state, '?')} ", style=f"bold reverse {color}" if color else "")


def grid_table(runs: list[dict[str, Any]], steps: dict[str, dict[str, str]]) -> Table:
    """Airflow's grid: one column per run (oldest left, numbered 1..N), a row for the run's state and one
    per step (in the newest run's order, then steps only older versions had). ``runs`` newest first, as
    listed; ``steps`` maps run_id -> {step: state}. A letter per state, so the grid reads without colour."""
    ordered = list(reversed(runs))
    names: list[str] = []
    for run in runs:
        names += [n for n in steps.get(run["run_id"], {}) if n not in names]
    legend = "  ".join(f"{g} {s}" for s, g in GRID_GLYPH.items())
    table = Table(title=f"{runs[0]['dag'] if runs else ''}: last {len(runs)} runs", title_justify="left",
                  caption=legend, caption_justify="left", expand=False, pad_edge=False, padding=(0, 0))
    table.add_column("", no_wrap=True)
    for i, run in enumerate(ordered, start=1):
        created = run.get("created_at") or ""
        table.add_column(f"{i}\n{created[5:10]}\n{created[11:16]}", justify="center", no_wrap=True, min_width=5)
    table.add_row(Text("run ", style="bold"), *[grid_cell(run["state"]) for run in ordered])
    for name in names:
        table.add_row(f"{name} ", *[grid_cell(steps.get(run["run_id"], {}).get(name)) for run in ordered])
    return table


def duration(start: str | None, end: str | None) -> str:
    from datetime import UTC, datetime

    if not start:
        return ""
    begin = datetime.fromisoformat(start)
    finish = datetime.fromisoformat(end) if end else datetime.now(UTC)
    seconds = (finish - begin).total_seconds()
    return f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
