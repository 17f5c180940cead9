"""Running one step attempt as a container.

:class:`ContainerRuntime` is the contract every runtime keeps (Docker now, Kubernetes Pods
later); :class:`DockerRuntime` keeps it through the docker SDK.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import docker
import docker.errors
import requests.exceptions

from runner import checkpoints, outputs
from scheduler.errors import UnavailableError
from scheduler.model import StepPlan

LABEL_PREFIX = "dev.conveyor"
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
ENGINE_CHECK_SECONDS = 5.0
LOG_FLUSH_BYTES = 64 * 1024
LOG_FLUSH_SECONDS = 0.25
STOP_POLL_SECONDS = 0.5
WAIT_SLICE_SECONDS = 2.0  # the wait for a container's exit is cut in slices, so that a detach is noticed
# should_stop() reasons that leave the container running for another worker (see runner/adoption.py):
# the attempt was handed over by this stopping worker, or another worker adopted it meanwhile.
DETACH_REASONS = frozenset({"handed_over", "adopted_elsewhere"})


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. ``reason`` is None on success, else a short code; ``error`` says it in words."""

    exit_code: int | None
    reason: str | None = None
    error: str | None = None
    image_id: str | None = None
    image_digest: str | None = None
    container_id: str | None = None
    outputs: Mapping[str, str] | None = None  # the declared outputs, collected at success (runner/outputs.py)
    detached: bool = False  # the container runs on under another worker: not removed, not a result
    kept: bool = False  # run(keep=True): the ended container is still there, for the caller to remove

    @property
    def ok(self) -> bool:
        return self.reason is None and self.exit_code == 0


class ContainerRuntime(Protocol):
    """Runs one attempt to its end and reports it; never raises for anything the step did.

    - ``on_output(chunk)`` receives the container's stdout and stderr bytes as they come.
    - ``should_stop()`` is polled while the container runs; a non-empty reason stops it and
      becomes the outcome's reason (e.g. ``cancelled``).
    - The container carries ``labels``, is killed at ``plan.timeout`` (reason ``timeout``) and
      is removed afterwards, whatever happened, except when ``should_stop()`` says one of
      ``DETACH_REASONS``: then the runtime stops following it, leaves it running for the worker
      that adopts it, and returns an outcome with ``detached=True``. (The runner runs with
      ``keep=True`` and removes the container once the result is recorded: with ``reap_later`` where
      the runtime has it, in the background.)
    - ``plan.network``: ``bridge`` (the default network), ``none`` or a named network, where the
      runtime can honour it; where it cannot, the attempt fails with reason ``network_unsupported``.
    """

    def run(self, plan: StepPlan, labels: Mapping[str, str], on_output: Callable[[bytes], None],
            should_stop: Callable[[], str | None], *, keep: bool = False) -> Outcome: ...
    # ``keep=True``: leave the ended container for the caller to remove (``reap``) once it has recorded
    # the result (``Outcome.kept``), so that a worker dying in between leaves a container to adopt, not
    # a finished step that would run again.

    def reap(self, ids: Iterable[str]) -> None: ...

    def engine_version(self) -> str: ...


AttemptKey = tuple[str, str, int]
"""``(run_id, step, attempt)``: what a container or Pod belongs to."""


@dataclass(frozen=True)
class Leftover:
    """A container (or Pod) that this prefix's workers started, as the reaper sees it."""

    id: str
    run_id: str
    step: str
    attempt: int
    labels: Mapping[str, str]

    @property
    def key(self) -> AttemptKey:
        return (self.run_id, self.step, self.attempt)

    @classmethod
    def from_labels(cls, id: str, labels: Mapping[str, str]) -> Leftover:
        try:
            attempt = int(labels.get(f"{LABEL_PREFIX}.attempt", "0"))
        except ValueError:
            attempt = 0
        return cls(id, labels.get(f"{LABEL_PREFIX}.run", ""), labels.get(f"{LABEL_PREFIX}.step", ""), attempt,
                   dict(labels))


def outputs_env(plan: StepPlan) -> dict[str, str]:
    """``CONVEYOR_OUTPUTS`` for a step that declares outputs (the same path on every runtime)."""
    return {outputs.OUTPUTS_ENV: outputs.OUTPUTS_DIR} if plan.outputs else {}


