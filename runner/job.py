"""The RQ entry point: one call runs one step attempt, start to end, and hands on what became ready."""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime

import redis

from runner.attempt_log import AttemptLog
from runner.checkpoints import Checkpoint
from runner.containers import Outcome, labels_for
from runner.context import current
from runner.lease import LeaseKeeper
from runner.secrets import SecretError
from runner.secrets import resolve as resolve_secrets
from scheduler import conditions, signing
from scheduler.logs import attempt_context, bind
from scheduler.model import AttemptOutcome, StepPlan, mapped_instance
from scheduler.output_trust import VerifiedOutputs
from scheduler.outputs import HANDLER_STEPS, OutputRefused, OutputUnavailable, render_attempt
from scheduler.results import Adopted, Started, StartStatus
from scheduler.settings import Settings

log = logging.getLogger("conveyor.runner")
REDIS_PATIENCE = 120.0


def run_attempt(run_id: str, step: str, attempt: int, prefix: str = "conveyor") -> str:
    """Claim the attempt (fenced), run its container, record the result, enqueue the next steps."""
    with attempt_context(run_id, None, step, attempt):  # every log line names the run, step and attempt
        try:
            return _run_attempt(run_id, step, attempt, prefix)
        except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError) as exc:
            # Redis went away (a restart, a Sentinel failover) for longer than the retries here wait. Nothing
            # is lost: an attempt not started yet is delivered again by the reconciler; one started holds a
            # lease that expires, and its container is adopted or the step retried (scheduler/reaper.py).
            log.warning("%s %s attempt %s: Redis unreachable (%s); the attempt is left to the reconciler and "
                        "the reaper", run_id, step, attempt, exc)
            return "redis_unavailable"


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
    condition, wait_for = store.step_fields(run_id, step, "when", "wait_for")
    if condition and not conditions.evaluate(condition, store.condition_context(run_id)[0]):
        skipped = engine.skip(run_id, step, attempt)
        log.info("%s %s skipped: its condition is false: %s", run_id, step, condition)
        return skipped.state
    if wait_for:
        waited = engine.wait(run_id, step, attempt)
        if waited is not None:
            log.info("%s %s attempt %s: %s (wait_for)", run_id, step, attempt, waited.state)
            return waited.state
    lease = ctx.settings.attempt_lease
    key = (run_id, step, attempt)
    started = engine.start(run_id, step, attempt, host=ctx.host, pid=ctx.pid, worker=ctx.holder, lease=lease,
                           engine_id=_engine_id(ctx))
    if started.status is not StartStatus.OK:
        log.info("%s %s attempt %s not started: %s", run_id, step, attempt, started.status)
        return started.status
    plan = started.plan
    refusal = plan_refusal(started, run_id, step, ctx.settings.signing_key)
    if refusal is not None or plan is None:
        # Nothing of this plan runs: no container is created. (A Redis writer without the key wrote it.)
        log.error("%s %s attempt %s refused: %s", run_id, step, attempt, refusal)
        finished = _with_redis_retries(lambda: engine.finish(
            run_id, step, attempt, AttemptOutcome.FAILED, {"reason": "plan_signature", "error": refusal}))
        return finished.state
    bind(dag=plan.dag)
    try:
        plan, rendered = _render_late(store, plan, step)
    except OutputUnavailable as exc:
        # Nothing is rendered, no container created: an upstream output is missing or (output_signature)
        # does not verify (a Redis writer without the key changed it).
        message = str(exc)
        reason = "output_signature" if isinstance(exc, OutputRefused) else "output_unavailable"
        if reason == "output_signature":
            log.error("%s %s attempt %s refused: %s", run_id, step, attempt, message)
        else:
            log.info("%s %s attempt %s: %s", run_id, step, attempt, message)
        finished = _with_redis_retries(lambda: engine.finish(
            run_id, step, attempt, AttemptOutcome.FAILED, {"reason": reason, "error": message}))
        return finished.state
    log.info("%s %s attempt %s started: %s", run_id, step, attempt, " ".join(plan.argv))
    ctx.following.add(key)
    try:
        return _follow(ctx, key, plan, lease, rendered)
    finally:
        ctx.following.discard(key)


def _follow(ctx, key: tuple[str, str, int], plan: StepPlan, lease: float, rendered: dict[str, str]) -> str:
    run_id, step, attempt = key
    should_stop = LeaseKeeper(ctx, key, lease)
    began = time.perf_counter()
    began_at = time.time()
    output = AttemptLog(ctx.store, key, ctx.holder)
    try:
        prepared, secret_values = prepare(plan, ctx.settings)
        output.mask_with(secret_values)
        extra = {"checkpoint": _checkpoint(ctx, key)} if getattr(ctx.runtime, "supports_checkpoints", False) else {}
        outcome = ctx.runtime.run(prepared, labels_for(plan, attempt, ctx.settings.prefix, ctx.store.store_id),
                                  output, should_stop, keep=True, **extra)
        from runner.adoption import through_engine_loss  # the engine went away mid-step: wait for it

        outcome = through_engine_loss(ctx, key, plan, outcome, output, should_stop)
    except StepRefused as exc:
        outcome = Outcome(None, exc.reason, str(exc))
    except Exception as exc:
        log.error("%s %s attempt %s: runner error\n%s", run_id, step, attempt, traceback.format_exc())
        outcome = Outcome(None, "runner_error", f"internal error in the runner: {exc!r}")
    output.close()
    if outcome.detached:  # another worker follows the container now and records its end
        log.info("%s %s attempt %s: %s; its container runs on", run_id, step, attempt, outcome.reason)
        return str(outcome.reason)
    state = record_result(ctx, key, plan, outcome, round(time.perf_counter() - began, 4), rendered, began_at)
    if outcome.kept and outcome.container_id:  # removed only once its result is recorded (else: adopted),
        # in the background where the runtime can (the next step is queued: nothing waits for the removal)
        getattr(ctx.runtime, "reap_later", ctx.runtime.reap)([outcome.container_id])
    return state


