"""The vocabulary shared by the scheduler and the runner: states, specs and plans. No I/O here."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class StepState(StrEnum):
    """A step's state in a run. The same strings live in Redis and in ``lib.lua`` (STEP_STATES);
    ``tests/test_vocabulary.py`` checks that the two agree."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCESS = "success"
    FAILED = "failed"
    UPSTREAM_FAILED = "upstream_failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    WAITING = "waiting"  # a sensor between two pokes: its attempt waits in Redis, holding no worker

    @property
    def terminal(self) -> bool:
        """Ended: nothing changes it but a rerun."""
        return self in TERMINAL_STEP_STATES

    @property
    def done(self) -> bool:
        """Counts as done for its downstream steps' trigger rules (the same as terminal)."""
        return self.terminal

    @property
    def waiting(self) -> bool:
        """Not started yet: cancelling settles it at once (``STEP_WAITING`` in lib.lua)."""
        return self in {StepState.PENDING, StepState.QUEUED, StepState.RETRYING, StepState.WAITING}

    @property
    def failed(self) -> bool:
        """A failure for trigger rules and reruns (``FAILED`` in lib.lua)."""
        return self in {StepState.FAILED, StepState.UPSTREAM_FAILED}


TERMINAL_STEP_STATES = frozenset(
    {StepState.SUCCESS, StepState.FAILED, StepState.UPSTREAM_FAILED, StepState.SKIPPED, StepState.CANCELLED}
)


class RunState(StrEnum):
    """A run's state (``RUN_STATES`` in lib.lua). Staged runs are ``queued`` until released."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """Ended (``RUN_DONE`` in lib.lua): only a rerun opens it again."""
        return self in TERMINAL_RUN_STATES

    @property
    def done(self) -> bool:
        return self.terminal


TERMINAL_RUN_STATES = frozenset({RunState.SUCCESS, RunState.FAILED, RunState.CANCELLED})


def run_ended(state: str | None) -> bool:
    """For raw strings read from Redis (None or an unknown value: not ended)."""
    return state in TERMINAL_RUN_STATES


class AttemptOutcome(StrEnum):
    """How an attempt ended, as the runner reports it to ``finish.lua`` (and ``lose.lua``)."""

    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # its worker stopped renewing the lease; counts as a failed try
    REQUEUE = "requeue"  # handed back (worker shutdown, or a lost attempt that does not count)


AttemptState = AttemptOutcome  # the attempt hash's ``state`` field holds one of these


class Priority(StrEnum):
    """RQ queue names, highest first: workers take from them in this order."""

    HIGH = "high"
    DEFAULT = "default"
    LOW = "low"


QUEUES = tuple(p.value for p in Priority)


class Trigger(StrEnum):
    MANUAL = "manual"
    SCHEDULE = "schedule"
    BACKFILL = "backfill"
    DATASET = "dataset"  # every dataset of the DAG's schedule: {on: [...]} had a new event


TRIGGER_PRIORITY = {Trigger.MANUAL: Priority.HIGH, Trigger.SCHEDULE: Priority.DEFAULT, Trigger.BACKFILL: Priority.LOW,
                    Trigger.DATASET: Priority.DEFAULT}


class Reprocess(StrEnum):
    """Which intervals of a backfill that already have a run get a new one."""

    none = "none"  # only intervals with no run yet
    failed = "failed"  # also intervals whose latest run failed or was cancelled
    all = "all"  # every interval


def memory_bytes(value: str | int | None) -> int | None:
    """``256m``, ``1g``, ``512k``, ``100b`` or plain bytes (the schema checks the form)."""
    if value in (None, ""):
        return None
    text = str(value).strip().lower()
    scale = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}.get(text[-1:])
    return int(text[:-1]) * scale if scale else int(text)


@dataclass(frozen=True)
class Backoff:
    """Wait before retry n: ``initial * factor**(n-1)``, capped at ``max``, randomized by ``jitter``."""

    initial: float = 10.0
    factor: float = 2.0
    max: float = 3600.0
    jitter: float = 0.1

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        base = min(self.max, self.initial * self.factor ** max(0, retry - 1))
        if not self.jitter:
            return base
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: str = "string"
    default: Any = None
    required: bool = False
    enum: tuple[Any, ...] = ()
    description: str = ""


@dataclass(frozen=True)
class StepSpec:
    name: str
    image: str
    command: tuple[str, ...]
    shell: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    depends_on: tuple[str, ...] = ()
    retries: int = 0
    backoff: Backoff = Backoff()
    timeout: float | None = None
    priority: Priority | None = None
    cpus: float | None = None
    memory: int | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    pull: str = "never"
    mounts: tuple[Mount, ...] = ()
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> {env: X} | {file: /p}
    trigger_rule: str = "all_success"
    when: str | None = None
    rerun_before_downstream: bool = False
    pool: str | None = None
    pool_slots: int = 1
    sla: float | None = None  # seconds after the run's creation by which the step should have succeeded
    outputs: tuple[str, ...] = ()  # files the step writes under $CONVEYOR_OUTPUTS, passed downstream
    for_each: Mapping[str, str] | None = None  # {"items": JSON} | {"step": S, "output": N} | {"param": P}
    max_parallel: int | None = None
    max_items: int = 1000
    sensor: Sensor | None = None
    # Other DAGs' runs (or steps) this step waits for: {dag, step, logical_date, state, timeout, interval}.
    wait_for: tuple[Mapping[str, Any], ...] = ()
    produces: tuple[str, ...] = ()  # datasets a successful attempt records an event for
    network: str = "bridge"  # bridge (the engine's default), none, or a named network


@dataclass(frozen=True)
class Sensor:
    """A step whose container is run again every ``interval`` seconds while it exits ``not_ready_exit_code``
    (no worker held in between), until it exits 0, anything else, or ``timeout`` seconds have passed
    since the attempt's first poke."""

    interval: float
    timeout: float | None = None
    not_ready_exit_code: int = 100


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool = True


