"""Following a run to its end: a live rich table on a terminal, one line per change otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from scheduler.cli import views

if TYPE_CHECKING:
    from scheduler.store import RunStore

POLL_SECONDS = 0.1  # the longest wait between two looks (and two ``tick``s); a change of the run wakes it at once


def follow(store: RunStore, run_id: str, *, live: bool | None = None, timeout: float | None = None,
           tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Block until the run ends (or ``timeout``); returns its final status object. ``tick`` runs every poll."""
    from rich.live import Live

    live = views.err.is_terminal if live is None else live
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    after = store.last_event_id()
    status = views.status_object(store, run_id)
    display = Live(views.steps_table(status), console=views.err, refresh_per_second=8) if live else None
    try:
        if display:
            display.start()
        while True:
            if tick:
                tick()
            status = views.status_object(store, run_id)
            if display:
                display.update(views.steps_table(status))
            else:
                for step in status["steps"]:
                    if seen.get(step["name"]) != step["state"]:
                        seen[step["name"]] = step["state"]
                        last = step["attempts"][-1] if step["attempts"] else {}
                        note = f" ({last['error']})" if last.get("error") and step["state"] != "success" else ""
                        views.err.print(f"{run_id} {step['name']}: {step['state']}{note}", markup=False,
                                        highlight=False)
            if status["state"] in {"success", "failed", "cancelled"}:
                return status
            if deadline is not None and time.monotonic() > deadline:
                return status
            after = wait_for_change(store, run_id, after, POLL_SECONDS)
    finally:
        if display:
            display.stop()


def wait_for_change(store: RunStore, run_id: str, after: str, seconds: float) -> str:
    """Up to ``seconds``, returning as soon as the events stream has news of this run (the run's end is
    seen at once, not up to a poll later); returns the last event id read."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0.001:
        events = store.read_events(after, count=200, block_ms=max(1, int(left * 1000)))
        if not events:
            break
        after = events[-1][0]
        if any(fields.get("run") == run_id for _, fields in events):
            break
    return after
