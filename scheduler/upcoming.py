"""The next fire times of a DAG and every candidate time dropped on the way, with its reason: what
``ctl next`` prints and the server shows. The same :class:`Schedule` the daemon evaluates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
        }


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
