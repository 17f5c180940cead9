"""The project image built by scripts/build-project-image.sh (slow: marked `image`).

Runs the real build against the local Docker engine: no registry is involved (the base
image comes from debootstrap). A missing engine is a failure, not a skip.

    .venv/bin/pytest -m image tests/test_image.py

`test_help_exits_zero` needs a working `ctl` entry point (scheduler.cli.main:main): it fails
while the CLI cannot start. The image tests run the build script on the work tree: with
other people editing the tree at the same time, the no-op rebuild check can see a change.
"""

from __future__ import annotations

import json
import subprocess
import time
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build-project-image.sh"
IMAGE = "conveyor:local"
SOCKET = Path("/var/run/docker.sock")

# The `image` marker belongs in pyproject's [tool.pytest.ini_options] markers; until it is
# registered there, keep filterwarnings=error from turning its first use into a collection error.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    pytestmark = [pytest.mark.image, pytest.mark.timeout(1200)]


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def image() -> dict:
    assert run("docker", "version", "--format", "{{.Server.Version}}", check=False).returncode == 0, (
        "no Docker engine answers: start dockerd (see shared/MACHINE-NOTES.md)"
    )
    head = run("git", "-C", str(ROOT), "rev-parse", "HEAD").stdout.strip()
    build = run("bash", str(SCRIPT), timeout=1100, check=False)
    assert build.returncode == 0, f"build failed:\n{build.stderr[-4000:]}"
    (info,) = json.loads(run("docker", "image", "inspect", IMAGE).stdout)
    info["head_at_build"] = head
    return info


def test_runs_as_non_root(image):
    assert image["Config"]["User"] == "10001:10001"
    ids = run("docker", "run", "--rm", "--network", "none", "--entrypoint", "id", IMAGE).stdout
    assert ids.startswith("uid=10001(conveyor) gid=10001(conveyor)"), ids


def test_oci_labels(image):
    labels = image["Config"]["Labels"]
    head = image["head_at_build"]  # git rev-parse HEAD when the build started
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert labels["org.opencontainers.image.revision"] == head
    assert labels["org.opencontainers.image.version"] == version
    assert labels["org.opencontainers.image.title"] == "conveyor"
    assert len(labels["io.conveyor.inputs-hash"]) == 64


def test_entrypoint_and_default_command(image):
    assert image["Config"]["Entrypoint"] == ["ctl"]
    assert image["Config"]["Cmd"] == ["worker"]


def test_venv_works_on_a_read_only_root(image):
    """As in the chart: read-only root file system, /tmp a tmpfs, all capabilities dropped."""
    code = "import sys, scheduler, runner, schemas; assert sys.version_info >= (3, 11); print(sys.prefix)"
    out = run(
        "docker", "run", "--rm", "--network", "none", "--read-only", "--tmpfs", "/tmp",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--entrypoint", "python3", IMAGE, "-c", code,
    ).stdout  # fmt: skip
    assert out.strip() == "/opt/conveyor"


@pytest.mark.skipif(not SOCKET.exists(), reason="no Docker socket on this host")
def test_worker_reaches_docker_through_the_socket_group(image):
    """`--group-add $(stat -c %g /var/run/docker.sock)` is all a non-root worker needs."""
    gid = str(SOCKET.stat().st_gid)
    code = "import docker; print(docker.from_env().ping())"
    out = run(
        "docker", "run", "--rm", "--network", "none", "--group-add", gid,
        "-v", f"{SOCKET}:{SOCKET}", "--entrypoint", "python3", IMAGE, "-c", code,
    ).stdout  # fmt: skip
    assert out.strip() == "True"


def test_second_build_is_a_no_op(image):
    # Bring the image up to date first (files may have changed since the fixture's build),
    # then an immediate second run must find nothing to do.
    first = run("bash", str(SCRIPT), timeout=900, check=False)
    assert first.returncode == 0, first.stderr[-4000:]
    start = time.monotonic()
    again = run("bash", str(SCRIPT), timeout=300, check=False)
    elapsed = time.monotonic() - start
    assert again.returncode == 0, again.stderr[-4000:]
    assert f"project: {IMAGE} is up to date" in again.stderr, again.stderr
    assert "base: conveyor/python-base:bookworm is up to date" in again.stderr, again.stderr
    assert elapsed < 30, f"an unchanged rebuild took {elapsed:.0f}s"


def test_help_exits_zero(image):
    """Needs a working `ctl` (scheduler.cli.main:main); fails while the CLI cannot start."""
    result = run("docker", "run", "--rm", "--network", "none", IMAGE, "--help", check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Usage" in result.stdout
