"""Secret env values: resolved by the worker when a step starts, never stored, masked in logs."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from scheduler.errors import ConveyorError

MASK = b"***"
MIN_MASKED = 4  # shorter values would mask ordinary text; they are still never stored


class SecretError(ConveyorError):
    """A secret the step needs is not available on this worker (the attempt ends with ``secret_missing``)."""


def resolve(references: Mapping[str, Mapping[str, str]], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{ENV_NAME: value}`` from ``{ENV_NAME: {env: VAR}}`` or ``{ENV_NAME: {file: /path}}``."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, ref in references.items():
        if "env" in ref:
            if ref["env"] not in environ:
                raise SecretError(f"secret {name}: the worker's environment has no {ref['env']}")
            values[name] = environ[ref["env"]]
        else:
            try:
                values[name] = Path(ref["file"]).read_text().rstrip("\n")
            except OSError as exc:
                raise SecretError(f"secret {name}: cannot read {ref['file']} on the worker: {exc.strerror}") from None
    return values


class Masker:
    """Wraps a log sink so that secret values never reach it, even when split across chunks."""

    def __init__(self, secrets: Mapping[str, str], sink: Callable[[bytes], None]):
        self.needles = sorted({v.encode() for v in secrets.values() if len(v) >= MIN_MASKED}, key=len, reverse=True)
        self.sink = sink
        self.pending = b""

    def __call__(self, chunk: bytes) -> None:
        if not self.needles:
            self.sink(chunk)
            return
        self.pending += chunk
        # Hold back what could be the start of a secret that the next chunk completes.
        cut = max(0, len(self.pending) - (len(self.needles[0]) - 1))
        for needle in self.needles:
            start = self.pending.find(needle, max(0, cut - len(needle) + 1))
            while start != -1 and start < cut:
                cut = max(cut, start + len(needle))
                start = self.pending.find(needle, start + 1)
        out, self.pending = self.pending[:cut], self.pending[cut:]
        if out:
            self.sink(self._mask(out))

    def close(self) -> None:
        if self.pending:
            self.sink(self._mask(self.pending))
            self.pending = b""

    def _mask(self, data: bytes) -> bytes:
        for needle in self.needles:
            data = data.replace(needle, MASK)
        return data