def labels_for(plan: StepPlan, attempt: int, prefix: str, store_id: str | None = None) -> dict[str, str]:
    """Labels on every container: which store (Redis + prefix) and which attempt it belongs to."""
    return {
        f"{LABEL_PREFIX}.prefix": prefix,
        **({f"{LABEL_PREFIX}.store": store_id} if store_id else {}),
        f"{LABEL_PREFIX}.run": plan.run_id,
        f"{LABEL_PREFIX}.dag": plan.dag,
        f"{LABEL_PREFIX}.step": plan.step,
        f"{LABEL_PREFIX}.attempt": str(attempt),
    }


DOCKER_POOL = 64  # connections to the engine kept per process (urllib3 opens them only when needed)


class _Remover:
    """Removes finished containers in a thread of its own, so that removing one (~15 ms, more under load)
    is not on the path from one step's end to the next one's start. A container whose removal is lost
    (the worker killed meanwhile) is removed by the reaper's orphan sweep: its attempt holds no lease."""

    def __init__(self, client: docker.DockerClient):
        self.client = client
        self.todo: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def remove(self, container_id: str) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="container-remover", daemon=True)
                self._thread.start()
        self.todo.put(container_id)

    def _loop(self) -> None:
        while True:
            cid = self.todo.get()
            try:
                with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                    self.client.api.remove_container(cid, force=True)
            finally:
                self.todo.task_done()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the removals asked so far; True when none is left."""
        deadline = time.monotonic() + timeout
        while self.todo.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.todo.unfinished_tasks


class DockerRuntime:
    """The docker SDK behind :class:`ContainerRuntime`.

    A container that :meth:`run` kept (``keep=True``: the runner's way, so that its result is recorded
    before it goes) is removed by :meth:`reap_later` in a background thread: the next step is queued
    before the removal starts and never waits for it."""

    def __init__(self, client: docker.DockerClient | None = None):
        try:
            # Asks the engine its API version: fails when it is away. The pool holds a connection per
            # attempt running at once (its output stream) and then some: ctl worker --concurrency N.
            self.client = client or docker.from_env(max_pool_size=DOCKER_POOL)
        except docker.errors.DockerException as exc:
            raise unreachable(exc) from None
        self._version: str | None = None
        self._remover = _Remover(self.client)

    def reap_later(self, ids: Iterable[str]) -> None:
        """:meth:`reap`, in the background: for a kept container whose attempt's result is recorded."""
        for cid in ids:
            self._remover.remove(cid)

    def drain(self, timeout: float = 5.0) -> bool:
        """Finish the background removals (a stopping worker leaves nothing it could have removed)."""
        return self._remover.drain(timeout)

    def engine_version(self) -> str:
        if self._version is None:
            self._version = str(self.client.version().get("Version", "unknown"))
        return self._version

    supports_checkpoints = True  # run() takes ``checkpoint`` (runner/checkpoints.py)

    def run(self, plan: StepPlan, labels: Mapping[str, str], on_output: Callable[[bytes], None],
            should_stop: Callable[[], str | None], *, keep: bool = False,
            checkpoint: checkpoints.Checkpoint | None = None) -> Outcome:
        try:
            image = self._image(plan)
        except docker.errors.ImageNotFound:
            how = "pull policy is 'never'" if plan.pull == "never" else "it could not be pulled"
            return Outcome(None, "image_not_found",
                           f"image '{plan.image}' is not on this Docker engine and {how}; build or load it first")
        except docker.errors.APIError as exc:
            return Outcome(None, "image_pull_failed", f"image '{plan.image}': {_explain(exc)}")
        except requests.exceptions.ConnectionError as exc:
            return Outcome(None, "docker_unreachable", f"cannot reach the Docker engine: {exc}")
        image_id = image.id
        digest = _repo_digest(image.attrs.get("RepoDigests") or [], plan.image)
        base = {"image_id": image_id, "image_digest": digest}
        try:
            container = self.client.containers.create(
                image_id,
                command=list(plan.argv),
                environment=dict(plan.env) | outputs_env(plan)
                | ({checkpoints.CHECKPOINT_ENV: checkpoints.CHECKPOINT_PATH} if checkpoint else {}),
                working_dir=plan.working_dir,
                labels=dict(labels),
                nano_cpus=int(plan.cpus * 1e9) if plan.cpus else None,
                mem_limit=plan.memory,
                memswap_limit=plan.memory,
                volumes={m.source: {"bind": m.target, "mode": "ro" if m.read_only else "rw"} for m in plan.mounts}
                or None,
                detach=True,
                **network_options(plan.network),
            )
        except docker.errors.APIError as exc:
            return Outcome(None, "create_failed", f"cannot create the container: {_explain(exc)}", **base)
        except requests.exceptions.ConnectionError as exc:
            return Outcome(None, "docker_unreachable", f"cannot reach the Docker engine: {exc}", **base)
        outcome: Outcome | None = None
        saver = checkpoints.DockerSaver(container, checkpoint) if checkpoint else None
        try:
            if saver is not None:
                try:
                    checkpoints.docker_prepare(container, saver.checkpoint.initial)
                except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                    outcome = Outcome(None, "create_failed", f"cannot put the checkpoint in place: {exc}",
                                      container_id=container.id, **base)
                should_stop = saver.watching(should_stop)
            if outcome is None and plan.outputs:
                try:
                    outputs.docker_prepare(container)
                except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
                    outcome = Outcome(None, "create_failed", f"cannot make the outputs directory: {exc}",
                                      container_id=container.id, **base)
            if outcome is None:
                ended = self._run_container(container, plan, on_output, should_stop, base)
                if saver is not None and not ended.detached:
                    saver.final()
                outcome = self._collect_outputs(container, plan, ended)
        finally:
            if outcome is None or not (outcome.detached or keep):
                with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
                    container.remove(force=True)
        return replace(outcome, kept=True) if keep and not outcome.detached else outcome

    @staticmethod
    def _collect_outputs(container, plan: StepPlan, outcome: Outcome) -> Outcome:
        """A successful attempt's declared outputs, read from the stopped container (a missing, too large
        or unreadable one fails the attempt: see runner/outputs.py)."""
        if not plan.outputs or not outcome.ok:
            return outcome
        try:
            values = outputs.collect(plan.outputs, outputs.docker_fetch(container))
        except outputs.OutputFailure as exc:
            return replace(outcome, reason=exc.reason, error=str(exc))
        except (docker.errors.APIError, requests.exceptions.RequestException) as exc:
            return replace(outcome, reason="outputs_unreadable", error=f"cannot read the outputs: {exc}")
        return replace(outcome, outputs=values)

    def orphans(self, prefix: str, live_attempts: Collection[AttemptKey] = ()) -> list[Leftover]:
        """The containers carrying ``prefix`` (running or not) whose attempt is not in ``live_attempts``."""
        # The low-level list: one call, no inspect per container (which races with removals, and costs).
        containers = self.client.api.containers(all=True, filters={"label": f"{LABEL_PREFIX}.prefix={prefix}"})
        found = [Leftover.from_labels(c["Id"], c.get("Labels") or {}) for c in containers]
        return [leftover for leftover in found if leftover.key not in live_attempts]

    def reap(self, ids: Iterable[str]) -> None:
        """Force-remove the given containers (ids from :meth:`orphans`); one already gone is fine."""
        for cid in ids:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError,
                                     requests.exceptions.RequestException):
                self.client.api.remove_container(cid, force=True)

    def _image(self, plan: StepPlan):
        if plan.pinned_image:  # a rerun: exactly the image the step ran before, whatever its tag says now
            return self.client.images.get(plan.pinned_image)
        if plan.pull == "always":
            return self.client.images.pull(plan.image)
        try:
            return self.client.images.get(plan.image)
        except docker.errors.ImageNotFound:
            if plan.pull == "if-not-present":
                return self.client.images.pull(plan.image)
            raise

    def _run_container(self, container, plan: StepPlan, on_output: Callable[[bytes], None],
                       should_stop: Callable[[], str | None], base: dict) -> Outcome:
        cid = container.id
        # Attach before start: raw bytes from the first one (the log driver would re-encode them as UTF-8).
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=False)
        try:
            container.start()
        except docker.errors.APIError as exc:
            _close(stream)
            text = _explain(exc)
            if "executable file not found" in text or "no such file or directory" in text:
                return Outcome(127, "command_not_found", f"command not found in the image: {plan.argv[0]!r}",
                               container_id=cid, **base)
            return Outcome(None, "start_failed", f"the container did not start: {text}", container_id=cid, **base)
        logs = _LogPump(stream, on_output)
        stopper = _Stopper(container, should_stop)
        deadline = time.monotonic() + plan.timeout if plan.timeout else None
        return follow_started(container, plan, logs, stopper, deadline, base)


