"""Ready step attempts → RQ jobs. RQ is the transport only: one job per attempt, with a
deterministic id, on the ``high``/``default``/``low`` queue; the DAG itself never reaches RQ.

Only :mod:`scheduler.engine` calls :meth:`Dispatcher.enqueue` (a transition enqueues what it made
ready in the same call); the dispatcher is the store layer's door to RQ's keys.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import redis
from rq import Queue
from rq.exceptions import DuplicateJobError
from rq.job import JobStatus
from rq.serializers import JSONSerializer

from scheduler.keys import Keys
from scheduler.model import QUEUES, mapped_instance
from scheduler.results import Ready
from scheduler.store import lua_script

JOB_FUNC = "runner.job.run_attempt"  # by name: the scheduler never imports the runner
RQ_TIMEOUT_GRACE = 60  # RQ's own job timeout is a safety net behind the runner's container timeout
FAILURE_TTL = 7 * 86400


def job_id(run_id: str, step: str, attempt: int) -> str:
    """Deterministic and made of ``[A-Za-z0-9_-]`` (RQ checks): an instance ``STEP[i]`` of a mapped step is
    ``RUN-STEP-N-iI``, which no plain step's ``RUN-STEP-N`` can be (the Lua twin is ``job_id`` in lib.lua)."""
    instance = mapped_instance(step)
    if instance is not None:
        return f"{run_id}-{instance[0]}-{attempt}-i{instance[1]}"
    return f"{run_id}-{step}-{attempt}"


def _encode(item: Ready) -> str:
    return json.dumps([item.run_id, item.step, item.attempt, item.queue, item.timeout, item.tag])


def _decode(entry: bytes | str) -> Ready:
    run_id, step, attempt, queue, timeout, tag = json.loads(entry)
    return Ready(run_id, step, attempt, queue, timeout, 0.0, tag)


class Dispatcher:
    """Enqueues attempts; enqueueing the same attempt twice is a no-op (``unique`` job ids).

    A delayed attempt (a retry after its backoff, a step after an outage) waits in Redis's
    ``{prefix}:delayed`` sorted set, not in RQ's scheduler, whose single lock-holding worker takes
    delayed jobs with it when it is killed. Every worker, the leading scheduler and ``ctl run``
    move due entries onto the queues (:meth:`move_due`); two movers at once are harmless (one pops
    an entry; even a double delivery could start the attempt only once).
    """

    def __init__(self, connection: redis.Redis, prefix: str = "conveyor"):
        self.prefix = prefix
        self.connection: Any = connection  # bytes replies (RQ's own client)
        # JSON, never pickle: workers refuse anything else (runner/admission.py)
        self.queues = {name: Queue(name, connection=connection, serializer=JSONSerializer) for name in QUEUES}
        self.delayed_key = Keys(prefix).delayed()
        self._delay = lua_script(connection, "delay.lua")
        self._pop_due = lua_script(connection, "pop_due.lua")

    def move_due(self, limit: int = 500) -> int:
        """Enqueue every delayed attempt whose time has come; returns how many."""
        moved = 0
        while True:
            entries = self._pop_due(args=[self.prefix, limit])
            if not entries:
                return moved
            items = [_decode(e) for e in entries]
            self.enqueue(items)
            moved += len(items)
            if len(entries) < limit:
                return moved

    def worker_names(self) -> list[str]:
        """The RQ workers registered now (one SIGKILLed lately may still be listed until its key expires)."""
        from rq import Worker

        return [worker.name for worker in Worker.all(connection=self.connection)]

    def next_delayed(self) -> float | None:
        """Seconds until the next delayed attempt is due (by Redis's clock), or None."""
        first = self.connection.zrange(self.delayed_key, 0, 0, withscores=True)
        if not first:
            return None
        now = self.connection.time()
        return max(0.0, first[0][1] - (now[0] + now[1] / 1e6))

    def enqueue(self, items: Iterable[Ready]) -> int:
        items = list(items)
        later = [item for item in items if item.delay > 0]
        if later:
            args: list = [self.prefix]
            for item in later:
                args += [item.delay, _encode(item)]
            self._delay(args=args)
        now = [item for item in items if item.delay <= 0]
        if len(now) > 1:
            return len(later) + self._enqueue_pipelined(now)
        count = len(later)
        for item in now:
            queue = self.queues.get(item.queue) or self.queues["default"]
            try:
                queue.enqueue_call(JOB_FUNC, **self._options(item))
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

    def hold(self, items: Iterable[Ready], due: datetime) -> None:
        """Write the RQ jobs of staged attempts without putting them on a queue: ``release.lua`` pushes
        their ids at ``due`` (see :mod:`scheduler.staging`). They are ordinary RQ jobs in ``scheduled``
        status, which a worker runs like any other once the id is on its queue."""
        with self.connection.pipeline(transaction=False) as pipe:
            used = set()
            for item in items:
                queue = self.queues.get(item.queue) or self.queues["default"]
                options = self._options(item)
                options.pop("unique")
                job = queue.create_job(JOB_FUNC, status=JobStatus.SCHEDULED, **options)
                job.origin = queue.name
                job.enqueued_at = due
                job.save(pipeline=pipe)
                used.add(queue)
            for queue in used:
                pipe.sadd(queue.redis_queues_keys, queue.key)
            pipe.execute()

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


class DelayedMover:
    """Moves due delayed attempts onto the queues from a loop of the caller's (``ctl run``) or in a
    thread (workers): it sleeps until the next one is due, at most ``MAX_SLEEP`` seconds."""

    MAX_SLEEP = 0.5

    def __init__(self, dispatcher: Dispatcher):
        self.dispatcher = dispatcher

    def tick(self) -> None:
        self.dispatcher.move_due()

    def run_in_thread(self, stop: threading.Event) -> threading.Thread:
        def loop() -> None:
            while not stop.is_set():
                try:
                    self.dispatcher.move_due()
                    wait = self.dispatcher.next_delayed()
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    wait = 1.0
                stop.wait(self.MAX_SLEEP if wait is None else min(wait, self.MAX_SLEEP))

        thread = threading.Thread(target=loop, name="conveyor-delayed", daemon=True)
        thread.start()
        return thread
