"""A step's checkpoint: one file it may write at any time, saved while it runs, found by its next attempt.

The container sees ``CONVEYOR_CHECKPOINT`` (:data:`CHECKPOINT_PATH`, in a directory writable by any user)
and may write its progress there whenever it likes (best with ``write tmp; mv tmp $CONVEYOR_CHECKPOINT``,
so a save never reads half a file). The worker saves the file with the attempt (Redis, one key per
step, fenced by the attempt: ``RunStore.save_checkpoint``) every :data:`SAVE_SECONDS` when its size or
mtime changed, and once more when the container has exited, so that the next attempt of the same step
(a retry, a lost attempt's retry, ``ctl rerun --resume``) finds the last saved one in place before it
starts: a long job resumes instead of starting over. A file over the cap (``CONVEYOR_OUTPUT_CAP``, as
for outputs) is not saved (the previous one stays); it never fails the attempt.

Docker only for now: ``get_archive`` of that one path from the running container, ``put_archive``
before it starts.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from runner.outputs import output_cap

log = logging.getLogger("conveyor.runner")

CHECKPOINT_DIR = "/conveyor/checkpoint"
CHECKPOINT_PATH = f"{CHECKPOINT_DIR}/data"
CHECKPOINT_ENV = "CONVEYOR_CHECKPOINT"
SAVE_SECONDS = 2.0


@dataclass(frozen=True)
class Checkpoint:
    """What the runtime needs: the saved checkpoint to put in place (None: start clean) and how to save
    a new one (returns False once the attempt is no longer this worker's)."""

    initial: bytes | None
    save: Callable[[bytes], bool]
    every: float = SAVE_SECONDS


def docker_prepare(container, initial: bytes | None) -> None:
    """Create the checkpoint directory (mode 0777) in a created container, with the saved file in it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in ("conveyor", CHECKPOINT_DIR.lstrip("/")):
            info = tarfile.TarInfo(path)
            info.type, info.mode = tarfile.DIRTYPE, 0o777
            tar.addfile(info)
        if initial is not None:
            info = tarfile.TarInfo(CHECKPOINT_PATH.lstrip("/"))
            info.size, info.mode, info.mtime = len(initial), 0o666, int(time.time())
            tar.addfile(info, io.BytesIO(initial))
    container.put_archive("/", buffer.getvalue())


class DockerSaver:
    """Saves the container's checkpoint file when it changed: :meth:`poll` at most every ``every`` seconds
    (from the runtime's stop watcher) and :meth:`final` once it exited. Never raises."""

    def __init__(self, container, checkpoint: Checkpoint, cap: int | None = None):
        self.container = container
        self.checkpoint = checkpoint
        self.cap = output_cap() if cap is None else cap
        self.seen: tuple[int, str] | None = None
        self.last = time.monotonic()
        self.lock = threading.Lock()

    def watching(self, should_stop: Callable[[], str | None]) -> Callable[[], str | None]:
        """``should_stop`` that also saves the checkpoint every few seconds while the container runs."""
        def check() -> str | None:
            if time.monotonic() - self.last >= self.checkpoint.every:
                self.poll()
            return should_stop()
        return check

    def poll(self) -> None:
        self.last = time.monotonic()
        with self.lock, contextlib.suppress(Exception):
            self._save_if_changed()

    def final(self) -> None:
        with self.lock:
            try:
                self._save_if_changed()
            except Exception as exc:
                log.warning("could not save the checkpoint at exit: %s", exc)

    def _save_if_changed(self) -> None:
        import docker.errors

        try:
            stream, stat = self.container.get_archive(CHECKPOINT_PATH)
        except docker.errors.NotFound:
            return
        size, mtime = int(stat.get("size") or 0), str(stat.get("mtime") or "")
        regular = not (int(stat.get("mode") or 0) & 0xFFF00000)
        if (size, mtime) == self.seen or size > self.cap or not regular:
            _close(stream)
            if size > self.cap and (size, mtime) != self.seen:
                log.warning("checkpoint of %s bytes not saved: over the cap of %s (CONVEYOR_OUTPUT_CAP)", size,
                            self.cap)
            self.seen = (size, mtime)
            return
        raw = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            member = tar.next()
            handle = tar.extractfile(member) if member is not None and member.isreg() else None
            if handle is None:
                return
            data = handle.read(self.cap + 1)
        if len(data) <= self.cap and self.checkpoint.save(data):
            self.seen = (size, mtime)


def _close(stream) -> None:
    close = getattr(stream, "close", None)
    if close:
        with contextlib.suppress(Exception):
            close()
