"""Adoption: a dead worker's container is followed to its end by another worker, not run again.

A step's container outlives its worker (a SIGKILL, an OOM kill of the worker, a lost node). Running
the step again would repeat its side effects, so when the attempt's lease expires, a worker's sweep
(``scheduler/reaper.py``) asks its :class:`Adopter` to look for that attempt's container by its
labels (prefix, store id, run, step, attempt). If it is still running, or has exited but was not
removed, the worker *adopts* it: ``adopt.lua`` leases the SAME attempt to it (fenced: of two
adopters only one wins), then this module reattaches to the container's output from where the
stored log ends (``runner/attempt_log.py``), waits for its exit with the step's timeout counted
from the container's real start, records the exit code, removes the container and finishes the
attempt. Cancel kills an adopted container as any other; a stopping adopter hands it on again.

Only a worker that reaches the same engine can see the container: with Docker, workers sharing one
engine (one host, or one remote ``DOCKER_HOST``); with Kubernetes, any worker of the namespace. A
worker on another engine sees nothing and says so (``UNSEEN``): the attempt is then declared lost
only ``CONVEYOR_ADOPT_GRACE`` seconds after its lease expired, by whichever sweeper comes first.
A worker on the engine that ran the attempt (the attempt records its ``engine_id``) that finds no
container declares it lost at once.

The Docker engine itself may go away mid-step (a restart, an upgrade): :func:`after_engine_loss`
waits for it with back-off, keeping the lease, then follows the container if it survived
(``live-restore``) or records ``engine_restarted`` so that the step is retried.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Protocol

import docker
import docker.errors
import requests.exceptions

from runner.attempt_log import AttemptLog
from runner.checkpoints import Checkpoint, DockerSaver
from runner.containers import (
    DETACH_REASONS,
    LABEL_PREFIX,
    DockerRuntime,
    Outcome,
    _close,
    _LogPump,
    _Stopper,
    follow_started,
    pump_in_batches,
)
from runner.context import WorkerContext
from runner.lease import LeaseKeeper
from scheduler.logs import attempt_context, bind
from scheduler.model import AttemptOutcome, StepPlan
from scheduler.outputs import OutputUnavailable
from scheduler.reaper import Sighting
from scheduler.results import Adopted, StartStatus
from scheduler.store import parse_member

log = logging.getLogger("conveyor.runner")
ENGINE_PATIENCE_SECONDS = 120.0  # how long a worker waits for its lost engine before the step is retried
# A container that ended this shortly before its engine was found gone was stopped by the engine's shutdown.
SHUTDOWN_SLACK_SECONDS = 2.0
ENGINE_LOST = frozenset({"docker_error"})  # the engine went away while the container was followed
ADOPTABLE = frozenset({"running", "exited", "paused", "restarting"})  # Docker states with something to follow


@dataclass(frozen=True)
class Found:
    """An attempt's container (or Pod) as an adopter found it."""

    id: str
    status: str  # Docker's State (running, exited, created...) or a Pod's phase, lower case

    @property
    def adoptable(self) -> bool:
        return self.status in ADOPTABLE or self.status in ("succeeded", "failed", "pending")


class AdoptionRuntime(Protocol):
    """What adoption needs from a container runtime (Docker below; Pods in ``runner/kube_adoption.py``)."""

    def engine_id(self) -> str:
        """Names the engine (Docker daemon, Kubernetes namespace) that this worker's containers run on."""

    def find(self, prefix: str, store_id: str, key: tuple[str, str, int]) -> Found | None:
        """The attempt's container, or None when the engine has none; raises when the engine is unreachable."""

    def follow(self, found: Found, plan: StepPlan, on_output: Callable[[bytes], None],
               should_stop: Callable[[], str | None], offset: int) -> Outcome:
        """Follow the container to its end as :class:`~runner.containers.ContainerRuntime` ``run`` does,
        handing on its output after the first ``offset`` bytes; the timeout counts from its real start.
        A runtime with ``supports_checkpoints`` also takes ``checkpoint=`` and saves it as ``run`` does."""

    def remove(self, found_id: str) -> None:
        """Remove the container (or Pod); one already gone is fine."""


