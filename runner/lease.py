"""What a worker following an attempt's container polls: its lease, cancel, and its own shutdown.

The same for the worker that started the container (``runner/job.py``) and for one that adopted it
(``runner/adoption.py``): a :class:`LeaseKeeper` is the runtime's ``should_stop``.
"""

from __future__ import annotations

import logging
import time

from runner.context import WorkerContext
from scheduler.results import Lease

log = logging.getLogger("conveyor.runner")


class LeaseKeeper:
    """``should_stop()`` for the holder of an attempt. Its answers:

    - ``lost``: the attempt was declared lost (the runtime kills the container);
    - ``adopted_elsewhere``: another worker holds it now (the runtime lets the container run);
    - ``cancelled``: the run or step was cancelled (the runtime kills the container);
    - ``handed_over`` when this worker's shutdown grace is over and another worker is there to adopt
      the running container (the runtime lets it run; see ``hand_over.lua``), else ``worker_shutdown``
      (the runtime kills it and the attempt is handed back as ``requeue``).
    """

    def __init__(self, context: WorkerContext, key: tuple[str, str, int], lease: float):
        self.context = context
        self.key = key
        self.lease = lease
        self.renewed = time.monotonic()

    def __call__(self) -> str | None:
        store, (run_id, step, attempt) = self.context.store, self.key
        if time.monotonic() - self.renewed >= self.lease / 3:
            held = store.renew_lease(run_id, step, attempt, self.lease, self.context.holder)
            if held is Lease.LOST:
                return "lost"
            if held is Lease.TAKEN:
                return "adopted_elsewhere"
            self.renewed = time.monotonic()
        if store.is_cancelled(run_id, step):
            return "cancelled"
        if self.context.shutdown_grace_over():
            return self.hand_over()
        return None

    def hand_over(self) -> str:
        """Let another worker adopt the running container, when there is another worker to do it."""
        context, (run_id, step, attempt) = self.context, self.key
        try:
            me = context.name
            others = [name for name in context.dispatcher.worker_names()
                      if not me or (name != me and not name.startswith(f"{me}-"))]
            if others and context.engine.hand_over(run_id, step, attempt, context.holder):
                log.info("%s %s attempt %s handed over, its container still running (workers: %s)", run_id, step,
                         attempt, ", ".join(sorted(others)[:5]))
                return "handed_over"
        except Exception as exc:  # Redis away: fall back to stopping the step
            log.warning("could not hand %s %s attempt %s over: %s", run_id, step, attempt, exc)
        return "worker_shutdown"
