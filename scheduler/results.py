"""What the Lua transitions return, as types, decoded in one place (:func:`decode_*` below).

Every script's reply is a Lua table; the store hands callers these dataclasses instead, so that no
caller indexes a reply or compares a status string it typed itself. ``Ready`` entries (attempts
that became runnable) are for the engine only: it enqueues them in the same call
(:mod:`scheduler.engine`), and nothing else needs to see them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from scheduler.model import RunState, StepPlan, StepState


@dataclass(frozen=True)
class Ready:
    """A step attempt that may run now (or after ``delay`` seconds): the engine enqueues it."""

    run_id: str
    step: str
    attempt: int
    queue: str
    timeout: float | None
    delay: float = 0.0
    tag: str = ""  # a re-delivery of the same attempt (e.g. deferred past an outage) gets its own job id


class StartStatus(StrEnum):
    OK = "ok"  # the attempt is ours: run it
    STALE = "stale"  # not the attempt the step waits for (a duplicate delivery, a late job)
    CANCELLED = "cancelled"  # the run or step was cancelled before it started
    POOLED = "pooled"  # waits in its pool's queue for a slot, without holding a worker


@dataclass(frozen=True)
class Started:
    status: StartStatus
    plan: StepPlan | None = None  # with OK (None if the stored plan is not one: the runner refuses it)
    plan_json: str = ""  # the plan exactly as stored, and its signature (see scheduler/signing.py)
    signature: str = ""


class Fence(StrEnum):
    """A transition that changed nothing because it was fenced off."""

    STALE = "stale"  # the attempt is no longer the current one (or the step moved on)
    ALIVE = "alive"  # lose.lua: the lease was renewed in time


@dataclass(frozen=True)
class Finished:
    """The step's new state (``retrying`` when another attempt follows), or the fence that stopped it."""

    state: StepState | Fence
    ready: tuple[Ready, ...] = ()

    @property
    def changed(self) -> bool:
        return not isinstance(self.state, Fence)


class Lease(StrEnum):
    """What a worker's heartbeat learns (renew.lua)."""

    HELD = "held"  # still ours: go on
    LOST = "lost"  # declared lost: stop the container
    TAKEN = "taken"  # another worker adopted it (or it was handed over): let the container run, stop following


@dataclass(frozen=True)
class Adopted:
    """adopt.lua: ``status`` is OK when this worker now holds the attempt (the plan to follow it with, how
    many bytes of the container's output the store already has, and when the attempt really started),
    else the fence that refused it (another worker renewed or adopted it first, or it moved on)."""

    status: StartStatus | Fence
    plan: StepPlan | None = None  # with OK (None if the stored plan is not one: the adopter refuses it)
    log_bytes: int = 0
    started_at: str = ""
    plan_json: str = ""  # the plan exactly as stored, and its signature: checked as a starting worker does
    signature: str = ""


@dataclass(frozen=True)
class RunCancel:
    """``already_ended``: the run had ended before (``state`` says how); otherwise ``state`` is
    ``cancelled``, or ``cancelling`` while ``running`` steps are being stopped."""

    state: str
    running: int = 0
    already_ended: bool = False
    ready: tuple[Ready, ...] = ()


class StepCancelStatus(StrEnum):
    CANCELLED = "cancelled"  # it had not started: settled now
    STOPPING = "stopping"  # running: its worker stops the container
    DONE = "done"  # it had already ended


@dataclass(frozen=True)
class StepCancel:
    status: StepCancelStatus
    ready: tuple[Ready, ...] = ()


@dataclass(frozen=True)
class SlaMiss:
    run_id: str
    step: str  # '' for the run's deadline
    dag: str
    ready: tuple[Ready, ...] = ()


@dataclass(frozen=True)
class Created:
    run_id: str
    created: bool  # False: the idempotency key was taken; ``run_id`` is the existing run
    ready: tuple[Ready, ...] = ()


# --- decoding (the one place that knows the scripts' reply shapes) --------------------------------


def decode_ready(entries: Sequence[Any], delay: float = 0.0) -> tuple[Ready, ...]:
    return tuple(
        Ready(rid, step, int(n), queue, float(timeout) if timeout else None, delay)
        for rid, step, n, queue, timeout in entries
    )


