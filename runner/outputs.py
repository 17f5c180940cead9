"""Collecting a step's declared outputs when its attempt succeeds, for every runtime.

The container sees ``CONVEYOR_OUTPUTS`` (a directory, :data:`OUTPUTS_DIR`) and writes each declared
output to ``$CONVEYOR_OUTPUTS/<name>``. After a successful exit the runtime fetches the files its own
way (Docker: ``get_archive`` from the stopped container, which works as well for a worker in a
container driving the host's engine; Kubernetes: the dump of a reader sidecar, see
``runner/kubernetes.py``) and :func:`judge` decides: every declared output present, a regular file,
UTF-8 text and at most the cap (``CONVEYOR_OUTPUT_CAP``, default 1 MiB), or the attempt fails with
``output_missing`` / ``output_too_large`` / ``output_invalid``. One trailing newline is dropped (``echo x >
$CONVEYOR_OUTPUTS/n`` gives ``x``, as ``$(...)`` would); nothing else is changed.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from runner import archive
from scheduler.model import memory_bytes

OUTPUTS_DIR = "/conveyor/outputs"
OUTPUTS_ENV = "CONVEYOR_OUTPUTS"
DEFAULT_CAP = 1024 * 1024


def output_cap(environ: Mapping[str, str] | None = None) -> int:
    """``CONVEYOR_OUTPUT_CAP`` (bytes, or ``64k``, ``1m``...), else 1 MiB; a bad value falls back to it."""
    text = (os.environ if environ is None else environ).get("CONVEYOR_OUTPUT_CAP", "").strip()
    try:
        cap = memory_bytes(text) if text else None
    except ValueError:
        cap = None
    return cap if cap and cap > 0 else DEFAULT_CAP


@dataclass(frozen=True)
class Found:
    """One declared output as the runtime found it: ``size`` None when missing; ``data`` None when it was
    not read (over the cap); ``regular`` False for a directory, link or device."""

    size: int | None
    data: bytes | None = None
    regular: bool = True


MISSING = Found(None)


class OutputFailure(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def judge(declared: Iterable[str], found: Mapping[str, Found], cap: int) -> dict[str, str]:
    """The outputs as text, or :class:`OutputFailure` naming the first problem (declared order)."""
    values = {}
    for name in declared:
        item = found.get(name, MISSING)
        if item.size is None:
            raise OutputFailure("output_missing", f"the step declares output '{name}' but did not write "
                                f"${OUTPUTS_ENV}/{name}")
        if not item.regular:
            raise OutputFailure("output_invalid", f"output '{name}' is not a regular file")
        if item.size > cap or item.data is None or len(item.data) > cap:
            raise OutputFailure("output_too_large", f"output '{name}' is {item.size:,} bytes; the cap is {cap:,} "
                                "(CONVEYOR_OUTPUT_CAP)")
        try:
            text = item.data.decode("utf-8")
        except UnicodeDecodeError:
            raise OutputFailure("output_invalid", f"output '{name}' is not UTF-8 text") from None
        values[name] = text[:-1] if text.endswith("\n") else text
    return values


def collect(declared: Iterable[str], fetch: Callable[[str, int], Found], cap: int | None = None) -> dict[str, str]:
    """Fetch each declared output (``fetch(name, cap)``) and :func:`judge` them."""
    cap = output_cap() if cap is None else cap
    names = list(declared)
    return judge(names, {name: fetch(name, cap) for name in names}, cap)


# --- Docker: get_archive from the stopped container -----------------------------------------------


def docker_prepare(container) -> None:
    """Create the outputs directory (mode 0777, whatever user the image runs as) in a created container."""
    archive.put_folders(container, ("/conveyor", OUTPUTS_DIR))


def docker_fetch(container) -> Callable[[str, int], Found]:
    """``fetch`` for :func:`collect` reading one file at a time from a (stopped) container: its size
    comes first, so an output over the cap is never read."""
    def fetch(name: str, cap: int) -> Found:
        found = archive.read_file(container, f"{OUTPUTS_DIR}/{name}", cap)
        return MISSING if found is None else Found(found.size, found.data, found.regular)

    return fetch


# --- Kubernetes: the dump of the reader sidecar ---------------------------------------------------

# Run by a small sidecar (busybox sh) sharing the outputs emptyDir with the step. The kubelet stops a
# native sidecar (an init container with restartPolicy Always) with SIGTERM once the step's container
# has exited; the trap then prints every declared output, framed, to the sidecar's log, which the
# runtime reads before it deletes the Pod. Args: cap, then the declared names.
READER_SCRIPT = r"""
cap="$1"; shift
dump() {
  echo "conveyor-outputs 1"
  for name in "$@"; do
    f="$CONVEYOR_OUTPUTS/$name"
    if [ -L "$f" ] || { [ -e "$f" ] && [ ! -f "$f" ]; }; then echo "invalid $name"
    elif [ ! -e "$f" ]; then echo "missing $name"
    else
      size=$(wc -c < "$f")
      if [ "$size" -gt "$cap" ]; then echo "large $name $size"
      else echo "file $name $size"; base64 < "$f"; echo "."
      fi
    fi
  done
  echo "conveyor-outputs end"
}
trap 'dump "$@"; exit 0' TERM
while :; do sleep 1 & wait $!; done
"""


def parse_dump(text: str) -> dict[str, Found] | None:
    """The reader's log as found outputs; None when the dump is absent or cut short."""
    lines = text.splitlines()
    try:
        start = lines.index("conveyor-outputs 1")
    except ValueError:
        return None
    found: dict[str, Found] = {}
    i = start + 1
    while i < len(lines):
        parts = lines[i].split(" ")
        i += 1
        if parts == ["conveyor-outputs", "end"]:
            return found
        if parts[0] == "missing" and len(parts) == 2:
            found[parts[1]] = MISSING
        elif parts[0] == "invalid" and len(parts) == 2:
            found[parts[1]] = Found(0, None, False)
        elif parts[0] == "large" and len(parts) == 3:
            found[parts[1]] = Found(int(parts[2]))
        elif parts[0] == "file" and len(parts) == 3:
            encoded = []
            while i < len(lines) and lines[i] != ".":
                encoded.append(lines[i])
                i += 1
            i += 1
            found[parts[1]] = Found(int(parts[2]), base64.b64decode("".join(encoded)))
        else:
            return None
    return None


def fetch_from(found: Mapping[str, Found]) -> Callable[[str, int], Found]:
    return lambda name, cap: found.get(name, MISSING)
