"""Datasets: producers record events, DAGs with ``schedule: {on: [...]}`` get a run when every dataset they
list has a new event since their last dataset-triggered run.

Events are recorded in Redis by the transitions themselves (``finish.lua`` for a producer step's success,
``dataset_emit.lua`` for ``ctl dataset emit`` and the HTTP API). Each dataset numbers its events; each
consumer DAG keeps, per dataset, the number its last dataset run used (``Keys.dataset_seen``). The
scheduler's check is idempotent rather than locked: the run is created with an idempotency key made of
the event numbers it consumes (the DAG's fires hash holds it, as for a cron fire), and only then are they
marked consumed. Two schedulers create it once; a scheduler killed between the two steps leaves the run
created and the mark to the next pass, which finds the same key and the existing run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scheduler.datasetuse import consumed, produced
from scheduler.engine import Engine
from scheduler.errors import ConveyorError
from scheduler.model import DagSpec, Trigger
from scheduler.store import RunStore

log = logging.getLogger("conveyor.scheduler")


@dataclass(frozen=True)
class _Known:
    version: int
    spec: DagSpec | None  # None: that version cannot be loaded
    record: Mapping[str, Any]


class DatasetTriggers:
    """The scheduler's per-pass check of the DAGs with ``on:``. Loads a DAG again only when its version changed."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.store: RunStore = engine.store
        self._known: dict[str, _Known] = {}

    def specs(self) -> dict[str, DagSpec]:
        """The latest version of every DAG that is not paused, by name."""
        from scheduler.service import load_version

        names = self.store.dag_names()
        specs = {}
        for name, record in zip(names, self.store.dag_records(names), strict=True):
            if not record.get("latest") or record.get("paused") == "1":
                continue
            version = int(record["latest"])
            known = self._known.get(name)
            if known is None or known.version != version:
                try:
                    spec, full = load_version(self.store, name, version)
                    known = _Known(version, spec, full)
                except ConveyorError as exc:
                    log.warning("%s v%s: cannot check its datasets: %s", name, version, exc)
                    known = _Known(version, None, {})
                self._known[name] = known
            if known.spec is not None:
                specs[name] = known.spec
        return specs

    def check(self, now: datetime) -> list[str]:
        """Create the dataset-triggered runs that are due; returns their ids (existing ones included)."""
        created = []
        for name, spec in self.specs().items():
            wanted = consumed(spec)
            if not wanted:
                continue
            events = self.store.dataset_last_events(wanted)
            seen = self.store.datasets_seen(name)
            if not all(d in events and int(events[d]["seq"]) > seen.get(d, 0) for d in wanted):
                continue
            numbers = {d: int(events[d]["seq"]) for d in wanted}
            key = "datasets:" + ",".join(f"{d}#{numbers[d]}" for d in sorted(wanted))
            try:
                run_id = self.engine.create_run_of(
                    spec, self._known[name].record, {}, trigger=Trigger.DATASET, now=now, idempotency_key=key,
                    datasets=json.dumps([events[d] for d in wanted]))
            except ConveyorError as exc:  # e.g. a required param: reported, never fatal to the scheduler
                log.warning("%s: cannot create its dataset-triggered run: %s", name, exc)
                continue
            self.engine.consume_datasets(name, numbers)
            log.info("%s: run %s for datasets %s", name, run_id, key.removeprefix("datasets:"))
            created.append(run_id)
        return created


def dataset_list(store: RunStore) -> list[dict[str, Any]]:
    """``ctl dataset list``: every dataset produced, consumed or emitted, with its producers
    (``DAG.STEP``), consumers (DAGs) and last event."""
    from scheduler.service import load_version

    producers: dict[str, list[str]] = {}
    consumers: dict[str, list[str]] = {}
    for name in store.dag_names():
        try:
            spec, _ = load_version(store, name)
        except ConveyorError:
            continue
        for dataset, steps in produced(spec).items():
            producers.setdefault(dataset, []).extend(f"{name}.{s}" for s in steps)
        for dataset in consumed(spec):
            consumers.setdefault(dataset, []).append(name)
    last = store.dataset_last_events()
    return [{"dataset": d, "producers": producers.get(d, []), "consumers": consumers.get(d, []),
             "last_event": last.get(d)} for d in sorted({*producers, *consumers, *last})]
