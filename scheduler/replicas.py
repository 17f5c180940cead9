"""Writes that must survive a failover: confirmed on a replica (``WAIT``) before anyone acts on them.

Redis replicates asynchronously. A transition acknowledged by a primary that dies before its replica
has it is missing on the primary Sentinel promotes, and three such losses make a step run twice: a
lost *start* (the worker runs the container, the new primary delivers the attempt again), a lost
*adopt* (the adopter follows the container, the new primary lets another worker adopt or lose it),
a lost *finish* (the worker removes the ended container, the new primary finds the attempt running
without it and retries the step). So these three transitions go to Redis in one pipeline with
``WAIT 1 <timeout>``: on one connection, so that the WAIT covers exactly that write, and the caller
acts only once a replica holds it, or the timeout passed (then it goes on, and says so in the log:
availability first; the primary's ``min-replicas-to-write`` is what refuses writes outright).

Whether the primary has replicas is asked (``INFO replication``) once every ``RECHECK_SECONDS``: a
Redis without replicas pays nothing, and after a failover the new primary's replicas are seen within
that time. Part of the store layer (it talks to Redis); the store calls it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis

log = logging.getLogger("conveyor.store")
WAIT_TIMEOUT_MS = 1000  # a replica on the same network acknowledges in well under a millisecond
RECHECK_SECONDS = 10.0


class ReplicaWait:
    """Runs a Lua transition followed by ``WAIT 1`` when the primary has replicas (see the module)."""

    def __init__(self, client: redis.Redis, *, timeout_ms: int = WAIT_TIMEOUT_MS,
                 recheck: float = RECHECK_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.timeout_ms = timeout_ms
        self.recheck = recheck
        self.clock = clock
        self._replicas = 0
        self._checked: float | None = None
        self._lock = threading.Lock()
        self.unconfirmed = 0  # writes no replica acknowledged within the timeout (this process)

    def replicas(self) -> int:
        """The primary's connected replicas, asked at most every ``recheck`` seconds (0 when it cannot tell)."""
        with self._lock:
            now = self.clock()
            if self._checked is None or now - self._checked >= self.recheck:
                self._checked = now
                try:
                    self._replicas = int(self.client.info("replication").get("connected_slaves", 0))
                except (redis.RedisError, ValueError):
                    self._replicas = 0  # unreachable now: the write itself will say so
            return self._replicas

    def run(self, script: Any, args: Sequence[Any], what: str) -> Any:
        """``script(args=args)``, confirmed on a replica when there is one; returns the script's reply."""
        if not self.replicas():
            return script(args=list(args))
        with self.client.pipeline(transaction=False) as pipe:
            script(args=list(args), client=pipe)
            pipe.execute_command("WAIT", 1, self.timeout_ms)
            reply, acknowledged = pipe.execute()
        if int(acknowledged) < 1:
            self.unconfirmed += 1
            log.warning("no replica acknowledged the %s within %d ms: a failover now could lose it "
                        "(and run a step twice)", what, self.timeout_ms)
        return reply
