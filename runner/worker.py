"""``ctl worker``: an RQ worker that runs step attempts in its own process (no fork per job).

RQ's ``SimpleWorker`` saves the fork per job (25–28 ms here) because every job is a container
that runs out of process anyway. Delayed retries are not RQ's scheduled jobs: every worker moves
due ones onto the queues itself (``DelayedMover``), so a killed worker takes none with it.

``--concurrency N`` runs N slots in one process: N RQ workers (one per slot, each registered, with
its own name, state and heartbeat: ``conveyor_workers`` and the busy ratio count slots), each in a
thread, sharing the process's store, engine and container runtime. An attempt mostly waits on its
container, so a thread per slot costs a few megabytes where a process costs sixty
(``bench/footprint.py``). Leases, fencing and logs are per attempt as with one slot; signals reach
the main thread, which tells every slot: idle slots stop within ``SLOT_POLL`` seconds, running ones
get the shutdown grace, then their containers are stopped and their attempts handed back. A second
signal ends the grace at once. RQ's own job timeout (a safety net behind the container timeout) is
a timer in a slot, as SIGALRM only reaches the main thread.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Sequence
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.timeouts import TimerDeathPenalty

from runner import admission
from runner.admission import ConveyorJob, JobRefused
from runner.adoption import Adopter
from runner.context import WorkerContext, install
from scheduler import health
from scheduler.dispatch import FAILURE_TTL, DelayedMover
from scheduler.model import QUEUES
from scheduler.reaper import Reaper
from scheduler.settings import Settings

FAIR_TURN = 5
# RQ's worker key TTL. RQ blocks on the queues for TTL - 15 s between two turns of its loop, so this
# also bounds how long /readyz waits before it calls an idle worker's loop stuck (RQ's 420 s default
# would make that 7 minutes).
WORKER_TTL = 60
SLOT_POLL = 2  # seconds: how often an idle slot of a --concurrency worker looks whether it must stop
log = logging.getLogger("conveyor.runner")


class _RedisAwayWithoutTraceback(logging.Filter):
    """RQ logs "found an unhandled exception, quitting..." with a traceback when Redis goes away mid-loop
    (a restart, a Sentinel failover); :func:`work` starts the loop again. One line says it all."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.ReadOnlyError):
            record.msg = f"{record.getMessage()} (Redis unreachable: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


logging.getLogger("rq.worker").addFilter(_RedisAwayWithoutTraceback())


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
    prefix = "conveyor"
    slot_stop: threading.Event | None = None  # set on the slots of a --concurrency worker: stop when set

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        """RQ's dequeue, except that a job that cannot even be read as Conveyor's (oversized, malformed)
        is refused and the worker dequeues the next one, instead of the loop ending on it. A slot waits
        ``SLOT_POLL`` seconds at a time, and returns None (its loop ends) once told to stop."""
        while True:
            if self.slot_stop is not None:
                if self.slot_stop.is_set():
                    return None
                if timeout is not None:  # not --burst: wake up now and then to look at the flag
                    max_idle_time = SLOT_POLL
            try:
                found_job = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception as exc:  # raised by Job.fetch; RQ attaches the job's id and queue
                found = getattr(exc, "job_id", None)
                if found is None:
                    raise
                reason = exc.reason if isinstance(exc, JobRefused) else f"the job cannot be read ({exc!r:.200})"
                self.refuse(found, getattr(exc, "queue", None), reason)
                continue
            if found_job is None and self.slot_stop is not None and timeout is not None:
                continue  # idle for SLOT_POLL seconds: look at the flag, then wait again
            return found_job

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run the job only if it is Conveyor's attempt job for this prefix (see runner/admission.py)."""
        try:
            admission.check(job, self.prefix)
        except JobRefused as exc:
            self.refuse(job.id, queue, exc.reason)
            return
        with health.busy("worker"):  # a step may run for hours without the loop turning
            super().execute_job(job, queue)

    def refuse(self, job_id: str, queue: Queue | None, reason: str) -> None:
        """Move a job to RQ's failed registry with the reason; nothing of it is called."""
        log.warning("refused job %.100r on queue %s: %s", job_id, queue.name if queue else "?", reason)
        try:
            with self.connection.pipeline() as pipe:  # by hand: RQ's registry.add would re-save the job
                pipe.hset(Job.key_for(job_id), mapping={"status": "failed", "exc_info": zlib.compress(
                    f"refused by Conveyor worker {self.name}: {reason}".encode())})
                pipe.expire(Job.key_for(job_id), FAILURE_TTL)
                if queue is not None:
                    pipe.zadd(queue.failed_job_registry.key, {job_id: time.time() + FAILURE_TTL})
                pipe.execute()
            if self.context is not None:
                self.context.store.count_refused_job()
        except redis.RedisError as exc:  # recording the refusal is best effort; refusing is not
            log.warning("could not record the refusal of %.100r: %s", job_id, exc)

    def _install_signal_handlers(self) -> None:
        if self.slot_stop is None:  # a slot runs in a thread: the process's main thread takes the signals
            super()._install_signal_handlers()

    def request_stop(self, signum, frame) -> None:
        """Stop taking work; the running step gets the shutdown grace, then is stopped and handed back."""
        if self.context is not None and self.context.stopping_since is None:
            self.context.stopping_since = time.monotonic()
        super().request_stop(signum, frame)

    def heartbeat(self, *args, **kwargs) -> None:
        super().heartbeat(*args, **kwargs)
        health.beat("worker", self.dequeue_timeout + 30, "idle")

    def reorder_queues(self, reference_queue: Queue) -> None:
        self._taken += 1
        self._ordered_queues = self.queues[::-1] if self._taken % FAIR_TURN == FAIR_TURN - 1 else self.queues[:]

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=0.2, daemon=True, exception_handler=self._pubsub_exception_handler)