def _checkpoint(ctx, key: tuple[str, str, int]) -> Checkpoint:
    """The step's last saved checkpoint to put in place, and how this attempt saves a new one (fenced)."""
    run_id, step, attempt = key
    return Checkpoint(ctx.store.checkpoint(run_id, step),
                      lambda data: ctx.store.save_checkpoint(run_id, step, attempt, data, holder=ctx.holder))


def record_result(ctx, key: tuple[str, str, int], plan: StepPlan, outcome: Outcome, container_seconds: float,
                  rendered: dict[str, str] | None = None, since: float | None = None) -> str:
    """Finish the attempt with its outcome (fenced by this worker holding it) and enqueue what became ready.
    ``rendered``: the argv and env it ran with, when they read upstream outputs; ``since``: when it started
    (a sensor's first poke). A sensor's "not yet" makes the attempt wait for its next poke instead."""
    run_id, step, attempt = key
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
        **(rendered or {}),
        **(_signed_outputs(ctx, key, outcome.outputs) if outcome.outputs is not None else {}),
    }
    sensor = plan.sensor
    if sensor is not None and _not_ready(plan, outcome):
        finished = _with_redis_retries(lambda: ctx.engine.poke(
            run_id, step, attempt, interval=sensor.interval, timeout=sensor.timeout, since=since or time.time(),
            record=record, retry_delay=plan.backoff.delay(attempt) if attempt <= plan.retries else 0.0,
            holder=ctx.holder))
        log.info("%s %s attempt %s: %s", run_id, step, attempt, finished.state)
        return finished.state
    finished = _with_redis_retries(lambda: ctx.engine.finish(run_id, step, attempt, result, record,
                                                             retry_delay=delay, holder=ctx.holder))
    log.info("%s %s attempt %s: %s%s", run_id, step, attempt, finished.state,
             f" ({outcome.error})" if outcome.error else "")
    return finished.state


def _signed_outputs(ctx, key: tuple[str, str, int], outputs) -> dict[str, str]:
    """A successful attempt's outputs as stored, with their signature (``outputs_sig``; '' without a key)
    bound to run, step (``STEP[i]`` for an instance) and attempt: finish.lua keeps both on the step."""
    text = json.dumps(dict(outputs))
    signing_key = ctx.settings.signing_key
    return {"outputs": text, "outputs_sig": signing.sign_outputs(signing_key, *key, text) if signing_key else ""}


def _not_ready(plan: StepPlan, outcome: Outcome) -> bool:
    """A sensor's poke that says "not yet": its exit code is the sensor's not_ready_exit_code."""
    return (plan.sensor is not None and outcome.reason == "exit_code"
            and outcome.exit_code == plan.sensor.not_ready_exit_code)


def _signed_step(step: str) -> str:
    """The step whose plan signature an attempt checks: an instance STEP[i] runs (and checks) STEP's."""
    instance = mapped_instance(step)
    return instance[0] if instance else step


def _render_late(store, plan: StepPlan, step: str) -> tuple[StepPlan, dict[str, str]]:
    """The plan with upstream outputs (and a mapped instance's item) rendered in (scheduler/outputs.py),
    and what to record on the attempt for reproducibility: the argv and env it ran with, when they
    differ from the stored plan. With the store's signing key, every output and item is verified first
    (scheduler/output_trust.py; :class:`OutputRefused` if one does not)."""
    deferred = bool(plan.deferred) or plan.step in HANDLER_STEPS  # a handler's env holds the run's state
    key = getattr(store, "signing_key", None)
    rendered = render_attempt(VerifiedOutputs(store, key) if key else store, plan, step)
    if not deferred:
        return rendered, {}
    return rendered, {"argv": json.dumps(list(rendered.argv)), "env": json.dumps(dict(rendered.env))}


def plan_refusal(started: Started | Adopted, run_id: str, step: str, key: bytes | None,
                 consequence: str = "nothing was run") -> str | None:
    """Why this worker must not run (or adopt) the stored plan, or None. Without a key plans are not
    checked (the worker warns at start); with one, only a plan signed with it for this run and step runs
    (for a mapped instance STEP[i], STEP's plan)."""
    if started.plan is None:
        return f"the stored plan is not a plan Conveyor wrote; {consequence}"
    if key is None:
        return None
    if not started.signature:
        return f"the plan has no signature and this worker verifies plans (CONVEYOR_SIGNING_KEY); {consequence}"
    if not signing.verify(key, run_id, _signed_step(step), started.plan_json, started.signature):
        return f"the plan's signature does not verify: it was changed after it was signed; {consequence}"
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


def _engine_id(ctx) -> str:
    """Which engine runs this worker's containers (so that an adopter on the same one may judge one gone)."""
    try:
        from runner.adoption import adoption_for

        return adoption_for(ctx.runtime).engine_id()
    except Exception:
        return ""


def _engine_version(ctx) -> str | None:
    try:
        return ctx.runtime.engine_version()
    except Exception:
        return None
