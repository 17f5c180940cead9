"""A Docker engine of the test's own, to stop and restart at will without touching the shared one.

A second ``dockerd`` in the host's network namespace would delete the shared ``docker0`` bridge on
start-up (see MACHINE-NOTES), so this one lives in a network namespace of its own, held open by a
``sleep`` started with ``unshare --net``: every ``dockerd`` of the test (a restart is a new process)
enters that same namespace with ``nsenter``, so that containers surviving a restart (``live-restore``)
keep their network. It has its own data root, exec root (hence its own containerd) and socket.
Everything it started (dockerd, containerd, shims, the holder) is stopped by PID afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker

START_SECONDS = 60.0


class PrivateEngine:
    def __init__(self, image: str):
        self.image = image
        self.shared_env = dict(os.environ)  # the shared engine's DOCKER_HOST (if any), before a test points away
        # Short: the unix sockets under it (containerd's) must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="cvd-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.holder = subprocess.Popen(["unshare", "--net", "--fork", "bash", "-c",
                                        "ip link set lo up; exec sleep infinity"])
        self.namespace = self._namespace_of_holder()
        self.daemon: subprocess.Popen | None = None
        self.clients: list[docker.DockerClient] = []
        self.log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115

    def _namespace_of_holder(self) -> Path:
        """The network namespace of the holder's ``sleep``, checked to be another than ours."""
        ours = os.readlink("/proc/self/ns/net")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for child in _children(self.holder.pid):
                path = Path(f"/proc/{child}/ns/net")
                with contextlib.suppress(OSError):
                    if os.readlink(path) != ours and "sleep" in Path(f"/proc/{child}/cmdline").read_text():
                        return path
            time.sleep(0.05)
        self.holder.kill()
        raise AssertionError("the private engine's network namespace did not come up")

    def start(self, *, live_restore: bool) -> docker.DockerClient:
        assert self.daemon is None or self.daemon.poll() is not None, "the private engine already runs"
        assert os.readlink(self.namespace) != os.readlink("/proc/self/ns/net")  # never the host's namespace
        self.daemon = subprocess.Popen(
            ["nsenter", f"--net={self.namespace}", "dockerd", "--data-root", str(self.root / "data"),
             "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "pid"), "-H", self.url,
             "--iptables=false", "--ip-masq=false", "--shutdown-timeout", "1",
             *(["--live-restore"] if live_restore else [])],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while not self._answers():
            assert self.daemon.poll() is None, f"the private dockerd exited: {self.tail()}"
            assert time.monotonic() < deadline, f"the private dockerd did not answer: {self.tail()}"
            time.sleep(0.2)
        client = docker.DockerClient(base_url=self.url, version="1.41")
        self.clients.append(client)
        return client

    def _answers(self) -> bool:
        """A ping on a plain socket (docker-py leaks the socket of a connection that fails)."""
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2)
            try:
                probe.connect(str(self.socket))
                probe.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
                return b" 200 " in probe.recv(64)
            except OSError:
                return False

    def load_image(self) -> None:
        saved = subprocess.Popen(["docker", "save", self.image], stdout=subprocess.PIPE, env=self.shared_env)
        subprocess.run(["docker", "-H", self.url, "load"], stdin=saved.stdout, check=True,
                       stdout=subprocess.DEVNULL)
        saved.stdout.close()
        assert saved.wait() == 0

    def stop(self) -> None:
        """Stop the daemon as a restart would (SIGTERM); with ``live-restore`` its containers run on."""
        if self.daemon is not None and self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def close(self) -> None:
        """Stop everything this engine started, by PID: dockerd, its containerd and shims, the holder."""
        for client in self.clients:
            client.close()
        self.stop()
        for pid in self._started_here():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.holder.kill()
        self.holder.wait()
        self.log.close()
        for mount in reversed(self._mounts()):  # what a killed shim or daemon left mounted
            subprocess.run(["umount", "-l", mount], check=False, stderr=subprocess.DEVNULL)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=False)

    def tail(self, lines: int = 15) -> str:
        self.log.flush()
        return "\n".join((self.root / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])

    def _started_here(self) -> list[int]:
        """PIDs whose command line names this engine's folder (containerd, shims, a stray dockerd)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if str(self.root) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                        found.append(int(entry.name))
        return found

    def _mounts(self) -> list[str]:
        points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        return [point for point in points if point.startswith(str(self.root))]


def _children(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []
