"""Plain data for runs: what ``ctl runs/status -o json`` print and the server's API returns.

One place, so the CLI and the HTTP API can never disagree on a field. Reads through the store only.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from scheduler.errors import NotFoundError
from scheduler.store import RunStore

ATTEMPT_FIELDS = ("number", "state", "exit_code", "image", "image_id", "image_digest", "container_id", "host",
                  "pid", "worker", "engine_version", "started_at", "ended_at", "reason", "error",
                  # a dead or stopping worker's container followed to its end by another (runner/adoption.py)
                  "adopted_by", "adopted_at", "handed_over_by", "handed_over_at")


def _none(value: str | None) -> str | None:
    return value if value not in (None, "") else None


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def shown_state(record: dict[str, str]) -> str:
    """A staged run (see scheduler/staging.py) is ``scheduled`` until its due time, then ``queued``."""
    due = record.get("staged_due")
    if record["state"] == "queued" and due and float(due) > time.time():
        return "scheduled"
    return record["state"]


def run_object(record: dict[str, str]) -> dict[str, Any]:
    """A run without its steps (``ctl runs --output json``)."""
    provenance = json.loads(record.get("provenance") or "{}")
    return {
        "run_id": record["run_id"],
        "dag": record["dag"],
        "dag_version": int(record["dag_version"]),
        "dag_sha256": provenance.get("dag_sha256"),
        "git_commit": provenance.get("git_commit"),
        "git_dirty": provenance.get("git_dirty"),
        "state": shown_state(record),
        "trigger": record.get("trigger"),
        "priority": record.get("priority"),
        "params": json.loads(record.get("params") or "{}"),
        "logical_date": _none(record.get("logical_date")),
        "data_interval_start": _none(record.get("data_interval_start")),
        "data_interval_end": _none(record.get("data_interval_end")),
        "created_at": _none(record.get("created_at")),
        "started_at": _none(record.get("started_at")),
        "ended_at": _none(record.get("ended_at")),
    }


def attempt_object(raw: dict[str, str]) -> dict[str, Any]:
    data: dict[str, Any] = {key: _none(raw.get(key)) for key in ATTEMPT_FIELDS}
    data["number"] = _int(raw.get("number"))
    data["exit_code"] = _int(raw.get("exit_code"))
    data["pid"] = _int(raw.get("pid"))
    data["outputs"] = json.loads(raw["outputs"]) if raw.get("outputs") else None
    if raw.get("argv"):  # rendered when the attempt started (it read upstream outputs)
        data["argv"] = json.loads(raw["argv"])
    if raw.get("pokes"):  # a sensor: how many pokes said "not yet", and when the next one is due
        data["pokes"] = int(raw["pokes"])
        data["next_poke"] = (datetime.fromtimestamp(float(raw["next_poke"]), UTC).isoformat(timespec="milliseconds")
                             if raw.get("next_poke") and raw.get("state") == "waiting" else None)
    return data


def status_object(store: RunStore, run_id: str) -> dict[str, Any]:
    """``ctl status RUN_ID --output json``: the run and every step with its attempts."""
    record = store.run_record(run_id)
    data = run_object(record)
    data["steps"] = [
        {
            "name": step["name"],
            "state": step["state"],
            "attempts": [attempt_object(a) for a in step["attempts"]],
            **_mapped_object(step),
            **_waiting_object(step),
            **_checkpoint_object(step),
        }
        for step in store.step_records(run_id, record)
    ]
    return data


def _mapped_object(step: dict[str, Any]) -> dict[str, Any]:
    """A mapped step's fan-out (how many instances, its outputs gathered, why it did not expand) or an
    instance's mapped step and index; nothing for a plain step."""
    if step.get("parent"):
        return {"mapped_step": step["parent"], "index": _int(step.get("index"))}
    if "for_each" not in step:
        return {}
    return {"instances": _int(step.get("instances")), "error": _none(step.get("error")),
            "outputs": json.loads(step["outputs"]) if step.get("outputs") else None}


def _checkpoint_object(step: dict[str, Any]) -> dict[str, Any]:
    """The step's last saved checkpoint (runner/checkpoints.py): its size and when it was saved."""
    if "checkpoint_bytes" not in step:
        return {}
    at = datetime.fromtimestamp(step["checkpoint_at"], UTC).isoformat(timespec="milliseconds")
    return {"checkpoint_bytes": step["checkpoint_bytes"], "checkpoint_at": at}


def _waiting_object(step: dict[str, Any]) -> dict[str, Any]:
    """A step waiting for other DAGs (wait_for): what it still waits for and when it checks again."""
    if not step.get("waiting_for") or step.get("state") != "waiting":
        return {}
    return {"waiting_for": json.loads(step["waiting_for"]),
            "next_check": datetime.fromtimestamp(float(step["next_check"]), UTC).isoformat(timespec="milliseconds")}


def log_attempt(store: RunStore, run_id: str, step: str, attempt: int | None = None) -> int:
    """The attempt whose log ``ctl logs`` shows: the one asked for, else the step's last."""
    steps = {s["name"]: s for s in store.step_records(run_id)}
    if step not in steps:
        raise NotFoundError(f"run '{run_id}' has no step '{step}'; steps: {', '.join(steps)}")
    last = int(steps[step].get("attempt") or 0)
    number = attempt or last
    if number == 0 or number > last:
        raise NotFoundError(f"step '{step}' of run '{run_id}' has no attempt {number or ''}".rstrip())
    return number


def attempt_state(store: RunStore, run_id: str, step: str, attempt: int) -> str | None:
    """How an attempt ended (``success``, ``failed``, ``lost``...), or its state while it runs."""
    steps = {s["name"]: s for s in store.step_records(run_id)}
    for record in steps.get(step, {}).get("attempts", []):
        if _int(record.get("number")) == attempt:
            return _none(record.get("state"))
    return None
