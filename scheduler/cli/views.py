"""Plain data for runs (what ``--output json`` prints) and the rich renderings of the same data.

Commands build data here; nothing here talks to Redis except through the store passed in.
rich is imported on first use (``out``, ``err`` and the tables are built lazily): commands that print
plain lines never load it.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

_RUNVIEW = ("ATTEMPT_FIELDS", "attempt_object", "run_object", "shown_state", "status_object")

STATE_STYLE = {
    "success": "green", "failed": "red", "upstream_failed": "dark_orange", "running": "cyan", "queued": "blue",
    "retrying": "yellow", "cancelled": "magenta", "skipped": "grey50", "pending": "grey50", "waiting": "blue",
    "scheduled": "grey50",
}


@cache
def _consoles() -> tuple[Console, Console]:
    from rich.console import Console

    # No emoji codes or highlighting: names and messages from users are printed verbatim.
    return (Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160, emoji=False, highlight=False),
            Console(stderr=True, soft_wrap=True, emoji=False, highlight=False))


def __getattr__(name: str) -> Any:
    """``views.out``/``views.err`` (rich consoles) and the run views re-exported from scheduler.runview,
    all loaded on first use."""
    if name in ("out", "err"):
        return _consoles()[name == "err"]
    if name in _RUNVIEW:
        from scheduler import runview

        return getattr(runview, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def plain(line: str, *, stderr: bool = False) -> None:
    """One line as is, without rich (as ``out.print(line, markup=False, highlight=False)`` prints it)."""
    stream = sys.stderr if stderr else sys.stdout
    stream.write(line + "\n")
    stream.flush()


def plain_table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table as aligned plain text on stdout (a title, a header, a rule, the rows): for long listings."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]
    lines = [title, "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")
    sys.stdout.flush()


def styled(state: str) -> Text:
    from rich.text import Text

    return Text(state, style=STATE_STYLE.get(state, ""))


def steps_table(status: dict[str, Any]) -> Table:
    from rich.table import Table

    title = f"{status['run_id']}  [{STATE_STYLE.get(status['state'], '')}]{status['state']}[/]"
    table = Table(title=title, title_justify="left", expand=False)
    for column in ("step", "state", "attempt", "exit", "started", "duration", "error"):
        table.add_column(column)
    for step in status["steps"]:
        last = step["attempts"][-1] if step["attempts"] else {}
        attempt = str(len(step["attempts"]) or "")
        if last.get("adopted_by"):
            attempt += f" (adopted by {last['adopted_by']})"
        table.add_row(
            ("  " if step.get("mapped_step") else "") + step["name"], styled(step["state"]),
            attempt or (f"×{step['instances']}" if step.get("instances") else ""),
            "" if last.get("exit_code") is None else str(last["exit_code"]),
            (last.get("started_at") or "")[11:23], duration(last.get("started_at"), last.get("ended_at")),
            _note(step, last),
        )
    return table


def _note(step: dict[str, Any], last: dict[str, Any]) -> Text:
    """The status table's last column: what a waiting step waits for, else the error; and the step's
    saved checkpoint, if any."""
    note = _waiting_or_error(step, last)
    if step.get("checkpoint_at"):
        note.append(("; " if note.plain else "") + checkpoint_note(step), style="")
    return note


def checkpoint_note(step: dict[str, Any]) -> str:
    """``checkpoint 1.2 KiB, saved 3m ago`` (from ``checkpoint_bytes``, ``checkpoint_at`` of status)."""
    saved = datetime.fromisoformat(step["checkpoint_at"])
    age = max(0.0, (datetime.now(UTC) - saved).total_seconds())
    size = step["checkpoint_bytes"]
    shown = (f"{size} B" if size < 1024 else f"{size / 1024:.1f} KiB" if size < 1024 ** 2
             else f"{size / 1024 ** 2:.1f} MiB")
    ago = f"{age:.0f}s" if age < 120 else f"{age / 60:.0f}m" if age < 7200 else f"{age / 3600:.0f}h"
    return f"checkpoint {shown}, saved {ago} ago"


def _waiting_or_error(step: dict[str, Any], last: dict[str, Any]) -> Text:
    from rich.text import Text

    if step.get("waiting_for"):
        return Text("waits for " + "; ".join(step["waiting_for"]) + f"; next check at {step['next_check'][11:19]}")
    if last.get("next_poke"):
        return Text(f"sensor: {last['pokes']} poke(s) not ready; next at {last['next_poke'][11:19]}")
    return Text(last.get("error") or step.get("error") or "", style="red")


def runs_table(runs: list[dict[str, Any]], numbered: bool = False) -> Table:
    """Runs as given (newest first); ``numbered`` adds the ``#`` of each run's column in :func:`grid_table`."""
    from rich.table import Table

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
    from rich.text import Text

    if not state:
        return Text("")
    color = STATE_STYLE.get(state, "")
    return Text(f" {GRID_GLYPH.get(state, '?')} ", style=f"bold reverse {color}" if color else "")


def grid_table(runs: list[dict[str, Any]], steps: dict[str, dict[str, str]]) -> Table:
    """Airflow's grid: one column per run (oldest left, numbered 1..N), a row for the run's state and one
    per step (in the newest run's order, then steps only older versions had). ``runs`` newest first, as
    listed; ``steps`` maps run_id -> {step: state}. A letter per state, so the grid reads without colour."""
    from rich.table import Table
    from rich.text import Text

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