def adoption_for(runtime: object) -> AdoptionRuntime:
    """The adoption side of a worker's runtime (cached on it)."""
    cached = getattr(runtime, "_adoption", None)
    if cached is None:
        if isinstance(runtime, DockerRuntime):
            cached = DockerAdoption(runtime)
        else:
            from runner.kube_adoption import KubernetesAdoption

            cached = KubernetesAdoption(runtime)  # type: ignore[arg-type]
        runtime._adoption = cached  # type: ignore[attr-defined]
    return cached


class Adopter:
    """The reaper's hook on a worker: adopt an expired attempt's container if it is there."""

    def __init__(self, context: WorkerContext):
        self.context = context
        self.threads: list[threading.Thread] = []

    @property
    def runtime(self) -> AdoptionRuntime:
        return adoption_for(self.context.runtime)

    def consider(self, entry: str) -> Sighting:
        from runner.job import plan_refusal  # job imports this module lazily: no cycle at import time

        context = self.context
        key = parse_member(entry)
        if key in context.following:
            return Sighting.BUSY  # this process follows it (its lease renewal was late): not an orphan
        if context.stopping_since is not None:
            return Sighting.UNSEEN  # a stopping worker takes nothing on
        store = context.store
        try:
            found = self.runtime.find(store.prefix, store.store_id, key)
            mine = self.runtime.engine_id()
        except Exception as exc:  # the engine is unreachable from here: someone else may see it
            log.warning("cannot look for the container of %s on this worker's engine: %s", entry, exc)
            return Sighting.UNSEEN
        if found is None or not found.adoptable:
            if found is not None:  # created but never started (its worker died in between): nothing ran
                self.runtime.remove(found.id)
            [ran_on] = store.attempt_fields(*key, "engine_id")
            return Sighting.GONE if ran_on and ran_on == mine else Sighting.UNSEEN
        adopted = context.engine.adopt(entry, adopter=context.holder, lease=context.settings.attempt_lease,
                                       container_id=found.id)
        if adopted.status is not StartStatus.OK:
            return Sighting.BUSY  # renewed in time, adopted by another worker first, or ended meanwhile
        refusal = plan_refusal(adopted, key[0], key[1], context.settings.signing_key,
                               "its container was removed and nothing of it collected")
        if refusal is not None or adopted.plan is None:
            self._refuse(key, found, refusal or "no plan")
            return Sighting.BUSY  # ended here: nothing left for the reaper
        context.following.add(key)
        log.warning("%s %s attempt %d adopted: its worker stopped renewing the lease, its container %s is %s",
                    *key, found.id[:12], found.status)
        thread = threading.Thread(target=self._follow, args=(key, found, adopted), daemon=True,
                                  name=f"conveyor-adopted-{key[1]}")
        self.threads = [t for t in self.threads if t.is_alive()] + [thread]
        thread.start()
        return Sighting.ADOPTED

    def _refuse(self, key: tuple[str, str, int], found: Found, refusal: str) -> None:
        """The stored plan was changed since a worker verified it and started the container: follow
        nothing of it (its timeout, secrets, outputs), stop the container and fail the attempt, as a
        starting worker refuses such a plan (``plan_signature``)."""
        from runner.job import _with_redis_retries

        log.error("%s %s attempt %d: adoption refused: %s", *key, refusal)
        self.runtime.remove(found.id)
        _with_redis_retries(lambda: self.context.engine.finish(
            *key, AttemptOutcome.FAILED, {"reason": "plan_signature", "error": refusal, "container_id": found.id},
            holder=self.context.holder))

    def _follow(self, key: tuple[str, str, int], found: Found, adopted: Adopted) -> None:
        from runner.job import _render_late, record_result  # job imports this module lazily: no cycle

        run_id, step, attempt = key
        plan = adopted.plan
        assert plan is not None
        with attempt_context(run_id, plan.dag, step, attempt):
            bind(dag=plan.dag)
            try:
                began = time.perf_counter()
                try:  # the argv and env it runs with, rendered again as its worker did (upstream outputs are final)
                    plan, rendered = _render_late(self.context.store, plan, step)
                except OutputUnavailable:
                    rendered = {}
                outcome = follow_adopted(self.context, self.runtime, key, plan, found, adopted.log_bytes)
                if outcome.detached:
                    log.info("%s %s attempt %d: %s; its container runs on", run_id, step, attempt, outcome.reason)
                    return
                started = adopted.started_at and datetime.fromisoformat(adopted.started_at).timestamp()
                record_result(self.context, key, plan, outcome, round(time.perf_counter() - began, 4), rendered,
                              started or None)
                self.runtime.remove(found.id)  # only now: dying before the result leaves it to adopt again
            except Exception:
                log.error("%s %s attempt %d: following the adopted container failed\n%s", run_id, step, attempt,
                          traceback.format_exc())
            finally:
                self.context.following.discard(key)


