"""Run state in Redis. Every state change is one Lua script (see ``scheduler/lua``), so it is atomic
and checks the state it comes from: two workers can never start the same attempt, and a late
result from an attempt that is no longer current is ignored.

The store layer is the one door to Redis: this module, and its close collaborators that keep
Redis-side structures of their own (``agenda.py``, ``staging.py``, ``leader.py``, and
``dispatch.py`` for RQ's keys). Nothing else reads ``RunStore.r``; callers that change state go
through :mod:`scheduler.engine`, which also enqueues what a transition made ready.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import cached_property
from importlib import resources
from typing import Any

import redis

from scheduler import records, signing
from scheduler.errors import ConveyorError, NotFoundError, UnavailableError
from scheduler.keys import Keys
from scheduler.model import TERMINAL_STEP_STATES, StepPlan, instance_name, mapped_instance
from scheduler.plan import RunPlan
from scheduler.replicas import ReplicaWait
from scheduler.results import (
    Adopted,
    Created,
    Finished,
    Lease,
    Ready,
    RunCancel,
    SlaMiss,
    Started,
    StepCancel,
    decode_adopted,
    decode_created,
    decode_finished,
    decode_lease,
    decode_poked,
    decode_ready,
    decode_run_cancel,
    decode_sla_misses,
    decode_started,
    decode_step_cancel,
    decode_waited,
)
from scheduler.settings import Settings

LOG_TTL = 30 * 86400


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="milliseconds")


DEFAULT_LEASE = 15.0  # seconds; workers renew every third of it, so a dead worker is found within ~15-20 s


def member(run_id: str, step: str, attempt: int) -> str:
    """An attempt in the running and queued indexes."""
    return f"{run_id}|{step}|{attempt}"


def parse_member(entry: str) -> tuple[str, str, int]:
    run_id, step, attempt = entry.rsplit("|", 2)
    return run_id, step, int(attempt)


def _steps_arg(steps: list[list[Any]], texts: Mapping[str, str]) -> str:
    """The steps argument of create.lua, create_steps.lua, stage.lua and rerun.lua: the step records
    as ``[name, {field: string}]`` and the plans they name, by digest (each sent once)."""
    return json.dumps({"steps": steps, "plans": texts})


@functools.cache
def _lua(name: str) -> str:
    return resources.files("scheduler").joinpath(f"lua/{name}").read_text()


def lua_script(client: redis.Redis, name: str) -> Any:
    """A script of ``scheduler/lua`` after the shared helpers of ``lib.lua``, registered on ``client``:
    the one loader of every Lua script Conveyor runs."""
    return client.register_script(_lua("lib.lua") + _lua(name))


CREATE_CHUNK = 500  # steps per script when a run is created in chunks (~15 ms of Redis time each)
AHEAD_TTL = 3600  # seconds: steps written ahead of their run expire unless the run is created


class RunStore:
    """DAG versions, runs, steps, attempts, events and logs under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str = "conveyor", log_cap: int = 1024 * 1024,
                 signing_key: bytes | None = None):
        # Replies are str (``decode_responses=True``), which redis-py's types cannot express: Any here.
        self.r: Any = client
        self.signing_key = signing_key  # plans written here are signed with it (scheduler/signing.py)
        self.keys = Keys(prefix)
        self.prefix = prefix
        self.log_cap = log_cap
        self._create = self.script("create.lua")
        self._create_steps = self.script("create_steps.lua")
        self._discard_steps = self.script("discard_steps.lua")
        self._start = self.script("start.lua")
        self._finish = self.script("finish.lua")
        self._poke = self.script("poke.lua")
        self._wait = self.script("wait.lua")
        self._dataset_emit = self.script("dataset_emit.lua")
        self._dataset_seen = self.script("dataset_seen.lua")
        self._cancel = self.script("cancel.lua")
        self._lose = self.script("lose.lua")
        self._renew = self.script("renew.lua")
        self._skip = self.script("skip.lua")
        self._rerun = self.script("rerun.lua")
        self._cancel_step = self.script("cancel_step.lua")
        self._pool_set = self.script("pool_set.lua")
        self._sla = self.script("sla.lua")
        self._append_log = self.script("append_log.lua")
        self._delete_run = self.script("delete_run.lua")
        self._adopt = self.script("adopt.lua")
        self._hand_over = self.script("hand_over.lua")
        self._checkpoint = self.script("checkpoint.lua")
        self.replicated = ReplicaWait(client)  # start, finish, adopt: confirmed on a replica (replicas.py)

    def script(self, name: str) -> Any:
        """A Lua script of ``scheduler/lua`` (see :func:`lua_script`) on this store's connection."""
        return lua_script(self.r, name)

    @classmethod
    def connect(cls, settings: Settings) -> RunStore:
        store = cls(settings.connect(), settings.prefix, settings.log_cap, settings.signing_key)
        store.ping(settings)
        return store

    def warn_if_exposed(self, logger: Any) -> str | None:
        """Warn when this Redis has no password and is not on loopback or a unix socket (security.py)."""
        from scheduler import security

        return security.warn_if_exposed(self.r, logger)

    def readiness_check(self, timeout: float = 2.0) -> Any:
        """A PING probe on a client of its own with a short timeout (see metrics.redis_check)."""
        from scheduler.metrics import redis_check

        return redis_check(self.r, timeout)

    @cached_property
    def store_id(self) -> str:
        """A random id of this Redis + prefix, so that two installations sharing a Docker engine (two
        ``ctl run``s, say) never take each other's containers for orphans."""
        import secrets

        self.r.set(self.keys.store_id(), secrets.token_hex(8), nx=True)
        return self.r.get(self.keys.store_id())

    def ping(self, settings: Settings | None = None) -> None:
        try:
            self.r.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            where = settings.safe_url if settings else "Redis"
            raise UnavailableError(f"cannot reach Redis at {where}: {str(exc).rstrip('.')}. Is redis-server running? "
                                   "Set REDIS_URL, or leave it unset for `ctl run` to start its own.") from None
        except redis.AuthenticationError as exc:
            raise UnavailableError(f"Redis refused the credentials: {exc}") from None

    # --- DAG versions ---------------------------------------------------------------------------

    def submit_dag(self, name: str, source: bytes, document: Mapping[str, Any], *, path: str = "",
                   git: Mapping[str, Any] | None = None, now: datetime | None = None) -> tuple[int, bool]:
        """Store a DAG version; identical content is a no-op. Returns ``(version, created)``."""
        sha = hashlib.sha256(source).hexdigest()
        k = self.keys
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(k.dag(name), k.dag_shas(name))
                    latest = pipe.hget(k.dag(name), "latest")
                    latest_sha = pipe.hget(k.dag(name), "sha256")
                    text = source.decode("utf-8")
                    signature = signing.sign_source(self.signing_key, name, text) if self.signing_key else ""
                    version = int(latest or 0) + 1
                    if latest_sha == sha:
                        stored = json.loads(pipe.get(k.dag_version(name, int(latest))) or "{}")
                        if stored.get("source_sig", "") == signature and stored.get("source") == text:
                            return int(latest), False
                        # The same content, stored unsigned (before a key was set) or changed in Redis:
                        # this submitter's own text, signed, becomes that version again.
                        version = int(latest)
                    record = {
                        "name": name, "version": version, "sha256": sha, "path": path,
                        "source": text, "document": document, "source_sig": signature,
                        "git_commit": (git or {}).get("commit"), "git_dirty": (git or {}).get("dirty"),
                        "submitted_at": now_iso(now),
                    }
                    pipe.multi()
                    pipe.set(k.dag_version(name, version), json.dumps(record))
                    pipe.hset(k.dag(name), mapping={"latest": version, "sha256": sha, "updated_at": now_iso(now)})
                    pipe.hsetnx(k.dag(name), "paused", 0)
                    pipe.hset(k.dag_shas(name), sha, version)
                    pipe.sadd(k.dags(), name)
                    pipe.execute()
                    return version, True
                except redis.WatchError:
                    continue

    def verified_dag_version(self, name: str, version: int | None = None) -> dict[str, Any]:
        """:meth:`dag_version`, its source's signature checked when this store holds the key: what is
        planned, and signed, from it must be what a key holder submitted."""
        record = self.dag_version(name, version)
        if self.signing_key and not signing.verify_source(self.signing_key, name, record.get("source", ""),
                                                          record.get("source_sig")):
            raise ConveyorError(f"DAG '{name}' version {record.get('version')} is not signed with this deployment's "
                                "key (it was submitted without CONVEYOR_SIGNING_KEY, with another key, or changed in "
                                "Redis): submit it again with the key (ctl submit, or the scheduler's --dags folder)")
        return record

    def dag_version(self, name: str, version: int | None = None) -> dict[str, Any]:
        if version is None:
            latest = self.r.hget(self.keys.dag(name), "latest")
            if latest is None:
                raise NotFoundError(self.unknown_dag(name))
            version = int(latest)
        raw = self.r.get(self.keys.dag_version(name, version))
        if raw is None:
            raise NotFoundError(f"DAG '{name}' has no version {version}")
        return json.loads(raw)

    def set_dag_error(self, name: str, message: str | None, *, now: datetime | None = None) -> None:
        """Record (or, with None, clear) why the scheduler cannot evaluate or plan this DAG now."""
        if message is None:
            self.r.hdel(self.keys.dag(name), "error", "error_at")
        elif self.r.exists(self.keys.dag(name)):
            self.r.hset(self.keys.dag(name), mapping={"error": message, "error_at": now_iso(now)})

    def dag_error(self, name: str) -> tuple[str, str] | None:
        """The scheduler's last error for this DAG and when it happened, if it has one now."""
        error, at = self.r.hmget(self.keys.dag(name), "error", "error_at")
        return (error, at or "") if error else None

    # --- DAG folder sync (scheduler/dagsync.py) ---------------------------------------------------

    def synced_files(self) -> dict[str, str]:
        """Every synced DAG file ("ROOT|RELATIVE PATH") -> the DAG it defined last time it was valid."""
        return self.r.hgetall(self.keys.sync_files())

    def set_synced_file(self, key: str, dag: str | None) -> None:
        if dag is None:
            self.r.hdel(self.keys.sync_files(), key)
        else:
            self.r.hset(self.keys.sync_files(), key, dag)

    def import_errors(self) -> dict[str, dict[str, Any]]:
        """Synced files that do not validate: "ROOT|RELATIVE PATH" -> {file, problems, at, dag}."""
        return {k: json.loads(v) for k, v in self.r.hgetall(self.keys.import_errors()).items()}

    def set_import_error(self, key: str, error: Mapping[str, Any] | None) -> None:
        if error is None:
            self.r.hdel(self.keys.import_errors(), key)
        else:
            self.r.hset(self.keys.import_errors(), key, json.dumps(dict(error)))

    def import_error_count(self) -> int:
        return int(self.r.hlen(self.keys.import_errors()))

    def dag_state(self, name: str) -> dict[str, str]:
        """The DAG hash: latest version, paused, deactivated, cursor, the scheduler's error."""
        return self.r.hgetall(self.keys.dag(name))

    def delete_dag(self, name: str, *, purge: bool = False, limit: int = 100_000) -> int:
        """Remove a DAG's definition (every version) and schedule; with ``purge`` also every run of it
        that has ended (active runs are left to finish). Returns how many runs were deleted."""
        k = self.keys
        deleted = 0
        if purge:
            for run_id in self.r.zrange(k.dag_runs(name), 0, limit - 1):
                deleted += self.delete_run(run_id)
        versions = int(self.r.hget(k.dag(name), "latest") or 0)
        doomed = [k.dag(name), k.dag_shas(name), k.dag_fires(name), k.dag_staged(name), k.dag_intervals(name),
                  *(k.dag_version(name, v) for v in range(1, versions + 1))]
        if purge:
            doomed += [k.dag_runs(name), k.dag_active(name), k.dag_waiting(name)]
        with self.r.pipeline() as pipe:
            pipe.unlink(*doomed)
            pipe.srem(k.dags(), name)
            pipe.zrem(k.agenda(), name)
            pipe.execute()
        return deleted

    def dag_names(self) -> list[str]:
        return sorted(self.r.smembers(self.keys.dags()))

    def unknown_dag(self, name: str) -> str:
        import difflib

        close = difflib.get_close_matches(name, self.dag_names(), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else "; submit it first with `ctl submit FILE`"
        return f"no DAG named '{name}'{hint}"

    # --- runs -----------------------------------------------------------------------------------

    def create_run(self, plan: RunPlan, *, idempotency_key: str | None = None,
                   now: datetime | None = None) -> Created:
        """Write the run and its steps and start it (or make it wait for max_active_runs), atomically.

        With ``idempotency_key`` (a scheduled run's logical date) a second create for the same DAG and
        key creates nothing and returns the first run's id. Returns ``(run_id, ready entries)``.
        """
        head, steps, texts = self._create_parts(plan, idempotency_key, now)
        if len(steps) <= CREATE_CHUNK:
            return decode_created(plan.run_id, self._create(args=[*head, _steps_arg(steps, texts)]))
        # Steps ahead in chunks (other clients' commands run between them), then the run in one script.
        with self.r.pipeline(transaction=False) as pipe:
            for i in range(0, len(steps), CREATE_CHUNK):
                chunk = steps[i:i + CREATE_CHUNK]
                own = {step[1]["plan"]: texts[step[1]["plan"]] for step in chunk}  # each chunk sends its own plans
                self._create_steps(args=[self.prefix, plan.run_id, AHEAD_TTL, _steps_arg(chunk, own)], client=pipe)
            pipe.execute()
        names = [name for name, _ in steps]
        reply = self._create(args=[*head, _steps_arg([], {}), json.dumps(names)])
        if reply[0] != "created":  # an existing run (idempotency key), or steps gone: ours are garbage
            with self.r.pipeline(transaction=False) as pipe:
                for i in range(0, len(names), CREATE_CHUNK):
                    self._discard_steps(args=[self.prefix, plan.run_id, json.dumps(names[i:i + CREATE_CHUNK])],
                                        client=pipe)
                pipe.execute()
        if reply[0] == "incomplete":
            raise UnavailableError(f"run {plan.run_id} was not created: its step {reply[1]!r}, written ahead, "
                                   f"expired before the run was (after {AHEAD_TTL} s); try again")
        return decode_created(plan.run_id, reply)

    def create_runs(self, plans: list[tuple[RunPlan, str | None]], *,
                    now: datetime | None = None) -> list[Created]:
        """:meth:`create_run` for many runs in one round trip (each still atomic on its own); a run
        of more than ``CREATE_CHUNK`` steps is created on its own, in chunks."""
        small = [(i, plan, key) for i, (plan, key) in enumerate(plans) if len(plan.steps) <= CREATE_CHUNK]
        created: dict[int, Created] = {}
        with self.r.pipeline(transaction=False) as pipe:
            for _, plan, key in small:
                self._create(args=self.create_args(plan, key, now), client=pipe)
            results = pipe.execute()
        for (i, plan, _), result in zip(small, results, strict=True):
            created[i] = decode_created(plan.run_id, result)
        for i, (plan, key) in enumerate(plans):
            if i not in created:
                created[i] = self.create_run(plan, idempotency_key=key, now=now)
        return [created[i] for i in range(len(plans))]

    def create_args(self, plan: RunPlan, idempotency_key: str | None, now: datetime | None) -> list[Any]:
        """create.lua's ARGV for the whole run in one script (stage.lua takes the same)."""
        head, steps, texts = self._create_parts(plan, idempotency_key, now)
        return [*head, _steps_arg(steps, texts)]

    def _create_parts(self, plan: RunPlan, idempotency_key: str | None,
                      now: datetime | None) -> tuple[list[Any], list[list[Any]], dict[str, str]]:
        """create.lua's ARGV but the steps; the steps as ``[name, {field: string}]`` (lean: see
        scheduler/records.py) and their plans by digest."""
        assumed = plan.assumed  # steps not run (ctl run --only): created in their final state
        roots = [s for s in plan.order if s not in assumed and all(u in assumed for u in plan.upstream[s])]
        iso = lambda t: t.isoformat() if t else ""  # noqa: E731
        run = {
            "dag": plan.dag, "dag_version": plan.dag_version, "state": "queued",
            "params": json.dumps(plan.params), "trigger": plan.trigger.value, "priority": plan.priority.value,
            "created_at": now_iso(plan.created_at), "logical_date": iso(plan.logical_date),
            "data_interval_start": iso(plan.data_interval_start), "data_interval_end": iso(plan.data_interval_end),
            "steps": json.dumps(list(plan.order)),
            **({"roots": json.dumps(roots)} if roots != list(plan.order) else {}),  # left out: all of them
            "unfinished": len(plan.order) - len(assumed),
            "failed": 0, "cancel": 0, "max_active": plan.max_active_runs or 0,
            **records.provenance_fields(plan.provenance), "handlers": json.dumps(dict(plan.handlers)),
            "slas": json.dumps([[f"{plan.run_id}|{step}", due] for step, due in plan.slas]),
        }
        if self.signing_key and plan.params:  # a rerun with --latest plans from them again
            run["params_sig"] = signing.sign_params(self.signing_key, plan.run_id, str(run["params"]))
        fire_date = plan.logical_date.astimezone(UTC).isoformat()  # how other DAGs' wait_for find it
        if fire_date != run["logical_date"]:
            run["fire_date"] = fire_date
        steps: list[list[Any]] = []
        texts: dict[str, str] = {}
        for name in [*plan.order, *plan.handlers]:
            step = plan.steps[name]
            counted = str(sum(1 for u in plan.upstream.get(name, ()) if assumed.get(u) == "success"))
            digest, sig = self._stored_plan(plan.run_id, name, step, texts)
            steps.append([name, records.lean({
                "state": assumed.get(name, "pending"), "attempt": "0", "rule": step.trigger_rule,
                "retries": str(step.retries), "up_done": counted, "up_success": counted,
                "upstream": json.dumps(list(plan.upstream.get(name, ()))),
                "downstream": json.dumps(list(plan.downstream.get(name, ()))),
                "max_attempts": str(step.retries + 1), "queue": step.queue,
                "timeout": "" if step.timeout is None else str(step.timeout),
                "plan": digest, "plan_sig": sig,
                **({"when": step.when} if step.when else {}),
                **self._mapped_fields(step),
                **({"wait_for": json.dumps([dict(w) for w in step.wait_for])} if step.wait_for else {}),
                **({"produces": json.dumps(list(step.produces))} if step.produces else {}),
                # A step's own pool, else (left out) its queue's ("queue:low"): `ctl pool set queue:low 4` caps
                # how many steps of a queue run at once. A pool that is not defined does not limit.
                **({"pool": step.pool} if step.pool else {}), "pool_slots": str(step.pool_slots),
            }, records.STEP_DEFAULTS)])
        run_fields = records.lean({k: str(v) for k, v in run.items()}, records.RUN_DEFAULTS)
        return [
            self.prefix, plan.run_id, now_iso(now or plan.created_at), plan.dag, plan.created_at.timestamp(),
            idempotency_key or "", iso(plan.data_interval_start), json.dumps(run_fields),
        ], steps, texts

    @staticmethod
    def _mapped_fields(plan: StepPlan) -> dict[str, str]:
        """The step hash fields of a mapped step (for_each), which lib.lua's ``expand`` reads."""
        if plan.for_each is None:
            return {}
        return {"for_each": json.dumps(dict(plan.for_each)), "max_parallel": str(plan.max_parallel or 0),
                "max_items": str(plan.max_items), "output_names": json.dumps(list(plan.outputs))}

    def _stored_plan(self, run_id: str, step: str, plan: StepPlan, texts: dict[str, str]) -> tuple[str, str]:
        """The step hash's ``plan`` (the stored plan's digest, its text added to ``texts``) and
        ``plan_sig`` (empty without a key)."""
        text = records.plan_text(plan)
        digest = records.plan_digest(text)
        texts[digest] = text
        return digest, signing.sign(self.signing_key, run_id, step, text) if self.signing_key else ""

    def start_attempt(self, run_id: str, step: str, attempt: int, *, host: str, pid: int, worker: str,
                      lease: float = DEFAULT_LEASE, now: datetime | None = None, engine_id: str = "") -> Started:
        """Claim an attempt and take its lease (fenced: only the attempt the step waits for, once).
        ``engine_id`` names the container engine that will run it (see :meth:`adopt`)."""
        return decode_started(self.replicated.run(self._start, [self.prefix, run_id, step, attempt, now_iso(now),
                                                                host, pid, worker, lease, engine_id], "start"), run_id)

    def finish_attempt(self, run_id: str, step: str, attempt: int, outcome: str, record: Mapping[str, Any],
                       *, retry_delay: float = 0.0, now: datetime | None = None, holder: str = "") -> Finished:
        """End an attempt (fenced by its number and, given ``holder``, by who holds it) and return what
        became ready because of it."""
        fields: list[Any] = []
        for key, value in record.items():
            fields += [key, "" if value is None else value]
        result = self.replicated.run(self._finish, [self.prefix, run_id, step, attempt, outcome, now_iso(now),
                                                    retry_delay, holder, *fields], "finish")
        return decode_finished(result)

    def poke(self, run_id: str, step: str, attempt: int, *, interval: float, timeout: float | None, since: float,
             record: Mapping[str, Any], retry_delay: float = 0.0, now: datetime | None = None,
             holder: str = "") -> Finished:
        """A sensor's "not yet": the attempt waits ``interval`` seconds holding no worker (fenced, by the
        holder too, like :meth:`finish_attempt`), or fails with ``sensor_timeout`` once ``timeout`` seconds
        have passed since ``since`` (its first poke)."""
        fields: list[Any] = []
        for key, value in record.items():
            fields += [key, "" if value is None else value]
        return decode_poked(self._poke(args=[self.prefix, run_id, step, attempt, now_iso(now), interval,
                                             timeout or 0, since, retry_delay, holder, *fields]))

    def wait_check(self, run_id: str, step: str, attempt: int, *, now: datetime | None = None) -> Finished | None:
        """Check a step's ``wait_for`` before its attempt starts: None when everything it waits for holds;
        else the attempt waits in Redis (its re-delivery in ``ready``), or failed with wait_timeout."""
        return decode_waited(self._wait(args=[self.prefix, run_id, step, attempt, now_iso(now)]))

    # --- datasets (scheduler/datasets.py) ------------------------------------------------------------

    def emit_dataset(self, name: str, payload: Any = None, *, source: str = "",
                     now: datetime | None = None) -> dict[str, Any]:
        text = self._dataset_emit(args=[self.prefix, name, now_iso(now),
                                        "" if payload is None else json.dumps(payload), source])
        return json.loads(text)

    def mark_datasets_seen(self, dag: str, seen: Mapping[str, int]) -> int:
        return int(self._dataset_seen(args=[self.prefix, dag, json.dumps(dict(seen))]))

    def dataset_last_events(self, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
        """Each dataset's last event (all datasets with ``names`` None; a dataset never emitted is absent)."""
        if names is None:
            raw = self.r.hgetall(self.keys.datasets())
        else:
            raw = dict(zip(names, self.r.hmget(self.keys.datasets(), names), strict=True)) if names else {}
        return {name: json.loads(text) for name, text in raw.items() if text}

    def datasets_seen(self, dag: str) -> dict[str, int]:
        return {name: int(seq) for name, seq in self.r.hgetall(self.keys.dataset_seen(dag)).items()}

    def condition_context(self, run_id: str) -> tuple[dict[str, Any], str | None]:
        """Names a ``when:`` condition can read: ``params.x`` and every step's ``.state``/``.exit_code``."""
        record = self.run_record(run_id)
        context: dict[str, Any] = {f"params.{k}": v for k, v in json.loads(record["params"]).items()}
        for step in self.step_records(run_id):
            last = step["attempts"][-1] if step["attempts"] else {}
            context[f"{step['name']}.state"] = step["state"]
            context[f"{step['name']}.exit_code"] = int(last["exit_code"]) if last.get("exit_code") else None
            for name, value in json.loads(step.get("outputs") or "{}").items():
                context[f"steps.{step['name']}.outputs.{name}"] = value
        return context, record["dag"]

    def mapped_items(self, run_id: str, step: str) -> str | None:
        """The JSON list a mapped step expanded over (its instances' items), or None."""
        return self.r.hget(self.keys.step(run_id, step), "items")

    def handler_facts(self, run_id: str) -> tuple[str, list[dict[str, Any]]]:
        """What a handler step is told: the state its run ended in and each failed step (mapped instances
        included) with its last attempt's number, exit code, reason and error, in run order."""
        final = self.r.hget(self.keys.run(run_id), "final") or ""
        failed = []
        for step in self.step_records(run_id):
            if step.get("state") != "failed" or int(step.get("instances") or 0):
                continue  # a mapped step failed through its instances, listed one by one
            last = step["attempts"][-1] if step["attempts"] else {}
            code = last.get("exit_code")
            failed.append({"step": step["name"], "attempt": int(step.get("attempt") or 0),
                           "exit_code": int(code) if code not in (None, "", "None") else None,
                           "reason": last.get("reason") or None, "error": last.get("error") or step.get("error")
                           or None})
        return final, failed

    def step_outputs(self, run_id: str, steps: list[str]) -> dict[str, dict[str, str]]:
        """The outputs of each step's latest successful attempt (``{}`` for a step without any)."""
        with self.r.pipeline(transaction=False) as pipe:
            for step in steps:
                pipe.hget(self.keys.step(run_id, step), "outputs")
            return {step: json.loads(raw or "{}") for step, raw in zip(steps, pipe.execute(), strict=True)}

    def signed_outputs(self, run_id: str, steps: list[str]) -> list[tuple[str | None, str | None]]:
        """Each step's recorded outputs exactly as stored and their signature (``outputs``, ``outputs_sig``),
        for a worker that verifies them (scheduler/output_trust.py)."""
        with self.r.pipeline(transaction=False) as pipe:
            for step in steps:
                pipe.hmget(self.keys.step(run_id, step), ["outputs", "outputs_sig"])
            return [(outputs, sig) for outputs, sig in pipe.execute()]

    def verified_plan(self, run_id: str, step: str) -> StepPlan:
        """The step's stored plan, its signature checked when this store holds the key: what a pinned rerun
        signs again must be what was signed, not what a Redis writer put there."""
        plan = self.step_plan(run_id, step)
        if self.signing_key:
            text, sig = self.signed_plan(run_id, step)
            if text is None or not signing.verify(self.signing_key, run_id, step, text, sig):
                raise ConveyorError(f"run {run_id}: the stored plan of step '{step}' does not verify its signature "
                                    "(it was changed in Redis, or signed with another key); rerun it with --latest "
                                    "to plan it again from the DAG")
        return plan

    def verified_params(self, record: Mapping[str, str]) -> dict[str, Any]:
        """A run's params (its record as :meth:`run_record` reads it), their signature checked when this
        store holds the key: a rerun that plans from them again signs what was given, nothing else."""
        text = record.get("params") or "{}"
        if self.signing_key and text != "{}" and not signing.verify_params(
                self.signing_key, record["run_id"], text, record.get("params_sig")):
            raise ConveyorError(f"run {record['run_id']}: its params do not verify their signature (changed in "
                                "Redis, or given without the key); trigger a new run with the params you want")
        return json.loads(text)

    def signed_plan(self, run_id: str, step: str) -> tuple[str | None, str]:
        """A step's stored plan text (None when it has none) and its signature (scheduler/signing.py)."""
        digest, sig = self.r.hmget(self.keys.step(run_id, step), ["plan", "plan_sig"])
        text = digest if digest and digest.startswith("{") else self.r.get(self.keys.plan(digest)) if digest else None
        return text, sig or ""

    def missed_slas(self, limit: int = 200) -> list[SlaMiss]:
        """Record every SLA or deadline that fell due unmet (once each); returns the misses, each with the
        ready entry of an on_sla_miss handler it fired."""
        return decode_sla_misses(self._sla(args=[self.prefix, now_iso(), limit]))

    def skip_step(self, run_id: str, step: str, attempt: int, *, now: datetime | None = None) -> Finished:
        """Skip a queued step whose condition is false (fenced by the attempt number)."""
        return decode_finished(self._skip(args=[self.prefix, run_id, step, attempt, now_iso(now)]))

    # --- pools ----------------------------------------------------------------------------------

    def set_pool(self, name: str, slots: int | None, *, now: datetime | None = None) -> tuple[Ready, ...]:
        """Define, resize (``slots``) or remove (``None``) a pool; returns attempts that got slots."""
        return decode_ready(self._pool_set(args=[self.prefix, name, -1 if slots is None else slots, now_iso(now)]))

    def pools(self) -> list[dict[str, Any]]:
        defined = self.r.hgetall(self.keys.pools())
        used = self.r.hgetall(self.keys.pool_used())
        return [{"name": name, "slots": int(slots), "used": int(used.get(name, 0)),
                 "waiting": self.r.zcard(self.keys.pool_waiting(name))}
                for name, slots in sorted(defined.items())]

    # --- leases ---------------------------------------------------------------------------------

    def renew(self, run_id: str, step: str, attempt: int, lease: float = DEFAULT_LEASE) -> bool:
        """Heartbeat: False once the attempt was declared lost (the caller must stop its container)."""
        return self.renew_lease(run_id, step, attempt, lease) is Lease.HELD

    def renew_lease(self, run_id: str, step: str, attempt: int, lease: float = DEFAULT_LEASE,
                    holder: str = "") -> Lease:
        """Heartbeat fenced by the holder: ``TAKEN`` once another worker adopted the attempt."""
        return decode_lease(self._renew(args=[self.prefix, member(run_id, step, attempt), lease, holder]))

    def adopt(self, entry: str, *, adopter: str, lease: float = DEFAULT_LEASE, container_id: str = "",
              now: datetime | None = None) -> Adopted:
        """Lease the attempt ``entry`` (``run|step|n``, its lease expired) to ``adopter``, which follows its
        container to the end (fenced: one adopter wins; see ``adopt.lua``)."""
        return decode_adopted(self.replicated.run(self._adopt, [self.prefix, entry, now_iso(now), adopter, lease,
                                                                container_id], "adoption"),
                              parse_member(entry)[0])

    def hand_over(self, run_id: str, step: str, attempt: int, holder: str, *, now: datetime | None = None) -> bool:
        """Release the lease at once, the container still running, for another worker to adopt."""
        return bool(self._hand_over(args=[self.prefix, member(run_id, step, attempt), now_iso(now), holder]))

    def attempt_fields(self, run_id: str, step: str, attempt: int, *fields: str) -> list[str | None]:
        return self.r.hmget(self.keys.attempt(run_id, step, attempt), list(fields))

    def expired(self, limit: int = 100) -> list[str]:
        """Running attempts whose lease expired by Redis's clock (candidates for :meth:`lose`)."""
        now = self.r.time()
        return list(self.r.zrangebyscore(self.keys.running(), "-inf", now[0] + now[1] / 1e6, start=0, num=limit))

    def lose(self, entry: str, *, retry_delay: float = 0.0, counts: bool = True, grace: float = 0.0,
             now: datetime | None = None) -> Finished:
        """Declare an attempt with an expired lease lost (fenced: a renewed lease or a finished step wins;
        ``grace`` more seconds after the expiry leave workers that can see its container the time to adopt it)."""
        return decode_finished(self._lose(args=[self.prefix, entry, now_iso(now), retry_delay, int(counts), grace]))

    def overdue_queued(self, older_than: float, limit: int = 500) -> list[tuple[str, str, int]]:
        """Queued attempts due more than ``older_than`` seconds ago (their RQ job may have vanished)."""
        now = self.r.time()
        entries = self.r.zrangebyscore(self.keys.queued(), "-inf", now[0] + now[1] / 1e6 - older_than,
                                       start=0, num=limit)
        return [parse_member(e) for e in entries]

    def queue_of(self, run_id: str, step: str) -> tuple[str, float | None]:
        queue, timeout = self.r.hmget(self.keys.step(run_id, step), "queue", "timeout")
        return queue or "default", float(timeout) if timeout else None

    def cancel_run(self, run_id: str, *, now: datetime | None = None) -> RunCancel:
        """Cancel a run: waiting steps at once, running ones told to stop (see :class:`RunCancel`)."""
        self.run_record(run_id)
        return decode_run_cancel(self._cancel(args=[self.prefix, run_id, now_iso(now)]))

    def cancel_step(self, run_id: str, step: str, *, now: datetime | None = None) -> StepCancel:
        """Cancel one step (see :class:`StepCancel`)."""
        self.step_plan(run_id, step)
        return decode_step_cancel(self._cancel_step(args=[self.prefix, run_id, step, now_iso(now)]))

    def is_cancelled(self, run_id: str, step: str | None = None) -> bool:
        """Was the run (or, given ``step``, that step) asked to stop?"""
        if step is None:
            return self.r.hget(self.keys.run(run_id), "cancel") == "1"
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.run(run_id), "cancel")
            pipe.hmget(self.keys.step(run_id, step), "cancel", "rule")
            run_flag, (step_flag, rule) = pipe.execute()
        return step_flag == "1" or (run_flag == "1" and rule != "always")

    def rerun(self, run_id: str, steps: list[str], *, plans: Mapping[str, StepPlan] | None = None,
              now: datetime | None = None, resume: bool = False) -> tuple[Ready, ...]:
        """Rerun ``steps`` (topological order) of an ended run, optionally with new plans (``--latest``);
        ``resume`` keeps their saved checkpoints, else they start clean."""
        changed: list[list[Any]] = []
        texts: dict[str, str] = {}
        for name, plan in (plans or {}).items():
            digest, sig = self._stored_plan(run_id, name, plan, texts)
            fields = {"plan": digest, "plan_sig": sig, "retries": str(plan.retries), "queue": plan.queue,
                      "timeout": "" if plan.timeout is None else str(plan.timeout), "rule": plan.trigger_rule}
            # A field back at its default is removed (rerun.lua removes the fields given as "").
            changed.append([name, {k: "" if records.STEP_DEFAULTS.get(k) == v else v for k, v in fields.items()}])
        result = self._rerun(args=[self.prefix, run_id, now_iso(now), json.dumps(steps), "1" if resume else "0",
                                   _steps_arg(changed, texts)])
        if result[0] == "running":
            raise ConveyorError(f"run {run_id} has not ended; cancel it first (ctl cancel {run_id})")
        return decode_ready(result[1])

    # --- checkpoints (runner/checkpoints.py) ------------------------------------------------------

    def save_checkpoint(self, run_id: str, step: str, attempt: int, data: bytes, *, holder: str = "",
                        at: float | None = None) -> bool:
        """Keep ``data`` as the step's checkpoint, fenced: False when ``attempt`` is no longer the step's
        current one or another worker holds it (nothing is written)."""
        at = time.time() if at is None else at
        return bool(self._checkpoint(args=[self.prefix, run_id, step, attempt, holder,
                                           base64.b64encode(data).decode("ascii"), len(data), f"{at:.3f}"]))

    def checkpoint(self, run_id: str, step: str) -> bytes | None:
        """The step's last saved checkpoint, None when it has none."""
        text = self.r.hget(self.keys.checkpoint(run_id, step), "data")
        return None if text is None else base64.b64decode(text)

    def _checkpoint_facts(self, run_id: str, steps: list[dict[str, Any]]) -> None:
        """Add ``checkpoint_bytes`` and ``checkpoint_at`` (epoch seconds) to the steps that have one."""
        with self.r.pipeline(transaction=False) as pipe:
            for step in steps:
                pipe.hmget(self.keys.checkpoint(run_id, step.get("name", "")), "bytes", "at")
            for step, (size, at) in zip(steps, pipe.execute(), strict=True):
                if size is not None:
                    step["checkpoint_bytes"], step["checkpoint_at"] = int(size), float(at)

    # --- reading --------------------------------------------------------------------------------

    def run_record(self, run_id: str) -> dict[str, str]:
        record = records.run_view(run_id, self.r.hgetall(self.keys.run(run_id)))
        if not record:
            raise NotFoundError(f"no run '{run_id}'")
        return record

    def run_ids(self, dag: str | None = None, limit: int = 50) -> list[str]:
        key = self.keys.dag_runs(dag) if dag else self.keys.runs()
        return list(self.r.zrevrange(key, 0, limit - 1))

    def step_records(self, run_id: str, record: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every step of a run in order, each with its attempts, in as few round trips as possible (one
        fewer when the caller has the run's record already)."""
        record = record or self.run_record(run_id)
        names = json.loads(record["steps"]) + list(json.loads(record.get("handlers") or "{}"))
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.step(run_id, name))
            raws = pipe.execute()
        steps = [records.step_view(name, raw) if raw else raw for name, raw in zip(names, raws, strict=True)]
        with self.r.pipeline(transaction=False) as pipe:
            for name, step in zip(names, steps, strict=True):
                for n in range(1, int(step.get("attempt") or 0) + 1):
                    pipe.hgetall(self.keys.attempt(run_id, name, n))
            attempts = iter(pipe.execute())
        for step in steps:
            step["attempts"] = [a for a in (next(attempts) for _ in range(int(step.get("attempt") or 0))) if a]
        if any(int(step.get("instances") or 0) for step in steps):
            steps = self._with_instances(run_id, steps)
        self._checkpoint_facts(run_id, steps)
        return steps

    def _with_instances(self, run_id: str, steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The steps with each mapped step's instances ``STEP[i]`` (with their attempts) right after it."""
        names = [instance_name(s["name"], i) for s in steps for i in range(int(s.get("instances") or 0))]
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.step(run_id, name))
            found = {name: records.step_view(name, raw) if raw else raw
                     for name, raw in zip(names, pipe.execute(), strict=True)}
        with self.r.pipeline(transaction=False) as pipe:
            for name, step in found.items():
                for n in range(1, int(step.get("attempt") or 0) + 1):
                    pipe.hgetall(self.keys.attempt(run_id, name, n))
            attempts = iter(pipe.execute())
        for step in found.values():
            step["attempts"] = [a for a in (next(attempts) for _ in range(int(step.get("attempt") or 0))) if a]
        result = []
        for step in steps:
            result.append(step)
            result += [found[instance_name(step["name"], i)] for i in range(int(step.get("instances") or 0))]
        return result

    def step_plan(self, run_id: str, step: str) -> StepPlan:
        instance = mapped_instance(step)
        if instance is not None and self.r.exists(self.keys.step(run_id, step)):
            return replace(self.step_plan(run_id, instance[0]), step=step)  # an instance runs its step's plan
        text, _ = self.signed_plan(run_id, step)
        if text is None:
            raise NotFoundError(f"run '{run_id}' has no step '{step}'")
        return records.load_plan(run_id, text)

    def plan_texts(self, digests: set[str]) -> dict[str, str]:
        """Stored plans by digest (one round trip; the runs of a DAG version mostly share them)."""
        ordered = sorted(digests)
        texts = self.r.mget([self.keys.plan(d) for d in ordered]) if ordered else []
        return {d: t for d, t in zip(ordered, texts, strict=True) if t is not None}

    # --- small reads for the engine and the daemons (so that nothing else touches Redis) ---------

    def step_fields(self, run_id: str, step: str, *fields: str) -> list[str | None]:
        return self.r.hmget(self.keys.step(run_id, step), list(fields))

    def running_attempts(self) -> set[tuple[str, str, int]]:
        """Every attempt that holds a lease now, as ``(run_id, step, attempt)``."""
        return {parse_member(m) for m in self.r.zrange(self.keys.running(), 0, -1)}

    def running_attempt_records(self) -> list[dict[str, Any]]:
        """Every attempt that holds a lease now: ``run_id``, ``step``, ``attempt``, ``lease_until`` (epoch
        seconds, Redis's clock) and its attempt record's fields (``host``, ``pid``, ``worker``, ``started_at``)."""
        entries = self.r.zrange(self.keys.running(), 0, -1, withscores=True)
        with self.r.pipeline(transaction=False) as pipe:
            for entry, _ in entries:
                pipe.hgetall(self.keys.attempt(*parse_member(entry)))
            attempts = pipe.execute()
        found = []
        for (entry, expiry), record in zip(entries, attempts, strict=True):
            run_id, step, attempt = parse_member(entry)
            found.append({**record, "run_id": run_id, "step": step, "attempt": attempt, "lease_until": expiry})
        return found

    def postpone_queued(self, run_id: str, step: str, attempt: int, until: datetime) -> None:
        """Mark a queued attempt as due at ``until`` (deferred past an outage), so that the reconciler
        does not take the wait for a vanished job."""
        self.r.zadd(self.keys.queued(), {member(run_id, step, attempt): until.timestamp()}, xx=True)

    def dag_records(self, names: list[str]) -> list[dict[str, str]]:
        """The DAG hashes (latest version, paused, cursor) of ``names``, in one round trip."""
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(self.keys.dag(name))
            return pipe.execute()

    def run_states(self, run_ids: list[str]) -> dict[str, str | None]:
        with self.r.pipeline(transaction=False) as pipe:
            for rid in run_ids:
                pipe.hget(self.keys.run(rid), "state")
            return dict(zip(run_ids, pipe.execute(), strict=True))

    def interval_runs(self, dag: str) -> dict[str, str]:
        """Data interval start (ISO) -> the latest run of that interval (backfill's bookkeeping)."""
        return self.r.hgetall(self.keys.dag_intervals(dag))

    def run_dag(self, run_id: str) -> str | None:
        return self.r.hget(self.keys.run(run_id), "dag")

    def count_refused_job(self) -> None:
        """A worker refused a job that is not Conveyor's (``conveyor_jobs_refused_total``)."""
        self.r.incr(self.keys.jobs_refused())

    def jobs_refused(self) -> int:
        return int(self.r.get(self.keys.jobs_refused()) or 0)

    # --- reads for the HTTP server (scheduler/server/ops.py) ----------------------------------------

    def sched_epoch(self) -> str:
        """Bumped whenever calendars or global outages change (cache key for compiled schedules)."""
        return self.r.get(self.keys.sched_epoch()) or "0"

    def dag_head(self, name: str) -> tuple[int | None, str]:
        """The DAG's latest version (None: no such DAG) and the calendar epoch, in one round trip: what a
        cache of compiled versions needs to know whether its entry is still the one to use."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.dag(name), "latest")
            pipe.get(self.keys.sched_epoch())
            latest, epoch = pipe.execute()
        return (int(latest) if latest is not None else None), epoch or "0"

    def dag_summaries(self, names: list[str], last: int) -> list[tuple[dict[str, str], dict[str, Any] | None,
                                                                       list[tuple[str, str | None, str | None,
                                                                                  str | None]]]]:
        """Per DAG: its hash, its latest version record, and its last ``last`` runs as (run_id, state,
        created_at, staged_due), newest first. Two round trips for any number of DAGs."""
        k = self.keys
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(k.dag(name))
                pipe.zrevrange(k.dag_runs(name), 0, last - 1)
            heads = pipe.execute()
        meta, runs = heads[0::2], heads[1::2]
        with self.r.pipeline(transaction=False) as pipe:
            for name, m in zip(names, meta, strict=True):
                pipe.get(k.dag_version(name, int(m.get("latest") or 0)))
            for ids in runs:
                for run_id in ids:
                    pipe.hmget(k.run(run_id), "state", "created_at", "staged_due")
            rows = pipe.execute()
        versions, states = rows[:len(names)], iter(rows[len(names):])
        return [(m, json.loads(raw) if raw else None, [(run_id, *next(states)) for run_id in ids])
                for m, raw, ids in zip(meta, versions, runs, strict=True)]

    def runs_page(self, dag: str | None, top: float | str, offset: int, count: int) -> list[tuple[str, float,
                                                                                                  dict[str, str]]]:
        """Runs by creation time, newest first, at or below ``top``: (run_id, score, record)."""
        key = self.keys.dag_runs(dag) if dag else self.keys.runs()
        chunk = self.r.zrevrangebyscore(key, top, "-inf", start=offset, num=count, withscores=True)
        with self.r.pipeline(transaction=False) as pipe:
            for run_id, _ in chunk:
                pipe.hgetall(self.keys.run(run_id))
            runs = pipe.execute()
        return [(run_id, score, records.run_view(run_id, record))
                for (run_id, score), record in zip(chunk, runs, strict=True)]

    def previous_run(self, dag: str, run_id: str) -> str | None:
        """The run of ``dag`` created just before ``run_id``."""
        key = self.keys.dag_runs(dag)
        score = self.r.zscore(key, run_id)
        if score is None:
            return None
        older = self.r.zrevrangebyscore(key, score, "-inf", start=0, num=5)
        return next((r for r in older if r != run_id), None)

    def step_upstreams(self, run_id: str, names: list[str]) -> dict[str, list[str]]:
        with self.r.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hget(self.keys.step(run_id, name), "upstream")
            ups = pipe.execute()
        return {name: json.loads(up or "[]") for name, up in zip(names, ups, strict=True)}

    def attempt_ended_at(self, run_id: str, step: str, attempt: int) -> datetime | None:
        raw = self.r.hget(self.keys.attempt(run_id, step, attempt), "ended_at")
        return datetime.fromisoformat(raw) if raw else None

    def attempt_ended(self, run_id: str, step: str, attempt: int) -> bool:
        """Has this attempt ended (or been superseded)? A follow of its log stops then."""
        with self.r.pipeline(transaction=False) as pipe:
            pipe.hget(self.keys.attempt(run_id, step, attempt), "ended_at")
            pipe.hmget(self.keys.step(run_id, step), "state", "attempt")
            ended, (state, current) = pipe.execute()
        return bool(ended) or int(current or 0) > attempt or state in TERMINAL_STEP_STATES

    # --- history ----------------------------------------------------------------------------------

    def run_ids_since(self, since: float, dag: str | None = None) -> list[tuple[str, float]]:
        """Runs created at or after ``since`` (epoch seconds), oldest first, with their creation time."""
        key = self.keys.dag_runs(dag) if dag else self.keys.runs()
        return self.r.zrangebyscore(key, since, "+inf", withscores=True)

    def runs_with_steps(self, run_ids: list[str]) -> list[tuple[dict[str, str], list[dict[str, Any]]]]:
        """Each run's record and its ordinary steps, each with ``attempts`` and its plan's ``tags``; four
        round trips in all."""
        keys = self.keys
        with self.r.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.hgetall(keys.run(run_id))
            runs = [records.run_view(run_id, raw) for run_id, raw in zip(run_ids, pipe.execute(), strict=True)]
        names = [json.loads(r.get("steps") or "[]") if r else [] for r in runs]
        with self.r.pipeline(transaction=False) as pipe:
            for run_id, steps in zip(run_ids, names, strict=True):
                for name in steps:
                    pipe.hgetall(keys.step(run_id, name))
            step_records = iter(pipe.execute())
        per_run = [[records.step_view(name, next(step_records)) for name in steps] for steps in names]
        with self.r.pipeline(transaction=False) as pipe:
            for run_id, steps in zip(run_ids, per_run, strict=True):
                for step in steps:
                    for n in range(1, int(step.get("attempt") or 0) + 1):
                        pipe.hgetall(keys.attempt(run_id, step.get("name", ""), n))
            attempt_records = iter(pipe.execute())
        for steps in per_run:
            for step in steps:
                step["attempts"] = [next(attempt_records) for _ in range(int(step.get("attempt") or 0))]
        texts = self.plan_texts({step["plan"] for steps in per_run for step in steps if step.get("plan")})
        texts.update({s["plan"]: s["plan"] for steps in per_run for s in steps if s.get("plan", "").startswith("{")})
        tags = {digest: json.loads(text).get("tags") or {} for digest, text in texts.items()}
        for steps in per_run:
            for step in steps:
                step["tags"] = tags.get(step.get("plan") or "", {})
        return list(zip(runs, per_run, strict=True))

    def runs_created_before(self, cutoff: float, limit: int) -> list[str]:
        return self.r.zrangebyscore(self.keys.runs(), "-inf", f"({cutoff}", start=0, num=limit)

    def delete_run(self, run_id: str) -> bool:
        """Delete an ended run and every key of it, handler steps included (``delete_run.lua``, the same
        code that takes staged runs back). A run that has not ended is left alone: returns False."""
        logical = self.r.hget(self.keys.run(run_id), "logical_date")
        fire = datetime.fromisoformat(logical).astimezone(UTC).isoformat() if logical else ""
        return bool(self._delete_run(args=[self.prefix, run_id, fire]))

    # --- events -----------------------------------------------------------------------------------

    def last_event_id(self) -> str:
        newest = self.r.xrevrange(self.keys.events(), count=1)
        return newest[0][0] if newest else "0-0"

    def read_events(self, after: str, *, count: int = 500, block_ms: int | None = None) -> list[tuple[str, dict]]:
        """Events after the id ``after``, oldest first (blocking up to ``block_ms`` when none)."""
        answer = self.r.xread({self.keys.events(): after}, count=count, block=block_ms)
        return [(entry_id, fields) for _, entries in answer or [] for entry_id, fields in entries]

    def gauges(self, queues: tuple[str, ...]) -> tuple[list[int], int, int, list[tuple[str, float]]]:
        """RQ queue depths, running and queued attempts, and the agenda's earliest entry: one round trip."""
        with self.r.pipeline(transaction=False) as pipe:
            for queue in queues:
                pipe.llen(f"rq:queue:{queue}")
            pipe.zcard(self.keys.running())
            pipe.zcard(self.keys.queued())
            pipe.zrange(self.keys.agenda(), 0, 0, withscores=True)
            *depths, running, queued, oldest = pipe.execute()
        return depths, running, queued, oldest

    # --- logs -----------------------------------------------------------------------------------

    def append_log(self, run_id: str, step: str, attempt: int, chunk: bytes, *, holder: str = "",
                   raw: int | None = None) -> int:
        """Append output; ``raw`` is how many bytes of the container's output the chunk stands for (masking
        changes lengths). Returns the bytes kept, or -1 when ``holder`` no longer holds the attempt."""
        return int(self._append_log(args=[self.prefix, run_id, step, attempt, chunk, self.log_cap, LOG_TTL, holder,
                                          len(chunk) if raw is None else raw]))

    def read_log(self, run_id: str, step: str, attempt: int, offset: int = 0) -> bytes:
        """The attempt's stored output as raw bytes (from byte ``offset`` on)."""
        key = self.keys.log(run_id, step, attempt)
        if offset:
            raw = self.r.execute_command("GETRANGE", key, offset, -1, NEVER_DECODE=True)
        else:
            raw = self.r.execute_command("GET", key, NEVER_DECODE=True)
        return raw or b""
