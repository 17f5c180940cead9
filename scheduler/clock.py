"""Time for the daemon, passed in so that tests and benchmarks can run it on a fake clock."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    """The real clock."""

    speed = 1.0

    def now(self) -> datetime:
        return datetime.now(UTC)

    def real_seconds(self, until: float) -> float:
        """Real seconds to wait until epoch time ``until`` on this clock."""
        return max(0.0, (until - self.now().timestamp()) / self.speed)


class FakeClock(Clock):
    """Starts at ``start`` and runs ``speed`` times faster than real time (``ctl scheduler --fake-clock``)."""

    def __init__(self, start: datetime, speed: float = 1.0):
        self.start = start.astimezone(UTC)
        self.speed = speed
        self._origin = time.monotonic()

    def now(self) -> datetime:
        from datetime import timedelta

        return self.start + timedelta(seconds=(time.monotonic() - self._origin) * self.speed)
