"""The next fire times of a DAG and every candidate time dropped on the way, with its reason: what
``ctl next`` prints and the server shows. The same :class:`Schedule` the daemon evaluates."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scheduler.errors import ConveyorError
from scheduler.model import DagSpec
from scheduler.outages import Outage
from scheduler.schedules import Dropped, Fire, Schedule
from scheduler.spec import build_schedule


@dataclass(frozen=True)
class Upcoming:
    name: str
    schedule: Schedule
    fires: list[Fire]
    dropped: list[Dropped]

    def to_json(self) -> dict[str, Any]:
        """``ctl next -o json``."""
        return {
            "timezone": str(self.schedule.tz),
            "fires": [{"at": f.logical_date.isoformat(), "utc": f.utc.isoformat(),
                       **({"due": f.due.isoformat(), "deferred_by": f.deferred_by} if f.deferred_by else {}),
                       "data_interval_start": f.data_interval_start.isoformat(),
                       "data_interval_end": f.data_interval_end.isoformat()} for f in self.fires],
            "dropped": [{"at": d.at.isoformat(), "utc": d.utc.isoformat(), "reason": d.reason} for d in self.dropped],
            "dropped_by_reason": dict(self.dropped_by_reason()),
        }

    def dropped_by_reason(self) -> list[tuple[str, int]]:
        """How many candidate times were dropped for each kind of reason, most first: ``weekend`` for
        Saturdays and Sundays alike, ``holiday`` whichever holiday, ``outage`` whichever window."""
        counts = Counter(reason_kind(d.reason) for d in self.dropped)
        return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

    def dropped_summary(self) -> str:
        """``327 dropped: 210 not the last business day of the month, 104 weekend, 13 holiday``."""
        return dropped_summary(len(self.dropped), self.dropped_by_reason())


def dropped_summary(total: int, by_reason: Iterable[tuple[str, int]]) -> str:
    """:meth:`Upcoming.dropped_summary` from its parts (``ctl next`` through the server has only the JSON)."""
    if not total:
        return "none dropped"
    parts = ", ".join(f"{count} {kind}" for kind, count in by_reason)
    return f"{total} dropped: {parts}"


def reason_kind(reason: str) -> str:
    """The kind of a drop reason: ``weekend (Saturday)`` -> ``weekend``, ``holiday: Christmas Day (NYSE)``
    -> ``holiday``; a time rolled onto a day the business-day rule refuses counts under that rule."""
    last = reason.split("; ")[-1].split(", ")[-1] if "; rolled" in reason else reason
    for kind in ("weekend", "extra holiday", "holiday", "outage"):
        if last.startswith(kind):
            return "holiday" if kind == "extra holiday" else kind
    return last


def upcoming(spec: DagSpec, calendars: Mapping[str, Any], outages: Sequence[Outage], after: datetime,
             count: int) -> Upcoming:
    """The next ``count`` fires after ``after``; raises ConveyorError for a DAG without a schedule."""
    schedule = build_schedule(spec.document, calendars, outages)
    if schedule is None:
        raise ConveyorError(f"DAG '{spec.name}' has no schedule")
    fires: list[Fire] = []
    dropped: list[Dropped] = []
    for item in schedule.fires(after, n=count):
        if isinstance(item, Dropped):
            dropped.append(item)
        else:
            fires.append(item)
    return Upcoming(spec.name, schedule, fires, dropped)