def follow_started(container, plan: StepPlan, logs: _LogPump, stopper: _Stopper, deadline: float | None,
                   base: dict) -> Outcome:
    """Follow a started container to its end (the worker that started it, or one that adopted it): wait
    for its exit, kill it at ``deadline`` (monotonic), and say how it ended."""
    cid = container.id
    try:
        status = wait_for_exit(container, deadline, stopper)
        if status is None:  # handed to another worker: it follows the container from here
            logs.close()
            logs.join(timeout=2)
            return Outcome(None, stopper.reason, f"left running for another worker: {stopper.reason}",
                           container_id=cid, detached=True, **base)
    except docker.errors.NotFound:
        return Outcome(None, "container_removed", "the container was removed while it ran (by someone else?)",
                       container_id=cid, **base)
    except (requests.exceptions.RequestException, docker.errors.APIError) as exc:
        logs.join(timeout=2)  # its stream broke too: what it read is stored before anyone reads the rest
        return Outcome(None, "docker_error", f"lost the Docker engine while the step ran: {exc}",
                       container_id=cid, **base)
    finally:
        stopper.close()
    logs.join()
    exit_code = int(status.get("StatusCode", -1))
    if stopper.reason == "timeout":
        return Outcome(exit_code, "timeout", f"killed after the step's timeout of {plan.timeout:g}s",
                       container_id=cid, **base)
    if stopper.reason:
        return Outcome(exit_code, stopper.reason, f"stopped: {stopper.reason}", container_id=cid, **base)
    try:
        state = container.client.api.inspect_container(cid)["State"]
    except docker.errors.NotFound:
        state = {"Status": "removing"}
    except (docker.errors.APIError, requests.exceptions.RequestException):
        state = {}
    if state.get("Status") in ("removing", "dead"):  # force-removed while it ran: wait saw it killed
        return Outcome(None, "container_removed", "the container was removed while it ran (by someone else?)",
                       container_id=cid, **base)
    oom = state.get("OOMKilled", False)
    if oom:
        limit = f" (limit {plan.memory // (1024 * 1024)} MiB)" if plan.memory else ""
        return Outcome(exit_code, "oom_killed", f"killed for running out of memory{limit}",
                       container_id=cid, **base)
    if exit_code != 0:
        return Outcome(exit_code, "exit_code", f"exited with code {exit_code}", container_id=cid, **base)
    return Outcome(0, None, None, container_id=cid, **base)


