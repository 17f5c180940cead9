"""A Kubernetes API *emulator* (kmock) in a thread, and a fake kubelet that plays scripted containers on it.

This is not a cluster. kmock stores objects and serves create/read/list/patch/delete and watch over
HTTP, which the official ``kubernetes`` client talks to unchanged. Nothing runs a container: the
:class:`FakeKubelet` thread notices each new Pod, asks the test's *script* what the container would
do with that Pod's ``command``, ``env`` and ``workingDir``, and moves the Pod through Running to
Succeeded or Failed with ``containerStatuses`` as a kubelet would. It enforces
``activeDeadlineSeconds`` (``DeadlineExceeded``) and serves each Pod's log (``pods/log``, followed)
from a kmock reaction. What kmock does not do, and the runtime must not rely on: label and field
selectors (lists return every Pod of the namespace), graceful deletion, admission and validation.

kmock keeps every request it served, for assertions, and matches each new request against its
reactions by walking that whole history: a request costs time in proportion to the requests before
it, and a busy emulator (the chaos bench: a kubelet listing Pods 50 times a second, workers polling)
grinds to a halt within minutes, its clients' calls hanging. This emulator keeps only the last
``HISTORY`` requests (no test here asserts on kmock's history).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kmock
import kubernetes.client
from kubernetes.client.exceptions import ApiException

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-kmock", "gitCommit": "0" * 40,
           "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.23",
           "compiler": "gc", "platform": "linux/amd64"}
IMAGE_ID = "docker.io/conveyor/busybox@sha256:" + "c0" * 32
HISTORY = 200  # requests kmock keeps (see above); far more than can be in flight at once
TRIM_SECONDS = 0.25


@dataclass(frozen=True)
class Exec:
    """What the container was asked to run, read back from the Pod spec the runtime created."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    working_dir: str | None
    pod: Mapping[str, Any]


@dataclass(frozen=True)
class Script:
    """What a container does: print ``output``, keep running ``seconds``, then exit with ``exit_code``
    (``reason`` as the kubelet reports it, e.g. ``OOMKilled``). ``waiting`` keeps it from starting
    (e.g. ``ErrImageNeverPull``); ``pod_reason`` fails the whole Pod (e.g. ``Evicted``)."""

    output: bytes = b""
    exit_code: int = 0
    seconds: float = 0.0
    reason: str | None = None
    message: str | None = None
    waiting: str | None = None
    pod_reason: str | None = None
    image_id: str = IMAGE_ID
    files: Mapping[str, bytes] = field(default_factory=dict)  # written into the mount of $CONVEYOR_OUTPUTS


def busybox(run: Exec) -> Script:
    """The few busybox behaviours the contract needs, from argv alone (no shell unless argv asks for one)."""
    argv = list(run.argv)
    if argv[:1] == ["true"]:
        return Script()
    if argv[:1] == ["echo"]:
        return Script(output=(" ".join(argv[1:]) + "\n").encode())
    if argv[:1] == ["sleep"]:
        return Script(seconds=float(argv[1]))
    if argv[:2] == ["sh", "-c"] and argv[2].startswith("exit "):
        return Script(exit_code=int(argv[2].split()[1]), reason="Error")
    return Script(exit_code=128, reason="StartError",
                  message=f'exec: "{argv[0]}": executable file not found in $PATH')


@dataclass
class _Container:
    name: str
    script: Script
    began: float
    deadline: float | None
    output: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)
    sidecars: list[_Sidecar] = field(default_factory=list)
    volumes: dict[str, str] = field(default_factory=dict)  # emptyDir name -> a host folder


@dataclass
class _Sidecar:
    """A native sidecar (init container with ``restartPolicy: Always``) run for real: its command under
    the host's busybox sh, its mount paths in env values mapped to the Pod's emptyDir folders. The kubelet
    sends it SIGTERM once the step's container has exited; its stdout is its log."""

    name: str
    process: subprocess.Popen
    log: bytes = b""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.log, _ = self.process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.log, _ = self.process.communicate()


