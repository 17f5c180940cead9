"""``ctl worker``: an RQ worker that runs step attempts in its own process (no fork per job).

RQ's ``SimpleWorker`` saves the fork per job (25–28 ms here) because every job is a container
that runs out of process anyway. Delayed retries are not RQ's scheduled jobs: every worker moves
due ones onto the queues itself (``DelayedMover``), so a killed worker takes none with it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence

from rq import Queue, SimpleWorker

from runner.context import WorkerContext, install
from scheduler.dispatch import DelayedMover
from scheduler.model import QUEUES
from scheduler.reaper import Reaper
from scheduler.settings import Settings

FAIR_TURN = 5
log = logging.getLogger("conveyor.runner")


class ConveyorWorker(SimpleWorker):
    """RQ's SimpleWorker with two changes.

    - Priority with a fairness turn: queues are taken in order (high, default, low), except that
      every ``FAIR_TURN``-th job comes from the lowest non-empty queue first. A flood of backfill
      steps on ``low`` cannot starve ``high`` (it gets at least 4 of every 5 jobs a worker takes),
      and a steady stream of ``high`` work cannot starve ``low`` forever.
    - The command listener wakes every 0.2 s instead of every 60 s, so that a stop takes
      milliseconds instead of RQ's one-second join timeout.
    """

    _taken = 0
    context: WorkerContext | None = None

    def request_stop(self, signum, frame) -> None:
        """Stop taking work; the running step gets the shutdown grace, then is stopped and handed back."""
        if self.context is not None and self.context.stopping_since is None:
            self.context.stopping_since = time.monotonic()
        super().request_stop(signum, frame)

    def reorder_queues(self, reference_queue: Queue) -> None:
        self._taken += 1
        self._ordered_queues = self.queues[::-1] if self._taken % FAIR_TURN == FAIR_TURN - 1 else self.queues[:]

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=0.2, daemon=True, exception_handler=self._pubsub_exception_handler)


def work(settings: Settings, queues: Sequence[str] = QUEUES, *, burst: bool = False, name: str | None = None,
         log_level: str = "INFO") -> bool:
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    context = WorkerContext(settings, name=name)
    install(context)
    logging.getLogger("conveyor.runner").setLevel(log_level)
    logging.getLogger("conveyor.reaper").setLevel(log_level)
    reaper = Reaper(context.engine, context.runtime, lost_counts=settings.lost_counts)
    reaper.run_in_thread()
    DelayedMover(context.dispatcher).run_in_thread(reaper.stop)
    backoff = 0.5
    try:
        while True:
            connection = settings.connect(decode=False)
            worker = ConveyorWorker([Queue(q, connection=connection) for q in queues], connection=connection,
                                    name=f"{name}-{int(time.time() * 1000) % 100000}" if backoff > 0.5 else name)
            worker.context = context
            worker.work(burst=burst, logging_level=log_level)
            if burst or context.stopping_since is not None or worker._stop_requested:
                return True
            # RQ's loop ends on a Redis error: ride it out instead of exiting (no crash loop).
            log.warning("worker loop ended (Redis unreachable?); starting again in %.1fs", backoff)
            time.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
    finally:
        reaper.stop.set()
