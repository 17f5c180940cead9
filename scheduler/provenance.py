"""What a submit records so that a run can be traced to its source: content hash and git state."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def git_state(path: str | Path) -> dict[str, Any]:
    """``{commit, dirty}`` of the git repository holding ``path``, or ``{}`` outside one (or without git)."""
    folder = Path(path).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--", str(Path(path).resolve())],
                                capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}
