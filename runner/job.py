"""The RQ entry point: one call runs one step attempt, start to end, and hands on what became ready."""

from __future__ import annotations

import logging
import time
import traceback
from datetime import UTC, datetime

import redis

from runner.containers import Outcome, labels_for
from runner.context import current
from scheduler.store import Ready

log = logging.getLogger("conveyor.runner")
REDIS_PATIENCE = 120.0


def run_attempt(run_id: str, step: str, attempt: int, prefix: str = "conveyor") -> str:
    """Claim the attempt (fenced), run its container, record the result, enqueue the next steps."""
    ctx = current(prefix)
    store = ctx.store
    now = datetime.now(UTC)
    outage = ctx.global_outage(now)
    if outage is not None:
        # No new step starts inside a global outage: deliver this attempt again when it ends.
        name, _, end = outage
        timeout = store.step_plan(run_id, step).timeout
        ctx.dispatcher.enqueue([Ready(run_id, step, attempt, _queue_of(store, run_id, step), timeout,
                                      delay=(end - now).total_seconds(), tag=f"after-{int(end.timestamp())}")])
        log.info("%s %s attempt %s deferred to %s by global outage %s", run_id, step, attempt, end, name)
        return "deferred"
    lease = ctx.settings.attempt_lease
    status, plan = store.start_attempt(run_id, step, attempt, host=ctx.host, pid=ctx.pid, worker=ctx.name,
                                       lease=lease)
    if status != "ok" or plan is None:
        log.info("%s %s attempt %s not started: %s", run_id, step, attempt, status)
        return status
    log.info("%s %s attempt %s started: %s", run_id, step, attempt, " ".join(plan.argv))

    def on_output(chunk: bytes) -> None:
        store.append_log(run_id, step, attempt, chunk)

    renewed = time.monotonic()

    def should_stop() -> str | None:
        """Polled while the container runs: cancel, a lost lease, or the worker's shutdown grace ending."""
        nonlocal renewed
        if time.monotonic() - renewed >= lease / 3:
            if not store.renew(run_id, step, attempt, lease):
                return "lost"
            renewed = time.monotonic()
        if store.is_cancelled(run_id):
            return "cancelled"
        if ctx.shutdown_grace_over():
            return "worker_shutdown"
        return None

    began = time.perf_counter()
    try:
        outcome = ctx.runtime.run(plan, labels_for(plan, attempt, prefix, store.store_id), on_output, should_stop)
    except Exception as exc:
        log.error("%s %s attempt %s: runner error\n%s", run_id, step, attempt, traceback.format_exc())
        outcome = Outcome(None, "runner_error", f"internal error in the runner: {exc!r}")
    container_seconds = round(time.perf_counter() - began, 4)
    result = {"cancelled": "cancelled", "worker_shutdown": "requeue"}.get(outcome.reason or "", "failed")
    if outcome.ok:
        result = "success"
    delay = plan.backoff.delay(attempt) if result == "failed" and attempt <= plan.retries else 0.0
    record = {
        "exit_code": outcome.exit_code,
        "image": plan.image,
        "image_id": outcome.image_id,
        "image_digest": outcome.image_digest,
        "container_id": outcome.container_id,
        "engine_version": _engine_version(ctx),
        "reason": outcome.reason,
        "error": outcome.error,
        "container_seconds": container_seconds,
    }
    finished = _with_redis_retries(lambda: store.finish_attempt(run_id, step, attempt, result, record,
                                                                 retry_delay=delay))
    ctx.dispatcher.enqueue(finished.ready)
    log.info("%s %s attempt %s: %s%s", run_id, step, attempt, finished.state,
             f" ({outcome.error})" if outcome.error else "")
    return finished.state


def _with_redis_retries(call, patience: float = REDIS_PATIENCE):
    """Keep trying through a Redis restart: a result already computed must not be lost to a blip.
    (If Redis stays away longer, the attempt's lease expires and the reaper retries the step.)"""
    deadline = time.monotonic() + patience
    delay = 0.2
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("Redis unreachable while recording a result (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _queue_of(store, run_id: str, step: str) -> str:
    return store.r.hget(store.keys.step(run_id, step), "queue") or "default"


def _engine_version(ctx) -> str | None:
    try:
        return ctx.runtime.engine_version()
    except Exception:
        return None