def wait_for_exit(container, deadline: float | None, stopper: _Stopper) -> dict | None:
    """The container's exit status (``container.wait``), killing it at ``deadline`` (monotonic; reason
    ``timeout``); None as soon as the stopper detached. Waits in slices so that a detach is noticed."""
    while True:
        if stopper.reason in DETACH_REASONS:
            return None
        left = None if deadline is None else deadline - time.monotonic()
        try:
            return container.wait(timeout=WAIT_SLICE_SECONDS if left is None else max(0.05, min(WAIT_SLICE_SECONDS,
                                                                                               left)))
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError) as exc:
            if not isinstance(exc, requests.exceptions.ReadTimeout) and not _is_timeout(exc):
                raise  # the engine went away, not a slice ending
        if deadline is not None and time.monotonic() >= deadline and stopper.reason is None:
            stopper.stop("timeout")
            return container.wait(timeout=30)


def network_options(network: str) -> dict[str, str]:
    """``containers.create`` arguments for a step's network: none (no interface but loopback), bridge
    (the engine's default: nothing to say) or a named network (created beforehand: one that does not
    exist fails the attempt with ``start_failed`` naming it: the engine looks it up at start)."""
    if network == "none":
        return {"network_mode": "none"}
    if network in ("", "bridge"):
        return {}
    return {"network": network}


def check_engine(timeout: float = ENGINE_CHECK_SECONDS) -> None:
    """Ping the engine that ``DOCKER_HOST`` names (the local socket by default) within ``timeout``
    seconds; one that does not answer is an :class:`UnavailableError` of one line saying which."""
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException as exc:
        raise unreachable(exc) from None
    try:
        client.ping()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise unreachable(exc) from None
    finally:
        client.close()


