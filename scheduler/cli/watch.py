"""Following a run to its end: a live rich table on a terminal, one line per change otherwise."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.live import Live

from scheduler.cli import views
from scheduler.remote import POLL_SECONDS as REMOTE_POLL_SECONDS
from scheduler.remote import Remote
from scheduler.store import RunStore

POLL_SECONDS = 0.1  # the longest wait between two looks (and two ``tick``s); a change of the run wakes it at once


def follow(source: RunStore | Remote, run_id: str, *, live: bool | None = None, timeout: float | None = None,
           tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Block until the run ends (or ``timeout``); returns its final status object. ``tick`` runs every poll.
    ``source`` is Redis, or ``ctl server`` (polled less often: every request goes over the network)."""
    live = views.err.is_terminal if live is None else live
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: dict[str, str] = {}
    poll = REMOTE_POLL_SECONDS if isinstance(source, Remote) else POLL_SECONDS

    def load() -> dict[str, Any]:
        return source.status(run_id) if isinstance(source, Remote) else views.status_object(source, run_id)

    after = None if isinstance(source, Remote) else source.last_event_id()
    status = load()
    display = Live(views.steps_table(status), console=views.err, refresh_per_second=8) if live else None
    try:
        if display:
            display.start()
        while True:
            if tick:
                tick()
            status = load()
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
            if after is None or isinstance(source, Remote):
                time.sleep(poll)
            else:
                after = wait_for_change(source, run_id, after, poll)
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