@dataclass(frozen=True)
class DagSpec:
    """A validated DAG file. ``document`` is the plain data it was built from (for the store)."""

    name: str
    steps: Mapping[str, StepSpec]
    params: Mapping[str, ParamSpec] = field(default_factory=dict)
    description: str = ""
    max_active_runs: int | None = None
    priority: Priority | None = None
    tags: Mapping[str, Any] = field(default_factory=dict)
    document: Mapping[str, Any] = field(default_factory=dict)
    handlers: Mapping[str, StepSpec] = field(default_factory=dict)  # "_on_failure" etc. -> the step


    @property
    def schedule(self) -> Mapping[str, Any] | None:
        return self.document.get("schedule")


def mapped_instance(step: str) -> tuple[str, int] | None:
    """``"load[3]"`` → ``("load", 3)``: an instance of a mapped step (``for_each``); None for a plain step.
    Step names cannot hold ``[``, so the two never meet."""
    if not step.endswith("]") or "[" not in step:
        return None
    parent, _, index = step[:-1].rpartition("[")
    return (parent, int(index)) if parent and index.isdigit() else None


def instance_name(step: str, index: int) -> str:
    return f"{step}[{index}]"


# Handler steps by the DAG key that defines them, their step name (step names cannot start with
# "_", job ids can contain it) and the run state that fires them.
HANDLERS = {"on_failure": ("_on_failure", "failed"), "on_success": ("_on_success", "success"),
            "on_exit": ("_on_exit", "exit"), "on_sla_miss": ("_on_sla_miss", "sla")}


@dataclass(frozen=True)
class StepPlan:
    """One step of one run, fully rendered: what the runner needs and nothing it must compute."""

    run_id: str
    dag: str
    step: str
    image: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    working_dir: str | None
    timeout: float | None
    cpus: float | None
    memory: int | None
    pull: str
    queue: str
    retries: int
    backoff: Backoff
    tags: Mapping[str, Any]
    mounts: tuple[Mount, ...] = ()
    secrets: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # references only, never values
    trigger_rule: str = "all_success"
    when: str | None = None
    pool: str | None = None
    pool_slots: int = 1
    pinned_image: str | None = None  # a rerun runs the image id the step ran before, not a moved tag
    outputs: tuple[str, ...] = ()  # declared outputs, collected from $CONVEYOR_OUTPUTS at success
    # argv/env entries that read upstream outputs, kept as templates and rendered by the worker when the
    # attempt starts (see scheduler/outputs.py): "argv.N" / "env.KEY" -> the raw template, and the values
    # of the run's other names those templates use.
    deferred: Mapping[str, str] = field(default_factory=dict)
    context: Mapping[str, Any] = field(default_factory=dict)
    # A mapped step (see StepSpec.for_each): it runs as instances STEP[0..n-1], expanded in Redis.
    for_each: Mapping[str, str] | None = None
    max_parallel: int | None = None
    max_items: int = 1000
    sensor: Sensor | None = None
    wait_for: tuple[Mapping[str, Any], ...] = ()
    produces: tuple[str, ...] = ()
    network: str = "bridge"  # bridge (the engine's default), none, or a named network (see StepSpec)

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["argv"] = list(self.argv)
        data["env"] = dict(self.env)
        data["tags"] = dict(self.tags)
        data["backoff"] = vars(self.backoff).copy()
        data["mounts"] = [vars(m).copy() for m in self.mounts]
        data["secrets"] = {k: dict(v) for k, v in self.secrets.items()}
        data["outputs"] = list(self.outputs)
        data["deferred"] = dict(self.deferred)
        data["context"] = dict(self.context)
        data["for_each"] = dict(self.for_each) if self.for_each is not None else None
        data["sensor"] = vars(self.sensor).copy() if self.sensor is not None else None
        data["wait_for"] = [dict(w) for w in self.wait_for]
        data["produces"] = list(self.produces)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StepPlan:
        values = dict(data)
        values["argv"] = tuple(values["argv"])
        values["backoff"] = Backoff(**values["backoff"])
        values["mounts"] = tuple(Mount(**m) for m in values.get("mounts", ()))
        values["outputs"] = tuple(values.get("outputs", ()))
        values["sensor"] = Sensor(**values["sensor"]) if values.get("sensor") else None
        values["wait_for"] = tuple(values.get("wait_for", ()))
        values["produces"] = tuple(values.get("produces", ()))
        return cls(**values)