def follow_adopted(context: WorkerContext, runtime: AdoptionRuntime, key: tuple[str, str, int], plan: StepPlan,
                   found: Found, offset: int) -> Outcome:
    """Follow an adopted container to its end, storing its output from byte ``offset`` on."""
    from runner.job import StepRefused, prepare

    output = AttemptLog(context.store, key, context.holder)
    try:
        output.mask_with(prepare(plan, context.settings)[1])
    except StepRefused as exc:  # the secrets cannot be resolved here: store nothing they could appear in
        output.withhold(f"[conveyor: output after adoption withheld: {exc}]\n")
    should_stop = LeaseKeeper(context, key, context.settings.attempt_lease)
    run_id, step, attempt = key
    # The step's checkpoint goes on being saved (it is in the container already: nothing to put in place).
    extra = {"checkpoint": Checkpoint(None, lambda data: context.store.save_checkpoint(
        run_id, step, attempt, data, holder=context.holder))} if getattr(runtime, "supports_checkpoints", False) else {}
    try:
        outcome = runtime.follow(found, plan, output, should_stop, offset, **extra)
        return through_engine_loss(context, key, plan, outcome, output, should_stop, offset=offset)
    finally:
        output.close()


# --- Docker ----------------------------------------------------------------------------------------


class DockerAdoption:
    """Adoption on a Docker engine: containers found by label, output read back with ``docker logs``."""

    def __init__(self, runtime: DockerRuntime):
        self.client: docker.DockerClient = runtime.client
        self._engine_id: str | None = None

    def engine_id(self) -> str:
        if self._engine_id is None:
            self._engine_id = f"docker:{self.client.info().get('ID', '')}"
        return self._engine_id

    def find(self, prefix: str, store_id: str, key: tuple[str, str, int]) -> Found | None:
        run_id, step, attempt = key
        labels = {"prefix": prefix, "store": store_id, "run": run_id, "step": step, "attempt": str(attempt)}
        listed = self.client.api.containers(
            all=True, filters={"label": [f"{LABEL_PREFIX}.{name}={value}" for name, value in labels.items()]})
        if not listed:
            return None
        return Found(listed[0]["Id"], str(listed[0].get("State", "")).lower())

    supports_checkpoints = True  # follow() takes ``checkpoint`` (runner/checkpoints.py)

    def follow(self, found: Found, plan: StepPlan, on_output: Callable[[bytes], None],
               should_stop: Callable[[], str | None], offset: int, *,
               checkpoint: Checkpoint | None = None) -> Outcome:
        try:
            container = self.client.containers.get(found.id)
        except docker.errors.NotFound:
            return Outcome(None, "container_removed", "the adopted container was removed (by someone else?)",
                           container_id=found.id)
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            return Outcome(None, "docker_unreachable", f"cannot reach the Docker engine: {exc}", container_id=found.id)
        base = {"image_id": container.attrs.get("Image"), "image_digest": None}
        try:
            stream = self.client.api.logs(found.id, stdout=True, stderr=True, stream=True, follow=True)
        except docker.errors.APIError as exc:  # a log driver that cannot be read back
            on_output(f"[conveyor: the output after adoption cannot be read back: {exc}]\n".encode())
            stream = _NoStream()
        followed = _SkipFirst(stream, offset)
        logs = _LogPump(followed, on_output)
        deadline = None
        if plan.timeout:
            started = docker_time(container.attrs.get("State", {}).get("StartedAt")) or time.time()
            deadline = time.monotonic() + started + plan.timeout - time.time()  # from the container's real start
        saver = DockerSaver(container, checkpoint) if checkpoint else None
        if saver is not None:
            should_stop = saver.watching(should_stop)
        outcome = follow_started(container, plan, logs, _Stopper(container, should_stop), deadline, base)
        if saver is not None and not outcome.detached:
            saver.final()
        if not outcome.detached and outcome.reason not in ("docker_error", "container_removed"):
            # A followed log may end at the container's exit before its last bytes (the engine closes it on
            # the exit event): read what it missed from the complete log, now that the container has ended.
            with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                rest = self.client.api.logs(found.id, stdout=True, stderr=True, stream=True, follow=False)
                pump_in_batches(_SkipFirst(rest, offset + followed.passed), on_output)
        return DockerRuntime._collect_outputs(container, plan, outcome)  # the plan's declared outputs, at success

    def remove(self, found_id: str) -> None:
        with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
            self.client.api.remove_container(found_id, force=True)

    def inspect(self, found_id: str) -> dict | None:
        """The container's ``State``, None when it is gone; raises while the engine is unreachable."""
        try:
            return self.client.api.inspect_container(found_id)["State"]
        except docker.errors.NotFound:
            return None

    def live_restore(self) -> bool:
        return bool(self.client.info().get("LiveRestoreEnabled"))

    def drop_connections(self) -> None:
        """Forget the connections kept alive: the next call connects afresh (to the engine now listening)."""
        with contextlib.suppress(Exception):
            self.client.api.close()  # idle pooled connections only; the session stays usable

    def answers_afresh(self) -> bool:
        """Whether the engine answers a new connection (a dying engine has closed its socket already)."""
        self.drop_connections()
        try:
            self.client.api.ping()
            return True
        except (docker.errors.APIError, requests.exceptions.RequestException, docker.errors.DockerException):
            return False


