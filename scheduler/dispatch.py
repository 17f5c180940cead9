"""Ready step attempts → RQ jobs. RQ is the transport only: one job per attempt, with a
deterministic id, on the ``high``/``default``/``low`` queue; the DAG itself never reaches RQ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError

from scheduler.model import QUEUES
from scheduler.store import Ready

JOB_FUNC = "runner.job.run_attempt"  # by name: the scheduler never imports the runner
RQ_TIMEOUT_GRACE = 60  # RQ's own job timeout is a safety net behind the runner's container timeout
FAILURE_TTL = 7 * 86400


def job_id(run_id: str, step: str, attempt: int) -> str:
    return f"{run_id}-{step}-{attempt}"


def _not_before(delay: float) -> datetime:
    """RQ's scheduler keeps whole seconds and drops the fraction: round up so a backoff is never cut short."""
    return datetime.fromtimestamp(math.ceil(time.time() + delay), UTC)


class Dispatcher:
    """Enqueues attempts; enqueueing the same attempt twice is a no-op (``unique`` job ids)."""

    def __init__(self, connection: redis.Redis, prefix: str = "conveyor"):
        self.prefix = prefix
        self.queues = {name: Queue(name, connection=connection) for name in QUEUES}

    def enqueue(self, items: Iterable[Ready]) -> int:
        count = 0
        items = list(items)
        if len(items) > 1 and all(item.delay <= 0 for item in items):
            return self._enqueue_pipelined(items)
        for item in items:
            queue = self.queues.get(item.queue) or self.queues["default"]
            options = self._options(item)
            try:
                if item.delay > 0:
                    queue.enqueue_at(_not_before(item.delay), JOB_FUNC, **options)
                else:
                    queue.enqueue_call(JOB_FUNC, **options)
                count += 1
            except DuplicateJobError:
                pass
        return count

    def _enqueue_pipelined(self, items: list[Ready]) -> int:
        """Many ready attempts in one round trip (a fan-out, a scheduler tick). Not ``unique``: a second
        delivery of the same attempt is harmless, since only one can start (start.lua)."""
        connection = self.queues["default"].connection
        with connection.pipeline() as pipe:
            for item in items:
                queue = self.queues.get(item.queue) or self.queues["default"]
                options = self._options(item)
                options.pop("unique")
                queue.enqueue_call(JOB_FUNC, pipeline=pipe, **options)
            pipe.execute()
        return len(items)

    def _options(self, item: Ready) -> dict:
        return {
            "args": (item.run_id, item.step, item.attempt, self.prefix),
            "job_id": job_id(item.run_id, item.step, item.attempt) + (f"-{item.tag}" if item.tag else ""),
            "timeout": int(item.timeout + RQ_TIMEOUT_GRACE) if item.timeout else -1,
            "result_ttl": 0,
            "failure_ttl": FAILURE_TTL,
            "description": f"{item.run_id} {item.step} attempt {item.attempt}",
            "unique": True,
        }


class InlineRetryMover:
    """Moves due delayed retries onto their queues from the caller's own loop.

    ``ctl run`` ticks this from its watch loop instead of letting every worker fork RQ's scheduler
    process, which sleeps in whole seconds and so holds up shutdown by up to a second.
    """

    def __init__(self, connection: redis.Redis):
        from rq.scheduler import RQScheduler

        self._scheduler = RQScheduler(list(QUEUES), connection=connection, logging_level="WARNING")

    def tick(self) -> None:
        if self._scheduler.should_reacquire_locks:
            self._scheduler.acquire_locks()
        if self._scheduler.acquired_locks:
            self._scheduler.enqueue_scheduled_jobs()

    def close(self) -> None:
        self._scheduler.release_locks()
