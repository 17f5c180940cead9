"""An attempt's output on its way to the store: masked, fenced by the lease holder, counted.

The store keeps, beside the (capped) log, ``log_bytes``: how many bytes of the container's own output
it has taken. A worker that adopts the container (``runner/adoption.py``) reads the container's
output again from the engine and skips exactly that many bytes, so the stored log has every byte
once, whichever worker stored it. Bytes a worker held back (a batch not yet flushed, the tail the
secret masker keeps in case a secret spans two chunks) are not counted, so an adopter stores them.
Once another worker holds the attempt, this one's writes are refused (no byte twice).
"""

from __future__ import annotations

from collections.abc import Mapping

from runner.secrets import Masker
from scheduler.store import RunStore


class AttemptLog:
    """The ``on_output`` sink of one attempt's container, for the worker holding the attempt."""

    def __init__(self, store: RunStore, key: tuple[str, str, int], holder: str,
                 secrets: Mapping[str, str] | None = None):
        self.store = store
        self.key = key
        self.holder = holder
        self.taken = 0  # container bytes handed to this sink
        self.accounted = 0  # of those, the bytes the store has accounted for
        self.refused = False
        self._unsent = bytearray()  # masked bytes a failed write left behind (Redis away): sent with the next
        self._unsent_raw = 0
        self._closing = False
        self._withheld = False
        self._masker = Masker(secrets or {}, self._append)

    def mask_with(self, secrets: Mapping[str, str]) -> None:
        """Secret values to mask from now on (known once the step's secrets are resolved)."""
        self._masker = Masker(secrets, self._append)

    def withhold(self, note: str) -> None:
        """Store ``note`` and none of the output (its secrets could not be resolved to mask them)."""
        self._append(note.encode())
        self._withheld = True

    def resume(self) -> AttemptLog:
        """Go on after the output stream broke (the engine went away): what the masker held back is
        dropped here, since the reader starts again at :attr:`accounted`."""
        self._masker.pending = b""
        self.taken = self.accounted
        return self

    def __call__(self, chunk: bytes) -> None:
        if self._withheld:
            return
        self.taken += len(chunk)
        self._masker(chunk)

    def close(self) -> None:
        self._closing = True
        self._masker.close()

    def _append(self, masked: bytes) -> None:
        consumed = self.taken if self._closing else self.taken - len(self._masker.pending)
        self._unsent += masked
        self._unsent_raw += consumed - self.accounted
        self.accounted = consumed
        if self.refused:
            return
        run_id, step, attempt = self.key
        # The stored log and its count move together or not at all; a failed write is retried with the next.
        kept = self.store.append_log(run_id, step, attempt, bytes(self._unsent), holder=self.holder,
                                     raw=self._unsent_raw)
        self._unsent.clear()
        self._unsent_raw = 0
        if kept < 0:
            self.refused = True  # another worker holds the attempt now: it stores the rest
