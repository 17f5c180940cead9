"""What changed between two runs ("yesterday worked, today failed"): the DAG version and content hash,
git commit, params, and per step the image, exit code, reason and duration, side by side.

Pure over two ``ctl status -o json`` documents (:func:`scheduler.runview.status_object`), so ``ctl diff``,
the API and the web page show the same differences.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

RUN_FIELDS = ("dag", "dag_version", "dag_sha256", "git_commit", "git_dirty", "state", "trigger", "priority",
              "logical_date", "data_interval_start", "data_interval_end")
# Fields of a step's last attempt compared between the runs; a difference in any is highlighted.
STEP_FIELDS = ("state", "attempts", "image", "image_id", "image_digest", "exit_code", "reason")


def seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return round((datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds(), 3)


def step_summary(step: dict[str, Any]) -> dict[str, Any]:
    """A step as the diff compares it: its state and its last attempt's identity and outcome."""
    last = step["attempts"][-1] if step["attempts"] else {}
    return {
        "state": step["state"], "attempts": len(step["attempts"]), "image": last.get("image"),
        "image_id": last.get("image_id"), "image_digest": last.get("image_digest"),
        "exit_code": last.get("exit_code"), "reason": last.get("reason"),
        "duration_seconds": seconds(last.get("started_at"), last.get("ended_at")),
    }


def diff_runs(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Every compared field of runs ``a`` and ``b``, each marked ``differs``; ``differences`` counts them."""
    run = [{"field": f, "a": a.get(f), "b": b.get(f), "differs": a.get(f) != b.get(f)} for f in RUN_FIELDS]
    run.append({"field": "duration_seconds", "a": seconds(a.get("started_at"), a.get("ended_at")),
                "b": seconds(b.get("started_at"), b.get("ended_at")), "differs": False})
    names = list(dict.fromkeys([*a["params"], *b["params"]]))
    params = [{"name": n, "a": a["params"].get(n), "b": b["params"].get(n),
               "differs": a["params"].get(n) != b["params"].get(n) or (n in a["params"]) != (n in b["params"])}
              for n in names]
    steps_a = {s["name"]: step_summary(s) for s in a["steps"]}
    steps_b = {s["name"]: step_summary(s) for s in b["steps"]}
    steps = []
    for name in dict.fromkeys([*steps_a, *steps_b]):
        left, right = steps_a.get(name), steps_b.get(name)
        if left is None or right is None:
            changed = list(STEP_FIELDS)
        else:
            changed = [f for f in STEP_FIELDS if left[f] != right[f]]
        steps.append({"name": name, "only_in": None if left and right else ("a" if left else "b"),
                      "a": left, "b": right, "differs": changed})
    count = (sum(bool(r["differs"]) for r in run) + sum(p["differs"] for p in params)
             + sum(1 for s in steps if s["differs"]))
    return {"a": a["run_id"], "b": b["run_id"], "run": run, "params": params, "steps": steps,
            "differences": count}
