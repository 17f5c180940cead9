"""``ctl worker``: an RQ worker that runs step attempts in its own process (no fork per job).

RQ's ``SimpleWorker`` saves the fork per job (25–28 ms here) because every job is a container
that runs out of process anyway. ``with_scheduler`` lets RQ move delayed retries onto queues.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence

from rq import Queue, SimpleWorker

from runner.context import WorkerContext, install
from scheduler.model import QUEUES
from scheduler.settings import Settings

FAIR_TURN = 5


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

    def reorder_queues(self, reference_queue: Queue) -> None:
        self._taken += 1
        self._ordered_queues = self.queues[::-1] if self._taken % FAIR_TURN == FAIR_TURN - 1 else self.queues[:]

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=0.2, daemon=True, exception_handler=self._pubsub_exception_handler)


def work(settings: Settings, queues: Sequence[str] = QUEUES, *, burst: bool = False, name: str | None = None,
         log_level: str = "INFO", with_scheduler: bool = True) -> bool:
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    install(WorkerContext(settings, name=name))
    connection = settings.connect(decode=False)
    worker = ConveyorWorker([Queue(q, connection=connection) for q in queues], connection=connection, name=name)
    logging.getLogger("conveyor.runner").setLevel(log_level)
    return worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=log_level)
