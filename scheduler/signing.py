"""Signed step plans: a Redis writer without the key cannot choose what a worker runs.

The process that creates (or reruns) a run signs each step's rendered plan with HMAC-SHA256 over a
canonical form bound to its run and step (the plan itself is stored once per distinct content and
shared by runs: scheduler/records.py; the signature is per step of a run, truncated to 128 bits, as
RFC 2104 and NIST SP 800-107 allow); a worker that holds the key verifies the signature before
it creates anything and refuses a plan that does not verify (reason ``plan_signature``).

What it protects against: anyone who can write Redis but does not hold ``CONVEYOR_SIGNING_KEY``
rewriting a plan's image, argv, env, mounts or limits, moving a plan to another step or run, or
writing a run of their own. What it does not: someone who holds the key (or can read the
environment of the scheduler, the server or a worker), and a replay of a plan to the same step of
the same run (the attempt fencing in Redis already decides which attempt runs).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any


def canonical(plan: Mapping[str, Any]) -> str:
    """The one byte form of a plan that is stored and signed (sorted keys, no spaces)."""
    return json.dumps(plan, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sign(key: bytes, run_id: str, step: str, plan_json: str) -> str:
    message = b"\0".join([b"conveyor-plan-v2", run_id.encode(), step.encode(), plan_json.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def verify(key: bytes, run_id: str, step: str, plan_json: str, signature: str | None) -> bool:
    """Constant-time check of ``signature`` against the plan as stored (a 64-digit signature: the first
    form, kept in the step records written before plans were stored by content)."""
    if signature and len(signature) == 64:
        message = b"\0".join([b"conveyor-plan-v1", run_id.encode(), step.encode(), plan_json.encode()])
        return hmac.compare_digest(hmac.new(key, message, hashlib.sha256).hexdigest(), signature)
    return bool(signature) and hmac.compare_digest(sign(key, run_id, step, plan_json), signature or "")
