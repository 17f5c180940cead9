"""DAG folders kept in sync: what is in the folder is what is scheduled.

``ctl scheduler --dags DIR`` (and the one-shot ``ctl dags sync DIR``) walks the folder recursively,
following symlinks, so that git-sync's swap of a ``current`` link to a new revision is just a change
of every file. Each pass reads only files whose fingerprint (resolved path, size, mtime) changed:

- a valid file is submitted: new content is a new version, the same content a no-op (so any number
  of schedulers syncing one folder create each version once);
- an invalid file is an **import error**, recorded with its ``file:line:col`` problems (``ctl dags``
  shows it beside the DAG it defined, which keeps running its last valid version), logged once per
  change, counted in ``conveyor_dag_import_errors``; it never stops the scheduler;
- a file that disappeared deactivates the DAG it defined (no new scheduled runs, history kept);
  the file coming back activates it again.

Polling (every ``--sync-interval`` seconds, 2 by default) rather than inotify: it sees symlink swaps,
network and container-volume mounts alike, and a pass over an unchanged folder costs one ``stat``
per file.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from scheduler.agenda import Agenda
from scheduler.errors import ConveyorError, SpecError
from scheduler.service import store_calendars, submit_source
from scheduler.store import RunStore, now_iso

log = logging.getLogger("conveyor.dagsync")
SUFFIXES = (".yaml", ".yml")
DEFAULT_INTERVAL = 2.0


@dataclass
class FileResult:
    file: str  # as shown to people: the folder as given joined with the relative path
    action: str  # new_version | unchanged | import_error | deactivated
    dag: str | None = None
    version: int | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "action": self.action, "dag": self.dag, "version": self.version,
                "problems": self.problems}


def dag_files(root: Path) -> Iterator[tuple[str, Path]]:
    """``(relative path, path)`` of every DAG file under ``root``, symlinks followed, dot-folders
    (``.git``, git-sync's ``.worktrees``) skipped."""
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(SUFFIXES) and not name.startswith("."):
                path = Path(folder) / name
                yield path.relative_to(root).as_posix(), path


def _fingerprint(path: Path) -> tuple[str, int, int] | None:
    try:
        real = path.resolve()
        stat = real.stat()
    except OSError:
        return None
    return str(real), stat.st_size, stat.st_mtime_ns


class DagFolder:
    """One synced folder. :meth:`sync` is one pass; :meth:`run_in_thread` repeats it."""

    def __init__(self, store: RunStore, root: Path | str):
        self.store = store
        self.root = Path(root)
        self.label = str(root).rstrip("/")
        self.agenda = Agenda(store)
        self._seen: dict[str, tuple[str, int, int]] = {}  # relative path -> fingerprint read last

    def key(self, relative: str) -> str:
        return f"{self.label}|{relative}"

    def sync(self, *, now: datetime | None = None) -> list[FileResult]:
        """One pass: submit what changed, record import errors, deactivate DAGs whose file is gone."""
        if not self.root.is_dir():
            raise ConveyorError(f"{self.root}: not a folder (ctl scheduler --dags / ctl dags sync want one)")
        results: list[FileResult] = []
        present: set[str] = set()
        calendars: dict[str, Any] | None = None
        for relative, path in dag_files(self.root):
            present.add(relative)
            fingerprint = _fingerprint(path)
            if fingerprint is None or self._seen.get(relative) == fingerprint:
                continue
            if calendars is None:
                calendars = store_calendars(self.store)
            results.append(self._read(relative, path, calendars, now))
            self._seen[relative] = fingerprint
        results += self._forget_missing(present)
        return results

    def _read(self, relative: str, path: Path, calendars: dict[str, Any], now: datetime | None) -> FileResult:
        shown = f"{self.label}/{relative}"
        key = self.key(relative)
        try:
            raw = path.read_bytes()
            done = submit_source(self.store, raw, shown, calendars=calendars, now=now)
        except SpecError as exc:
            problems = [str(p) for p in exc.problems]
            return self._import_error(key, shown, problems)
        except OSError as exc:
            return self._import_error(key, shown, [f"{shown}: cannot read it: {exc.strerror or exc}"])
        except ConveyorError as exc:  # e.g. a name clash refused by the store: still the file's problem
            return self._import_error(key, shown, [f"{shown}: {exc}"])
        previous = self.store.synced_files().get(key)
        self.store.set_synced_file(key, done.spec.name)
        self.store.set_import_error(key, None)
        if previous and previous != done.spec.name:
            self._deactivate_if_orphaned(previous)
        if done.created:
            log.info("%s: %s version %d", shown, done.spec.name, done.version)
        return FileResult(shown, "new_version" if done.created else "unchanged", done.spec.name, done.version)

    def _import_error(self, key: str, shown: str, problems: list[str]) -> FileResult:
        dag = self.store.synced_files().get(key)
        self.store.set_import_error(key, {"file": shown, "problems": problems, "at": now_iso(), "dag": dag})
        log.error("import error in %s (%s keeps its last valid version):\n  %s", shown, dag or "no DAG yet",
                  "\n  ".join(problems))
        return FileResult(shown, "import_error", dag, None, problems)

    def _forget_missing(self, present: set[str]) -> list[FileResult]:
        results = []
        prefix = f"{self.label}|"
        for key, dag in self.store.synced_files().items():
            relative = key[len(prefix):] if key.startswith(prefix) else None
            if relative is None or relative in present:
                continue
            self.store.set_synced_file(key, None)
            self.store.set_import_error(key, None)
            self._seen.pop(relative, None)
            if self._deactivate_if_orphaned(dag):
                log.warning("%s/%s was removed: DAG %s deactivated (history kept)", self.label, relative, dag)
                results.append(FileResult(f"{self.label}/{relative}", "deactivated", dag))
        for key in self.store.import_errors():  # errors of files that are gone
            relative = key[len(prefix):] if key.startswith(prefix) else None
            if relative is not None and relative not in present:
                self.store.set_import_error(key, None)
        return results

    def _deactivate_if_orphaned(self, dag: str) -> bool:
        """Deactivate ``dag`` unless another synced file still defines it."""
        if dag in self.store.synced_files().values() or not self.store.dag_state(dag):
            return False
        if self.agenda.is_deactivated(dag):
            return False
        self.agenda.set_active(dag, False)
        return True

    def run_in_thread(self, stop: threading.Event, interval: float = DEFAULT_INTERVAL) -> threading.Thread:
        """Sync every ``interval`` seconds until ``stop``; any error is logged and the next pass tries again."""
        def loop() -> None:
            while not stop.wait(interval):
                try:
                    self.sync(now=datetime.now(UTC))
                except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                    log.warning("DAG sync of %s: %s; trying again", self.label, exc)
                except Exception:  # never let the sync thread die: the folder may be fixed next pass
                    log.exception("DAG sync of %s failed; trying again", self.label)

        thread = threading.Thread(target=loop, name="conveyor-dagsync", daemon=True)
        thread.start()
        return thread
