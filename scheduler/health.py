"""Liveness and readiness of a long-running process (``ctl scheduler``, ``ctl worker``).

``/healthz`` answers as long as the process serves HTTP. ``/readyz`` asks a small registry:

- **checks**: callbacks that return None when fine, else the reason (e.g. "Redis: connection
  refused"); :func:`scheduler.metrics.start` registers the Redis ping;
- **loops**: each main loop calls :func:`beat` on every turn with how long a turn may take at
  most (``within``) and its state (``leader``, ``standby``, ``idle``...). A loop that has not
  turned within that time is not ready, unless it is inside :meth:`Health.busy` (a worker running a
  step does not turn its loop until the step ends). A process whose loop never turned yet is
  "starting", not ready.

One registry per process (:data:`HEALTH`), so the loops need no reference to the HTTP server.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

Check = Callable[[], str | None]


@dataclass
class Loop:
    within: float
    last: float
    state: str
    busy: int = 0


class Health:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.checks: dict[str, Check] = {}
        self.loops: dict[str, Loop] = {}
        self._lock = threading.Lock()

    def add_check(self, name: str, check: Check) -> None:
        self.checks[name] = check

    def beat(self, loop: str, within: float, state: str = "") -> None:
        """``loop`` turned now; it should turn again within ``within`` seconds."""
        with self._lock:
            current = self.loops.get(loop)
            if current is None:
                self.loops[loop] = Loop(within, self.clock(), state)
            else:
                current.within, current.last, current.state = within, self.clock(), state or current.state

    @contextmanager
    def busy(self, loop: str) -> Iterator[None]:
        """While inside, ``loop`` is working (not stuck) even if it does not turn."""
        with self._lock:
            current = self.loops.setdefault(loop, Loop(0.0, self.clock(), ""))
            current.busy += 1
        try:
            yield
        finally:
            with self._lock:
                current.busy -= 1
                current.last = self.clock()

    def report(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, details)``: details name every check and loop with ``ok`` and the reason when not."""
        details: dict[str, Any] = {}
        for name, check in list(self.checks.items()):
            try:
                problem = check()
            except Exception as exc:  # a check must never take the endpoint down
                problem = f"{type(exc).__name__}: {exc}"
            details[name] = {"ok": problem is None, **({"reason": problem} if problem else {})}
        now = self.clock()
        with self._lock:
            loops = {name: Loop(**vars(loop)) for name, loop in self.loops.items()}
        for name, loop in loops.items():
            age = now - loop.last
            ok = loop.busy > 0 or age <= loop.within
            entry: dict[str, Any] = {"ok": ok, "state": loop.state or ("busy" if loop.busy else ""),
                                     "seconds_since_turn": round(age, 3)}
            if not ok:
                entry["reason"] = f"the loop has not turned for {age:.0f}s (expected within {loop.within:g}s)"
            details[f"loop:{name}"] = entry
        if not loops:
            details["loop"] = {"ok": False, "reason": "starting: the main loop has not turned yet"}
        return all(entry["ok"] for entry in details.values()), details


HEALTH = Health()


def beat(loop: str, within: float, state: str = "") -> None:
    """Record a turn of ``loop`` in this process's registry (see :class:`Health.beat`)."""
    HEALTH.beat(loop, within, state)


def busy(loop: str):
    """This process's :meth:`Health.busy`."""
    return HEALTH.busy(loop)
