"""Signed step plans and step outputs: a Redis writer without the key cannot choose what a worker runs.

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

Step outputs are data a later container gets (``{{ steps.S.outputs.N }}``, ``{{ item }}`` of a
``for_each``), so they are signed too. The worker that collects a successful attempt's outputs signs
the exact outputs JSON bound to run, step (an instance ``STEP[i]`` by its own name) and attempt number
(:func:`sign_outputs`; stored as ``outputs_sig``, ``N:MAC``, on the attempt and, by finish.lua, on the
step with its ``outputs``). A worker with the key renders nothing from Redis it has not verified
(``scheduler/output_trust.py``; refusal reason ``output_signature``, no container is created): each
upstream output against its signature; a mapped step's aggregate (JSON arrays gathered in Lua) rebuilt
from its instances' signed outputs and compared; a mapped step's ``items`` compared with the signed
source it came from (an upstream output, verified; a literal list in the signed plan; a run param, whose
value the signed plan keeps in its ``context``). A worker without the key renders them unchecked (and
signs nothing), as it runs unsigned plans.

Not covered: a replay of an older successful attempt's signed outputs of the same step and run; an
upstream's outputs withheld (a missing value, or ``null`` in an aggregate, as a failed instance has: a
Redis writer can fail any step); ``when:`` conditions, which read outputs and params unchecked (they
decide whether a signed plan runs, which such a writer can decide anyway); and what a handler step is
told about its run (``{{ failed_steps }}``, ``CONVEYOR_RUN_STATE``: states and error texts that workers
wrote, unsigned). Run params are not signed as such: they are rendered into the signed plans at
creation, and a step mapped over a param keeps its value in its plan's ``context``.
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


def sign_outputs(key: bytes, run_id: str, step: str, attempt: int, outputs_json: str) -> str:
    """The ``outputs_sig`` of an attempt's outputs (exactly ``outputs_json``, as stored): ``N:MAC``, the
    attempt number it binds first, so that a verifier reading the step's copy knows it."""
    message = b"\0".join([b"conveyor-outputs-v1", run_id.encode(), step.encode(), str(attempt).encode(),
                          outputs_json.encode()])
    return f"{attempt}:{hmac.new(key, message, hashlib.sha256).hexdigest()[:32]}"


def verify_outputs(key: bytes, run_id: str, step: str, outputs_json: str, signature: str | None) -> bool:
    """Constant-time check that ``signature`` signs ``outputs_json`` for this run and step (``STEP[i]`` for
    an instance), at the attempt it names."""
    attempt, _, mac = (signature or "").partition(":")
    if not attempt.isdigit() or not mac:
        return False
    return hmac.compare_digest(sign_outputs(key, run_id, step, int(attempt), outputs_json), signature or "")


def sign_source(key: bytes, dag: str, source: str) -> str:
    """The ``source_sig`` of a stored DAG version: its exact source text, bound to the DAG's name. The
    scheduler plans (and signs) runs only from versions that verify, so that a Redis writer cannot have
    it sign a DAG of their own making."""
    message = b"\0".join([b"conveyor-dag-v1", dag.encode(), source.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def verify_source(key: bytes, dag: str, source: str, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(sign_source(key, dag, source), signature or "")


def sign_params(key: bytes, run_id: str, params_json: str) -> str:
    """The ``params_sig`` of a run's params (exactly as stored): a rerun with ``--latest`` plans from them."""
    message = b"\0".join([b"conveyor-params-v1", run_id.encode(), params_json.encode()])
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def verify_params(key: bytes, run_id: str, params_json: str, signature: str | None) -> bool:
    return bool(signature) and hmac.compare_digest(sign_params(key, run_id, params_json), signature or "")
