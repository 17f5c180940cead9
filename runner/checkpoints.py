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
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from runner import archive
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
    archive.put_folders(container, ("/conveyor", CHECKPOINT_DIR),
                        None if initial is None else (CHECKPOINT_PATH, initial))


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
        found = archive.read_file(self.container, CHECKPOINT_PATH, self.cap,
                                  skip=lambda size, mtime: (size, mtime) == self.seen)
        if found is None:
            return
        if found.data is None:  # unchanged, over the cap, or not a regular file: nothing to save
            if found.size > self.cap and (found.size, found.mtime) != self.seen:
                log.warning("checkpoint of %s bytes not saved: over the cap of %s (CONVEYOR_OUTPUT_CAP)",
                            found.size, self.cap)
            self.seen = (found.size, found.mtime)
            return
        if len(found.data) <= self.cap and self.checkpoint.save(found.data):
            self.seen = (found.size, found.mtime)
