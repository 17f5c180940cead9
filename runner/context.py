"""What a worker process holds for its jobs: one store, one dispatcher, one container runtime."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cached_property

from runner.containers import ContainerRuntime, DockerRuntime
from scheduler.dispatch import Dispatcher
from scheduler.settings import Settings
from scheduler.store import RunStore


@dataclass
class WorkerContext:
    settings: Settings
    name: str = ""

    @cached_property
    def store(self) -> RunStore:
        return RunStore(self.settings.connect(), self.settings.prefix, self.settings.log_cap)

    @cached_property
    def dispatcher(self) -> Dispatcher:
        return Dispatcher(self.settings.connect(decode=False), self.settings.prefix)

    @cached_property
    def runtime(self) -> ContainerRuntime:
        return DockerRuntime()

    @cached_property
    def host(self) -> str:
        return socket.gethostname()

    @property
    def pid(self) -> int:
        return os.getpid()


_current: WorkerContext | None = None


def install(context: WorkerContext) -> None:
    global _current
    _current = context


def current(prefix: str) -> WorkerContext:
    """The worker's context; built from the environment when the job runs under a plain ``rq worker``."""
    global _current
    if _current is None or _current.settings.prefix != prefix:
        settings = Settings.from_env()
        _current = WorkerContext(Settings(settings.redis_url, prefix, settings.log_cap))
    return _current