class Emulator:
    """kmock's KubernetesEmulator served on a loopback port from its own event-loop thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host  # 0.0.0.0: containers reach it through their network's gateway
        self.kubelet: FakeKubelet | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.url = ""
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True, name="kmock")

    def __enter__(self) -> Emulator:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the kmock emulator did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _serve(self) -> None:
        async with kmock.KubernetesEmulator() as k8s, kmock.Server(k8s, host=self.host) as server:
            k8s.resources["v1/pods"] = kmock.ResourceInfo(
                kind="Pod", namespaced=True, subresources={"log", "status"},
                verbs={"get", "list", "watch", "create", "patch", "delete"})
            k8s.resources["v1/secrets"] = kmock.ResourceInfo(
                kind="Secret", namespaced=True, verbs={"get", "list", "create", "patch", "delete"})
            k8s["get /version/"] << VERSION  # the client asks with a trailing slash; kmock knows "/version"
            k8s[kmock.resource("v1", "pods"), kmock.subresource("log")] << self._log
            self._stop, self._loop = asyncio.Event(), asyncio.get_running_loop()
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            while not self._stop.is_set():
                # kmock's own lists (the server's, each reaction's): there is no public way to forget requests.
                for history in (k8s._requests, *(payload._requests for payload in k8s._payloads)):
                    if len(history) > HISTORY:
                        del history[:-HISTORY]
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), TRIM_SECONDS)

    async def _log(self, request: kmock.Request):
        """Follow one Pod's output as the fake kubelet writes it; end when its container ends."""
        yield b""  # send the headers now, even if the container prints nothing
        container = self.kubelet.containers.get(request.name) if self.kubelet else None
        if container is None:
            return
        wanted = request.params.get("container") if request.params else None
        if wanted and wanted != "step":
            while not container.done.is_set():
                await asyncio.sleep(0.01)
            for sidecar in container.sidecars:
                if sidecar.name == wanted:
                    yield sidecar.log
            return
        sent = 0
        while True:
            finished = container.done.is_set()
            if len(container.output) > sent:
                chunk = bytes(container.output[sent:])
                sent += len(chunk)
                yield chunk
            elif finished:
                return
            await asyncio.sleep(0.01)

    def api_client(self) -> kubernetes.client.ApiClient:
        configuration = kubernetes.client.Configuration()
        configuration.host = self.url
        return kubernetes.client.ApiClient(configuration)


