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


class ConveyorWorker(SimpleWorker):
    """RQ's SimpleWorker whose command listener wakes every 0.2 s instead of every 60 s, so that a
    stop takes milliseconds instead of RQ's one-second join timeout."""

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