def work(settings: Settings, queues: Sequence[str] = QUEUES, *, burst: bool = False, name: str | None = None,
         log_level: str = "INFO", concurrency: int = 1) -> bool:
    """Take attempts from ``queues`` and run them, up to ``concurrency`` at once (see the module's doc)."""
    name = name or f"{socket.gethostname()}-{os.getpid()}"
    if settings.signing_key is None:
        log.warning("CONVEYOR_SIGNING_KEY is not set: this worker runs step plans without verifying who wrote "
                    "them (anyone who can write to its Redis can choose what it runs)")
    context = WorkerContext(settings, name=name)
    install(context)
    context.store.warn_if_exposed(log)
    logging.getLogger("conveyor.runner").setLevel(log_level)
    logging.getLogger("conveyor.reaper").setLevel(log_level)
    reaper = Reaper(context.engine, context.runtime, lost_counts=settings.lost_counts, adopter=Adopter(context))
    reaper.run_in_thread()
    DelayedMover(context.dispatcher).run_in_thread(reaper.stop)
    try:
        if concurrency > 1:
            return _work_slots(context, queues, burst, name, log_level, concurrency)
        return _work_loop(context, queues, burst, name, log_level)
    finally:
        reaper.stop.set()
        drain = getattr(context.runtime, "drain", None)
        if drain is not None:
            drain()  # the removals still queued: nothing left for the orphan sweep


def _work_loop(context: WorkerContext, queues: Sequence[str], burst: bool, name: str, log_level: str,
               slot_stop: threading.Event | None = None, made: list[ConveyorWorker] | None = None) -> bool:
    """One RQ worker loop (the process's, or one slot's), started again after a Redis outage."""
    settings = context.settings
    backoff = 0.5
    while True:
        connection = settings.connect(decode=False)
        worker = ConveyorWorker([Queue(q, connection=connection, serializer=JSONSerializer) for q in queues],
                                connection=connection, serializer=JSONSerializer, job_class=ConveyorJob,
                                worker_ttl=WORKER_TTL,
                                name=f"{name}-{int(time.time() * 1000) % 100000}" if backoff > 0.5 else name)
        worker.context = context
        worker.prefix = settings.prefix
        if slot_stop is not None:
            worker.slot_stop = slot_stop
            worker.death_penalty_class = TimerDeathPenalty  # SIGALRM reaches only the main thread
        if made is not None:
            made.append(worker)
        worker.work(burst=burst, logging_level=log_level)
        stopping = slot_stop is not None and slot_stop.is_set()
        if burst or stopping or context.stopping_since is not None or worker._stop_requested:
            return True
        # RQ's loop ends on a Redis error: ride it out instead of exiting (no crash loop).
        log.warning("worker loop %s ended (Redis unreachable?); starting again in %.1fs", name, backoff)
        time.sleep(backoff)
        backoff = min(backoff * 2, 10.0)


def _work_slots(context: WorkerContext, queues: Sequence[str], burst: bool, name: str, log_level: str,
                concurrency: int) -> bool:
    """``concurrency`` slots, one thread and one RQ worker (``NAME-1``, ``NAME-2``...) each; the main
    thread waits for them and turns SIGTERM/SIGINT into their stop (see the module's doc)."""
    context.store, context.engine, context.runtime  # noqa: B018 - built once, before the slots share them
    stop = threading.Event()
    made: list[ConveyorWorker] = []

    def on_signal(signum: int, frame: Any) -> None:
        if context.stopping_since is None:
            context.stopping_since = time.monotonic()
            log.info("stopping: no new attempts; running ones get %.0fs", context.settings.shutdown_grace)
        else:
            context.stopping_since = float("-inf")  # a second signal: the grace is over now
            log.info("stopping now: running attempts are stopped and handed back")
        stop.set()
        for worker in list(made):
            worker._stop_requested = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    slots = [threading.Thread(target=_work_loop, args=(context, queues, burst, f"{name}-{i}", log_level, stop, made),
                              name=f"slot-{i}", daemon=True) for i in range(1, concurrency + 1)]
    try:
        for slot in slots:
            slot.start()
        while any(slot.is_alive() for slot in slots):
            for slot in slots:
                slot.join(timeout=0.5)  # with a timeout: signals are handled between two waits
    finally:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return True