def decode_finished(reply: Sequence[Any]) -> Finished:
    """finish.lua, lose.lua, skip.lua: {'stale'} | {'alive'} | {'retry', next, delay, freed} |
    {'done', state, ready}."""
    kind = reply[0]
    if kind in (Fence.STALE, Fence.ALIVE):
        return Finished(Fence(kind))
    if kind == "retry":
        freed = decode_ready(reply[3]) if len(reply) > 3 else ()
        return Finished(StepState.RETRYING, decode_ready(reply[1], float(reply[2])) + freed)
    return Finished(StepState(reply[1]), decode_ready(reply[2]))


def decode_poked(reply: Sequence[Any]) -> Finished:
    """poke.lua: {'waiting', {ready}, interval, pokes, freed} | like finish.lua. The next poke is a new
    delivery of the same attempt, with its own job id (tag ``poke-N``)."""
    if reply[0] != "waiting":
        return decode_finished(reply)
    rid, step, n, queue, timeout = reply[1][0]
    again = Ready(rid, step, int(n), queue, float(timeout) if timeout else None, float(reply[2]),
                  tag=f"poke-{int(reply[3])}")
    return Finished(StepState.WAITING, (again, *decode_ready(reply[4])))


def decode_waited(reply: Sequence[Any]) -> Finished | None:
    """wait.lua: {'go'} → None (start the attempt) | {'stale'} | {'waiting', {ready}, interval, checks} (the
    same attempt delivered again after interval, tag ``wait-N``) | {'done', 'failed', ready} (wait_timeout)."""
    if reply[0] == "go":
        return None
    if reply[0] == "waiting":
        rid, step, n, queue, timeout = reply[1][0]
        again = Ready(rid, step, int(n), queue, float(timeout) if timeout else None, float(reply[2]),
                      tag=f"wait-{int(reply[3])}")
        return Finished(StepState.WAITING, (again,))
    return decode_finished(reply)


def _stored_plan(run_id: str, text: str) -> StepPlan | None:
    """A stored plan (see scheduler/records.py), or None for anything Conveyor did not write (the runner
    refuses it: runner/job.py, runner/adoption.py)."""
    import json

    try:
        return StepPlan.from_json({**json.loads(text), "run_id": run_id})
    except (ValueError, TypeError, KeyError, AttributeError):
        return None


def decode_started(reply: Sequence[Any], run_id: str) -> Started:
    """start.lua: {'ok', plan_json, signature} | {'stale', state, attempt} | {'cancelled'} | {'pooled'}."""
    status = StartStatus(reply[0])
    if status is StartStatus.OK:
        signature = reply[2] if len(reply) > 2 else ""
        plan = _stored_plan(run_id, reply[1])
        return Started(status, plan, reply[1] or "", signature)
    return Started(status)


def decode_lease(reply: int) -> Lease:
    """renew.lua: 1 | 0 | -1."""
    return {1: Lease.HELD, 0: Lease.LOST}.get(int(reply), Lease.TAKEN)


def decode_adopted(reply: Sequence[Any], run_id: str) -> Adopted:
    """adopt.lua: {'ok', plan_json, log_bytes, started_at, signature} | {'alive'} | {'stale'}."""
    if reply[0] != "ok":
        return Adopted(Fence(reply[0]))
    plan = _stored_plan(run_id, reply[1])
    return Adopted(StartStatus.OK, plan, int(reply[2] or 0), reply[3] or "", reply[1] or "",
                   reply[4] if len(reply) > 4 else "")


def decode_created(run_id: str, reply: Sequence[Any]) -> Created:
    """create.lua / stage.lua: {'exists', run_id} | {'created' | 'staged', ready}."""
    if reply[0] == "exists":
        return Created(reply[1], False)
    return Created(run_id, True, decode_ready(reply[1]))


def decode_run_cancel(reply: Sequence[Any]) -> RunCancel:
    """cancel.lua: {'done', state} | {'ok', running, ready}."""
    if reply[0] == "done":
        return RunCancel(RunState(reply[1]), 0, True)
    running = int(reply[1])
    return RunCancel("cancelling" if running else RunState.CANCELLED, running, False, decode_ready(reply[2]))


def decode_step_cancel(reply: Sequence[Any]) -> StepCancel:
    """cancel_step.lua: {'done', state} | {'stopping'} | {'cancelled', ready}."""
    status = StepCancelStatus(reply[0])
    return StepCancel(status, decode_ready(reply[1]) if status is not StepCancelStatus.DONE and len(reply) > 1
                      else ())


def decode_sla_misses(reply: Sequence[Any] | None) -> list[SlaMiss]:
    """sla.lua: a list of {run_id, step, dag, ready}."""
    return [SlaMiss(rid, step, dag, decode_ready(ready)) for rid, step, dag, ready in (reply or [])]