def unreachable(exc: BaseException) -> UnavailableError:
    """The error for an engine that did not answer, naming it and ``DOCKER_HOST``, without the SDK's chain."""
    host = os.environ.get("DOCKER_HOST", "").strip()
    where = f"{host} (DOCKER_HOST)" if host else f"{DEFAULT_ENGINE} (the default; DOCKER_HOST selects another)"
    return UnavailableError(f"cannot reach the Docker engine at {where}: {_root_cause(exc)}. "
                            "Is dockerd running, and is DOCKER_HOST right?")


def _root_cause(exc: BaseException) -> str:
    """The innermost readable reason (``Connection refused``) instead of the SDK's nested reprs."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror
        if isinstance(current, requests.exceptions.Timeout):
            return "no answer in time"
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[-1] if nested else None)
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text.removeprefix("Error while fetching server API version: ")


def _is_timeout(exc: Exception) -> bool:
    return "timed out" in str(exc).lower()


def _explain(exc: docker.errors.APIError) -> str:
    return str(exc.explanation or exc)


def _repo_digest(repo_digests: list[str], ref: str) -> str | None:
    """The ``name@sha256:...`` that matches the reference's repository, else the first one, else None."""
    repo = ref.split("@", 1)[0]
    if ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    for entry in repo_digests:
        if entry.split("@", 1)[0] == repo:
            return entry
    return repo_digests[0] if repo_digests else None


def _close(stream) -> None:
    """Close an attach stream and the HTTP response under it (docker-py leaves the socket to the GC)."""
    for close in (getattr(stream, "close", None), getattr(getattr(stream, "_response", None), "close", None)):
        try:
            if close:
                close()
        except Exception:
            pass


def pump_in_batches(chunks: Iterable[bytes], on_output: Callable[[bytes], None],
                    ends: tuple[type[BaseException], ...] = (Exception,)) -> None:
    """Hand output on in batches (64 KiB or every 0.25 s: fewer Redis writes), up to the stream's end or
    one of ``ends``; whatever arrived is always handed on, and a failing sink never stops the step."""
    buffer = bytearray()
    last = time.monotonic()

    def flush() -> None:
        if buffer:
            with contextlib.suppress(Exception):
                on_output(bytes(buffer))
            buffer.clear()

    try:
        for chunk in chunks:
            buffer += chunk
            if len(buffer) >= LOG_FLUSH_BYTES or time.monotonic() - last >= LOG_FLUSH_SECONDS:
                flush()
                last = time.monotonic()
    except ends:
        pass
    finally:
        flush()


class _LogPump:
    """Reads a container's attached output in a thread, handing it on in batches (fewer Redis writes)."""

    def __init__(self, stream, on_output: Callable[[bytes], None]):
        self.stream = stream
        self.on_output = on_output
        self.thread = threading.Thread(target=self._pump, daemon=True, name="conveyor-logs")
        self.thread.start()

    def _pump(self) -> None:
        # A stream cut by the engine going away ends as an error, or as a read on a closed socket.
        pump_in_batches(self.stream, self.on_output,
                        (docker.errors.APIError, requests.exceptions.RequestException, ValueError, OSError))

    def join(self, timeout: float = 10) -> None:
        self.thread.join(timeout=timeout)
        _close(self.stream)

    def close(self) -> None:
        _close(self.stream)


class _Stopper:
    """Polls ``should_stop`` while the container runs and kills it when asked (cancel, lost lease...)."""

    def __init__(self, container, should_stop: Callable[[], str | None]):
        self.container = container
        self.should_stop = should_stop
        self.reason: str | None = None
        self._done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True, name="conveyor-stopper")
        self.thread.start()

    def _watch(self) -> None:
        while not self._done.wait(STOP_POLL_SECONDS):
            try:
                reason = self.should_stop()
            except Exception:
                continue
            if reason:
                self.stop(reason)
                return

    def stop(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        if reason in DETACH_REASONS:
            return  # left running: another worker follows it now
        with contextlib.suppress(docker.errors.APIError, requests.exceptions.RequestException):
            self.container.kill()

    def close(self) -> None:
        self._done.set()
