"""What a worker process holds for its jobs: one engine (store + dispatcher), one container runtime."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property

from runner.containers import ContainerRuntime, DockerRuntime
from scheduler.dispatch import Dispatcher
from scheduler.engine import Engine
from scheduler.outages import OutageSet
from scheduler.settings import Settings, runtime_kind
from scheduler.store import RunStore


@dataclass
class WorkerContext:
    settings: Settings
    name: str = ""
    _outages: OutageSet | None = field(default=None, repr=False)
    _outages_at: float = 0.0
    stopping_since: float | None = None  # monotonic time the worker was asked to stop
    # Attempts this process follows now (its job, its adoptions): its own sweep never adopts them.
    following: set[tuple[str, str, int]] = field(default_factory=set)

    @cached_property
    def store(self) -> RunStore:
        return RunStore(self.settings.connect(), self.settings.prefix, self.settings.log_cap,
                        self.settings.signing_key)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.settings.connect(decode=False), self.settings.prefix)

    @cached_property
    def engine(self) -> Engine:
        return Engine(self.store, self.dispatcher)

    @cached_property
    def runtime(self) -> ContainerRuntime:
        """``CONVEYOR_RUNTIME``: ``docker`` (the default) or ``kubernetes`` (one Pod per attempt). An
        engine that does not answer is an UnavailableError naming it (see ``check_engine``)."""
        if runtime_kind() == "kubernetes":
            from runner.kubernetes import KubernetesRuntime  # the kubernetes client only where it is used

            return KubernetesRuntime.from_env()
        return DockerRuntime()

    @cached_property
    def host(self) -> str:
        return socket.gethostname()

    @property
    def pid(self) -> int:
        return os.getpid()

    @property
    def holder(self) -> str:
        """Who holds this process's leases: the worker's name (under a plain ``rq worker``, host and pid)."""
        return self.name or f"{self.host}-{self.pid}"

    def shutdown_grace_over(self) -> bool:
        return self.stopping_since is not None and time.monotonic() - self.stopping_since > self.settings.shutdown_grace

    def global_outage(self, now: datetime) -> tuple[str, datetime, datetime] | None:
        """The global outage window holding ``now`` (name, start, end), from a copy refreshed every few seconds."""
        if self._outages is None or time.monotonic() - self._outages_at > OUTAGE_REFRESH_SECONDS:
            from scheduler.agenda import Agenda

            self._outages = OutageSet.of(Agenda(self.store).global_outages())
            self._outages_at = time.monotonic()
        return self._outages.find(now) if self._outages else None


OUTAGE_REFRESH_SECONDS = 5.0
_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current(prefix: str) -> WorkerContext:
    """The worker's context; built from the environment when the job runs under a plain ``rq worker``."""
    global _current
    if _current is None or _current.settings.prefix != prefix:
        from dataclasses import replace

        _current = WorkerContext(replace(Settings.from_env(), prefix=prefix))
    return _current
