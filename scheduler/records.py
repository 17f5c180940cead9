"""The layout of run and step records in Redis: lean, so that a month of history fits in memory.

A step hash holds its state, counters and what the Lua transitions read; a field at its default is
left out (readers see the default: :func:`step_view`, and ``or`` defaults in ``lib.lua``). The
rendered plan is not in the step hash: it is stored once per distinct content (``{P}:plan:DIGEST``,
counted in ``{P}:plan_refs`` and deleted with the last step that names it), so the runs of a DAG
version share one plan per step unless their rendering differs (a ``{{ ds }}`` in the command). The
step hash keeps the plan's digest and its signature bound to run and step (``scheduler/signing.py``).

Small values matter twice: Redis keeps a hash whose values are all short (``hash-max-listpack-value``,
64 bytes by default) as one compact listpack instead of a table of separately allocated entries.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from scheduler import signing
from scheduler.model import StepPlan

# The Redis setting Conveyor's own Redis servers run with (embedded, Compose, chart; see "Sizing" in
# docs/operations.md): hashes whose values are at most 256 bytes stay listpacks (64 by default), so an
# RQ job hash (its compressed payload ~90 bytes) or a finished attempt (a 71-byte image id) costs about
# 40% of what it would as a table. The older name works on Redis 6 and 7 alike.
COMPACT_HASHES = ("--hash-max-ziplist-value", "256")

# Step fields left out at these values (lib.lua reads them with the same defaults).
STEP_DEFAULTS = {
    "rule": "all_success", "retries": "0", "up_done": "0", "up_success": "0", "up_failed": "0",
    "upstream": "[]", "downstream": "[]", "pool_slots": "1", "timeout": "", "cancel": "0", "max_attempts": "1",
}
# Run fields left out at these values.
RUN_DEFAULTS = {
    "failed": "0", "cancel": "0", "max_active": "0", "params": "{}", "handlers": "{}", "slas": "[]",
    "fire_key": "", "data_interval_start": "", "data_interval_end": "",
}


def plan_text(plan: StepPlan) -> str:
    """The stored (and signed) form of a plan: canonical JSON without its run id, which the key names,
    so that identical renderings in different runs are one stored plan."""
    data = plan.to_json()
    del data["run_id"]
    return signing.canonical(data)


def plan_digest(text: str) -> str:
    """The content address of a stored plan (128 bits of SHA-256: accidental collisions only matter;
    the signature, not the digest, stops a Redis writer)."""
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def load_plan(run_id: str, text: str) -> StepPlan:
    return StepPlan.from_json({**json.loads(text), "run_id": run_id})


def provenance_fields(provenance: Mapping[str, Any]) -> dict[str, str]:
    """A run's provenance (DAG sha256, git commit, path, due time) as run fields of their own, ``prov_*``:
    one JSON value would outgrow a listpack value; each field alone does not. A flag is kept when true."""
    return {f"prov_{k}": "true" if v is True else str(v) for k, v in provenance.items()
            if v is not None and v != "" and v is not False}


def provenance_of(record: Mapping[str, str]) -> dict[str, Any]:
    """The provenance :func:`provenance_fields` stored (or, in older records, the ``provenance`` JSON)."""
    found: dict[str, Any] = json.loads(record.get("provenance") or "{}")
    for key, value in record.items():
        if key.startswith("prov_"):
            found[key[5:]] = True if value == "true" else value
    if "prov_git_commit" in record:
        found.setdefault("git_dirty", False)  # a flag is stored only when true
    return found


def lean(fields: Mapping[str, str], defaults: Mapping[str, str]) -> dict[str, str]:
    """``fields`` without those at their default."""
    return {k: v for k, v in fields.items() if defaults.get(k) != v}


def step_view(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    """A step hash as readers see it: every field, defaults filled in, the step's name, its pool."""
    view = {**STEP_DEFAULTS, "name": name, **raw}
    view.setdefault("pool", f"queue:{view.get('queue') or 'default'}")
    return view


def run_view(run_id: str, raw: dict[str, str]) -> dict[str, str]:
    """A run hash as readers see it (empty when the run does not exist), ``provenance`` as one JSON."""
    if not raw:
        return raw
    return {**RUN_DEFAULTS, "run_id": run_id, **raw, "provenance": json.dumps(provenance_of(raw))}