class FakeKubelet:
    """Plays a kubelet against the emulator: every 20 ms, starts new Pods, advances running ones.

    ``script(exec) -> Script`` decides what each new Pod's container does (default: :func:`busybox`).
    """

    def __init__(self, emulator: Emulator, namespace: str):
        self.emulator = emulator
        emulator.kubelet = self
        self.namespace = namespace
        self.api = emulator.api_client()
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.script: Callable[[Exec], Script] = busybox
        self.containers: dict[str, _Container] = {}
        self.pods_seen: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="fake-kubelet")

    def __enter__(self) -> FakeKubelet:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for container in self.containers.values():
            container.done.set()
        self.api.close()

    def _loop(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(ApiException, OSError):
                self._tick()

    def _tick(self) -> None:
        response = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        pods = {pod["metadata"]["name"]: pod for pod in json.loads(response.data)["items"]}
        for name, container in list(self.containers.items()):
            if name not in pods:
                for sidecar in container.sidecars:
                    sidecar.process.kill()
                container.done.set()  # deleted: the container dies with its Pod
        for name, pod in pods.items():
            container = self.containers.get(name)
            if container is None or (container.done.is_set() and not pod.get("status", {}).get("phase")):
                self._start(pod)  # new, or made again under the same name (no kubelet left it without a phase)
            elif not container.done.is_set():
                self._advance(container)

    def _start(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        spec = pod["spec"]["containers"][0]
        run = Exec(tuple(spec.get("command") or ()), {e["name"]: e.get("value", "") for e in spec.get("env", [])},
                   spec.get("workingDir"), pod)
        script = self.script(run)
        now = time.monotonic()
        deadline = pod["spec"].get("activeDeadlineSeconds")
        container = _Container(name, script, now, now + deadline if deadline else None)
        self.containers[name] = container
        self.pods_seen.append(pod)
        self._volumes_and_sidecars(pod, container)
        for path, data in self._files_of(spec, container).items():
            Path(path).write_bytes(data)
        if script.waiting:
            self._status(name, "Pending", {"waiting": {"reason": script.waiting, "message": "scripted"}},
                         image_id="")
            return
        container.output += script.output
        self._status(name, "Running", {"running": {"startedAt": _now()}}, image_id=script.image_id)
        self._advance(container)

    def _volumes_and_sidecars(self, pod: dict[str, Any], container: _Container) -> None:
        """Make each emptyDir a host folder and start the native sidecars (before the step, as a kubelet does)."""
        for volume in pod["spec"].get("volumes", []):
            if "emptyDir" in volume:
                container.volumes[volume["name"]] = tempfile.mkdtemp(prefix="kmock-emptydir-")
        for init in pod["spec"].get("initContainers", []):
            if init.get("restartPolicy") != "Always":
                continue
            paths = self._mounts(init, container)
            env = {e["name"]: paths.get(e.get("value", ""), e.get("value", "")) for e in init.get("env", [])}
            process = subprocess.Popen([shutil.which("busybox") or "busybox", *init["command"]],
                                       env={"PATH": "/usr/bin:/bin", **env}, stdout=subprocess.PIPE)
            container.sidecars.append(_Sidecar(init["name"], process))

    @staticmethod
    def _mounts(spec: dict[str, Any], container: _Container) -> dict[str, str]:
        return {m["mountPath"]: container.volumes[m["name"]] for m in spec.get("volumeMounts", [])
                if m["name"] in container.volumes}

    def _files_of(self, spec: dict[str, Any], container: _Container) -> dict[str, bytes]:
        """The script's files, placed where the step's ``CONVEYOR_OUTPUTS`` mount lives on the host."""
        target = next((e.get("value") for e in spec.get("env", []) if e["name"] == "CONVEYOR_OUTPUTS"), None)
        folder = self._mounts(spec, container).get(target or "")
        if not container.script.files:
            return {}
        assert folder, "the script writes outputs but the Pod gives the step no CONVEYOR_OUTPUTS volume"
        return {str(Path(folder) / name): data for name, data in container.script.files.items()}

    def _advance(self, container: _Container) -> None:
        script, now = container.script, time.monotonic()
        if script.waiting:
            return
        if container.deadline is not None and now >= container.deadline and now - container.began < script.seconds:
            self._end(container, "Failed", 137, "Error", pod_reason="DeadlineExceeded")
        elif now - container.began >= script.seconds:
            phase = "Succeeded" if script.exit_code == 0 and not script.pod_reason else "Failed"
            self._end(container, phase, script.exit_code, script.reason or "Completed", script.pod_reason,
                      script.message)

    def _end(self, container: _Container, phase: str, exit_code: int, reason: str, pod_reason: str | None = None,
             message: str | None = None) -> None:
        terminated = {"exitCode": exit_code, "reason": reason, "startedAt": _now(), "finishedAt": _now()}
        if message:
            terminated["message"] = message
        for sidecar in container.sidecars:  # the step has exited: the kubelet stops its sidecars
            sidecar.stop()
        for folder in container.volumes.values():
            shutil.rmtree(folder, ignore_errors=True)
        self._status(container.name, phase, {"terminated": terminated}, image_id=container.script.image_id,
                     pod_reason=pod_reason)
        container.done.set()

    def _status(self, name: str, phase: str, state: dict[str, Any], image_id: str,
                pod_reason: str | None = None) -> None:
        status: dict[str, Any] = {
            "phase": phase,
            "startTime": _now(),
            "containerStatuses": [{"name": "step", "image": "conveyor/busybox:local", "imageID": image_id,
                                   "ready": phase == "Running", "restartCount": 0, "state": state}],
        }
        if pod_reason:
            status["reason"] = pod_reason
            status["message"] = f"scripted: {pod_reason}"
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod_status(name, self.namespace, {"status": status})


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