class _SkipFirst:
    """An output stream without its first ``count`` bytes (those the store already has)."""

    def __init__(self, stream, count: int):
        self.stream = stream
        self.left = count
        self.passed = 0  # bytes handed on
        self._response = getattr(stream, "_response", None)

    def __iter__(self):
        for chunk in self.stream:
            if self.left:
                if len(chunk) <= self.left:
                    self.left -= len(chunk)
                    continue
                chunk, self.left = chunk[self.left:], 0
            self.passed += len(chunk)
            yield chunk

    def close(self) -> None:
        _close(self.stream)


class _NoStream:
    def __iter__(self):
        return iter(())

    def close(self) -> None:
        pass


_FRACTION = re.compile(r"(\.\d{6})\d+")


def docker_time(value: str | None) -> float | None:
    """Docker's RFC 3339 times with nanoseconds (``2026-01-01T00:00:00.123456789Z``) as epoch seconds."""
    if not value or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --- the engine going away mid-step ------------------------------------------------------------------


def through_engine_loss(context: WorkerContext, key: tuple[str, str, int], plan: StepPlan, outcome: Outcome,
                        output: AttemptLog, should_stop: LeaseKeeper, *, offset: int = 0) -> Outcome:
    """``outcome`` as it stands, unless the Docker engine went away while the container ran: then what
    :func:`after_engine_loss` makes of it. A container that exited non-zero while its engine was shutting
    down (a wait answered on a connection the dying engine still served) counts as such a loss too."""
    runtime = adoption_for(context.runtime)
    if not isinstance(runtime, DockerAdoption) or not outcome.container_id or outcome.detached:
        return outcome
    if outcome.reason in ENGINE_LOST or (outcome.reason == "exit_code" and not runtime.answers_afresh()):
        return after_engine_loss(context, key, plan, outcome, output, should_stop, offset=offset)
    return outcome


