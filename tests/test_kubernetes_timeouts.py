"""An API server that accepts requests and never answers (an overloaded one) hangs no caller: every
Kubernetes call of the runtime and of adoption gives up after its request timeout. Without one, a
worker's reaper thread blocked in such a call neither adopted nor judged any expired attempt."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import kubernetes.client
import pytest

from runner.kube_adoption import KubernetesAdoption
from runner.kubernetes import KubernetesRuntime
from scheduler.plan import plan_run
from tests.helpers import spec_from

TIMEOUT = 0.5


@pytest.fixture
def silent_api() -> Iterator[str]:
    """A loopback server that accepts connections and reads requests, and never answers one."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


@pytest.fixture
def runtime(silent_api: str) -> Iterator[KubernetesRuntime]:
    configuration = kubernetes.client.Configuration()
    configuration.host = silent_api
    client = kubernetes.client.ApiClient(configuration)
    yield KubernetesRuntime(client, "silent", poll_seconds=0.05, request_timeout=TIMEOUT)
    client.close()


def bounded(call) -> float:
    """Seconds ``call`` took, raising or not (it must not hang)."""
    began = time.monotonic()
    with contextlib.suppress(Exception):
        call()
    return time.monotonic() - began


def test_the_reapers_calls_give_up_after_the_request_timeout(runtime: KubernetesRuntime) -> None:
    adoption = KubernetesAdoption(runtime)
    for call in (lambda: adoption.find("p", "store", ("run", "step", 1)),  # the adopter's look-up
                 lambda: runtime.orphans("p"),  # the orphan sweep
                 lambda: runtime.reap(["a-pod"]),  # delete Pod and Secret
                 runtime.engine_version):
        assert bounded(call) < TIMEOUT * 2 + 1.5


def test_a_step_against_a_silent_api_ends_instead_of_hanging(runtime: KubernetesRuntime) -> None:
    plan = plan_run(spec_from("""
        name: silent
        steps:
          a: {image: conveyor/busybox:local, command: ["true"]}
    """), version=1, params={}, now=datetime.now(UTC)).steps["a"]
    began = time.monotonic()
    outcome = runtime.run(plan, {"dev.conveyor.prefix": "p", "dev.conveyor.attempt": "1"}, lambda _: None,
                          lambda: None)
    assert outcome.reason == "kubernetes_unreachable" and "timed out" in (outcome.error or "").lower()
    assert time.monotonic() - began < TIMEOUT * 2 + 1.5
