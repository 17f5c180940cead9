"""A private ``redis-server`` for ``ctl run`` when no ``REDIS_URL`` is set: a unix socket in a
temporary folder, no persistence, gone when the run ends (also when its parent dies).
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from scheduler.errors import UnavailableError
from scheduler.records import COMPACT_HASHES

START_TIMEOUT = 10.0


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent dies (no orphans after kill -9)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG


@contextmanager
def embedded_redis() -> Iterator[str]:
    """Start a private redis-server and yield its ``unix://`` URL; stop it and remove its folder after."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise UnavailableError(
            "redis-server is not installed: install Debian's package with `apt-get install redis-server`, "
            "or set REDIS_URL to use a Redis you already run")
    folder = Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
    socket_path = folder / "redis.sock"
    process = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700",
         "--save", "", "--appendonly", "no", "--dir", str(folder), "--loglevel", "warning",
         "--logfile", str(folder / "redis.log"), *COMPACT_HASHES],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not socket_path.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                log = (folder / "redis.log").read_text(errors="replace") if (folder / "redis.log").exists() else ""
                raise UnavailableError(f"the private redis-server did not start: {log.strip()[-500:]}")
            time.sleep(0.005)
        yield f"unix://{socket_path}"
    finally:
        process.kill()  # nothing to flush: no persistence, and the folder goes next
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)