def after_engine_loss(context: WorkerContext, key: tuple[str, str, int], plan: StepPlan, outcome: Outcome,
                      output: AttemptLog, should_stop: LeaseKeeper, *, offset: int = 0,
                      patience: float = ENGINE_PATIENCE_SECONDS) -> Outcome:
    """The Docker engine went away while the container ran. Wait for it with back-off (renewing the
    lease meanwhile), then follow the container if it survived (``live-restore``, or it had ended before
    the engine went) or, when the engine's restart took it down, end with reason ``engine_restarted``
    (a failed try, so the step is retried). Past ``patience``, or if the attempt was taken from us
    meanwhile, the outcome stands as it was. An engine lost again while followed is waited for again.
    ``output`` took the container's output from byte ``offset`` on (an adopter's starts past the stored log)."""
    runtime = adoption_for(context.runtime)
    assert isinstance(runtime, DockerAdoption) and outcome.container_id
    run_id, step, attempt = key
    while True:
        lost_at = time.time()
        log.warning("%s %s attempt %d: lost the Docker engine (%s); waiting for it", run_id, step, attempt,
                    outcome.error)
        back = _engine_back(runtime, outcome.container_id, should_stop, patience)
        if isinstance(back, str):  # the lease, a cancel or this worker's shutdown ended the wait
            return Outcome(None, back, f"the Docker engine was away, then: {back}", container_id=outcome.container_id,
                           detached=back in DETACH_REASONS)
        if back is None:
            return outcome  # past patience: the engine is still away
        state, live_restore = back
        away = time.time() - lost_at
        restarted = Outcome(None, "engine_restarted", f"the Docker engine restarted while the step ran (away "
                            f"{away:.0f}s) and took its container down; the step is retried",
                            container_id=outcome.container_id)
        if state is None:
            return restarted
        status = str(state.get("Status", "")).lower()
        finished = docker_time(state.get("FinishedAt"))
        if status not in ADOPTABLE or (status == "exited" and not live_restore and finished
                                       and finished >= lost_at - SHUTDOWN_SLACK_SECONDS):
            runtime.remove(outcome.container_id)
            return restarted  # without live-restore, the engine's shutdown stopped it: its own end is unknown
        log.warning("%s %s attempt %d: the Docker engine is back after %.0fs and the container is %s: following it",
                    run_id, step, attempt, away, status)
        found = Found(outcome.container_id, status)
        result = runtime.follow(found, plan, output.resume(), should_stop, offset + output.accounted)
        if result.detached or result.reason not in ENGINE_LOST:
            return result if result.detached else replace(result, kept=True)  # removed once recorded
        outcome = result  # lost again (the engine answered while shutting down): wait again


def _engine_back(runtime: DockerAdoption, container_id: str, should_stop: LeaseKeeper,
                 patience: float) -> tuple[dict | None, bool] | str | None:
    """Wait for the engine (back-off, at most a third of the lease between two renewals): the container's
    ``State`` (None: gone) and whether the engine has live-restore; a ``should_stop`` reason that ends the
    wait; or None past ``patience``. Only fresh connections count: one kept alive to an engine that is
    shutting down still answers."""
    deadline = time.monotonic() + patience
    delay = 0.5
    while True:
        stop = should_stop()
        if stop is not None:
            return stop
        runtime.drop_connections()
        try:
            return runtime.inspect(container_id), runtime.live_restore()
        except (docker.errors.APIError, requests.exceptions.RequestException, docker.errors.DockerException):
            if time.monotonic() > deadline:
                return None
            time.sleep(min(delay, should_stop.lease / 3))
            delay = min(delay * 2, 5.0)
