"""One file out of a Docker container, and folders (with a file) into one, through the engine's archive API.

Outputs (``runner/outputs.py``) and checkpoints (``runner/checkpoints.py``) move files this way rather
than through a bind mount because it works as well for a worker that runs in a container itself and
drives the host's engine (its paths are not the engine's). ``get_archive`` answers with the file's stat
before its bytes, so a file over the cap (or unchanged since the last look) is never read.
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

# Go's os.FileMode type bits (directory, symlink, device, pipe, socket...), in the stat Docker sends.
_TYPE_BITS = 0xFFF00000


@dataclass(frozen=True)
class ContainerFile:
    """A file as found in the container. ``data`` is None when it was not read: over the cap, not a
    regular file (a directory, a link...), or skipped by the caller (unchanged)."""

    size: int
    mtime: str
    regular: bool
    data: bytes | None


def read_file(container, path: str, cap: int,
              skip: Callable[[int, str], bool] | None = None) -> ContainerFile | None:
    """The file at ``path`` (at most ``cap + 1`` bytes of it, so a caller can tell it is over), or None when
    the container has none. ``skip(size, mtime)`` True: the bytes are not read. Raises the SDK's errors
    for anything else (the engine away, the container gone)."""
    import docker.errors

    try:
        stream, stat = container.get_archive(path)
    except docker.errors.NotFound:
        return None
    size, mtime = int(stat.get("size") or 0), str(stat.get("mtime") or "")
    regular = not (int(stat.get("mode") or 0) & _TYPE_BITS)
    if size > cap or not regular or (skip is not None and skip(size, mtime)):
        _close(stream)
        return ContainerFile(size, mtime, regular, None)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.next()
        handle = tar.extractfile(member) if member is not None and member.isreg() else None
        if member is None or handle is None:
            return ContainerFile(size, mtime, False, None)
        return ContainerFile(member.size, mtime, True, handle.read(cap + 1))


def put_folders(container, folders: Iterable[str], file: tuple[str, bytes] | None = None) -> None:
    """Create ``folders`` (absolute paths, parents first; mode 0777, whatever user the image runs as) in a
    created container, and ``file`` (path, bytes; mode 0666) in one of them."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in folders:
            info = tarfile.TarInfo(path.lstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o777
            tar.addfile(info)
        if file is not None:
            path, data = file
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.mtime = len(data), 0o666, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    container.put_archive("/", buffer.getvalue())


def _close(stream) -> None:
    close = getattr(stream, "close", None)
    if close:
        with contextlib.suppress(Exception):
            close()
