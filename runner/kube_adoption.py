"""Adoption on Kubernetes (see ``runner/adoption.py``): the Pod of a dead worker's attempt is found by its
labels (exact values in its annotations), followed to its end, and its log read again from where the
stored log ends. Any worker of the namespace can see every Pod, so the multi-host rule is simpler
than Docker's: every worker is on the "same engine" (the namespace).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from kubernetes.client.exceptions import ApiException

from runner.adoption import Found
from runner.containers import LABEL_PREFIX, Outcome
from runner.kubernetes import KubernetesRuntime, _Attempt, label_value
from scheduler.model import StepPlan


class KubernetesAdoption:
    def __init__(self, runtime: KubernetesRuntime):
        self.runtime = runtime

    def engine_id(self) -> str:
        return f"kubernetes:{self.runtime.api_client.configuration.host}/{self.runtime.namespace}"

    def find(self, prefix: str, store_id: str, key: tuple[str, str, int]) -> Found | None:
        run_id, step, attempt = key
        wanted = {"prefix": prefix, "store": store_id, "run": run_id, "step": step, "attempt": str(attempt)}
        selector = ",".join(f"{LABEL_PREFIX}.{name}={label_value(value)}" for name, value in wanted.items())
        pods = self.runtime.core.list_namespaced_pod(self.runtime.namespace, label_selector=selector,
                                                     _request_timeout=self.runtime.timeout).items
        for pod in pods:  # the selector may match a hash stand-in (and an emulator may ignore it): check exactly
            exact = pod.metadata.annotations or {}
            if all(exact.get(f"{LABEL_PREFIX}.{name}") == value for name, value in wanted.items()):
                if pod.metadata.deletion_timestamp:
                    return Found(pod.metadata.name, "terminating")
                phase = (pod.status.phase if pod.status else None) or "pending"
                return Found(pod.metadata.name, phase.lower())
        return None

    def follow(self, found: Found, plan: StepPlan, on_output: Callable[[bytes], None],
               should_stop: Callable[[], str | None], offset: int) -> Outcome:
        """Follow the Pod as the worker that created it would have; the kubelet counts its
        ``activeDeadlineSeconds`` from the Pod's start, so the timeout keeps counting from there."""
        outcome = _Attempt(self.runtime, plan, found.id, _skip_first(on_output, offset), should_stop).follow()
        return self.runtime._collect_outputs(found.id, plan, outcome)  # the plan's declared outputs, at success

    def remove(self, found_id: str) -> None:
        with contextlib.suppress(ApiException):
            self.runtime.reap([found_id])


def _skip_first(on_output: Callable[[bytes], None], count: int) -> Callable[[bytes], None]:
    """``on_output`` without the first ``count`` bytes (the Pod's log is read again from its start)."""
    left = count

    def sink(chunk: bytes) -> None:
        nonlocal left
        if left:
            if len(chunk) <= left:
                left -= len(chunk)
                return
            chunk, left = chunk[left:], 0
        on_output(chunk)

    return sink
