"""The RQ entry point: one call runs one step attempt, start to end, and hands on what became ready."""

from __future__ import annotations

import logging
import os
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime

import redis

from runner.containers import Outcome, labels_for
from runner.context import current
from runner.secrets import Masker, SecretError
from runner.secrets import resolve as resolve_secrets
from scheduler import conditions, signing
from scheduler.logs import attempt_context, bind
from scheduler.model import AttemptOutcome, StepPlan
from scheduler.results import Started, StartStatus
from scheduler.settings import Settings

log = logging.getLogger("conveyor.runner")
REDIS_PATIENCE = 120.0


def run_attempt(run_id: str, step: str, attempt: int, prefix: str = "conveyor") -> str:
    """Claim the attempt (fenced), run its container, record the result, enqueue the next steps."""
    with attempt_context(run_id, None, step, attempt):  # every log line names the run, step and attempt
        return _run_attempt(run_id, step, attempt, prefix)


def _run_attempt(run_id: str, step: str, attempt: int, prefix: str) -> str:
    ctx = current(prefix)
    store, engine = ctx.store, ctx.engine
    now = datetime.now(UTC)
    outage = ctx.global_outage(now)
    if outage is not None:
        # No new step starts inside a global outage: deliver this attempt again when it ends.
        name, _, end = outage
        engine.defer(run_id, step, attempt, end, now=now)
        log.info("%s %s attempt %s deferred to %s by global outage %s", run_id, step, attempt, end, name)
        return "deferred"
    [condition] = store.step_fields(run_id, step, "when")
    if condition and not conditions.evaluate(condition, store.condition_context(run_id)[0]):
        skipped = engine.skip(run_id, step, attempt)
        log.info("%s %s skipped: its condition is false: %s", run_id, step, condition)
        return skipped.state
    lease = ctx.settings.attempt_lease
    started = engine.start(run_id, step, attempt, host=ctx.host, pid=ctx.pid, worker=ctx.name, lease=lease)
    if started.status is not StartStatus.OK:
        log.info("%s %s attempt %s not started: %s", run_id, step, attempt, started.status)
        return started.status
    plan = started.plan
    refusal = _plan_refusal(started, run_id, step, ctx.settings.signing_key)
    if refusal is not None or plan is None:
        # Nothing of this plan runs: no container is created. (A Redis writer without the key wrote it.)
        log.error("%s %s attempt %s refused: %s", run_id, step, attempt, refusal)
        finished = _with_redis_retries(lambda: engine.finish(
            run_id, step, attempt, AttemptOutcome.FAILED, {"reason": "plan_signature", "error": refusal}))
        return finished.state
    bind(dag=plan.dag)
    log.info("%s %s attempt %s started: %s", run_id, step, attempt, " ".join(plan.argv))

    def store_output(chunk: bytes) -> None:
        store.append_log(run_id, step, attempt, chunk)

    renewed = time.monotonic()

    def should_stop() -> str | None:
        """Polled while the container runs: cancel, a lost lease, or the worker's shutdown grace ending."""
        nonlocal renewed
        if time.monotonic() - renewed >= lease / 3:
            if not store.renew(run_id, step, attempt, lease):
                return "lost"
            renewed = time.monotonic()
        if store.is_cancelled(run_id, step):
            return "cancelled"
        if ctx.shutdown_grace_over():
            return "worker_shutdown"
        return None

    began = time.perf_counter()
    masker = Masker({}, store_output)
    try:
        prepared, secret_values = prepare(plan, ctx.settings)
        masker = Masker(secret_values, store_output)
        outcome = ctx.runtime.run(prepared, labels_for(plan, attempt, prefix, store.store_id), masker, should_stop)
    except StepRefused as exc:
        outcome = Outcome(None, exc.reason, str(exc))
    except Exception as exc:
        log.error("%s %s attempt %s: runner error\n%s", run_id, step, attempt, traceback.format_exc())
        outcome = Outcome(None, "runner_error", f"internal error in the runner: {exc!r}")
    masker.close()
    container_seconds = round(time.perf_counter() - began, 4)
    result = {"cancelled": AttemptOutcome.CANCELLED, "worker_shutdown": AttemptOutcome.REQUEUE}.get(
        outcome.reason or "", AttemptOutcome.FAILED)
    if outcome.ok:
        result = AttemptOutcome.SUCCESS
    delay = plan.backoff.delay(attempt) if result is AttemptOutcome.FAILED and attempt <= plan.retries else 0.0
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
    try:
        finished = _with_redis_retries(lambda: engine.finish(run_id, step, attempt, result, record,
                                                             retry_delay=delay))
    finally:  # recorded (the next steps are queued): the container may go, off the critical path
        release = getattr(ctx.runtime, "after_recorded", None)
        if release is not None:
            release(outcome.container_id)
    log.info("%s %s attempt %s: %s%s", run_id, step, attempt, finished.state,
             f" ({outcome.error})" if outcome.error else "")
    return finished.state


def _plan_refusal(started: Started, run_id: str, step: str, key: bytes | None) -> str | None:
    """Why this worker must not run the stored plan, or None. Without a key plans are not checked
    (the worker warns at start); with one, only a plan signed with it for this run and step runs."""
    if started.plan is None:
        return "the stored plan is not a plan Conveyor wrote; nothing was run"
    if key is None:
        return None
    if not started.signature:
        return "the plan has no signature and this worker verifies plans (CONVEYOR_SIGNING_KEY); nothing was run"
    if not signing.verify(key, run_id, step, started.plan_json, started.signature):
        return "the plan's signature does not verify: it was changed after it was signed; nothing was run"
    return None


class StepRefused(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def prepare(plan: StepPlan, settings: Settings) -> tuple[StepPlan, dict[str, str]]:
    """The plan as this worker runs it: its default limits, secret values in the env (only in memory),
    and mounts checked against the paths it allows."""
    for mount in plan.mounts:
        source = os.path.realpath(mount.source)
        if not any(source == os.path.realpath(a) or source.startswith(os.path.realpath(a).rstrip("/") + "/")
                   for a in settings.allowed_mounts):
            raise StepRefused("mount_not_allowed", f"this worker does not allow mounting {mount.source} "
                              "(start it with --allow-mount PATH)")
    try:
        secret_values = resolve_secrets(plan.secrets)
    except SecretError as exc:
        raise StepRefused("secret_missing", str(exc)) from None
    prepared = replace(
        plan,
        env={**plan.env, **secret_values},
        cpus=plan.cpus if plan.cpus is not None else settings.default_cpus,
        memory=plan.memory if plan.memory is not None else settings.default_memory,
    )
    return prepared, secret_values


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


def _engine_version(ctx) -> str | None:
    try:
        return ctx.runtime.engine_version()
    except Exception:
        return None
