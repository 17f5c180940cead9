"""Every Redis key Conveyor uses, in one place. All of them start with the configurable prefix.

The Lua scripts in ``scheduler/lua`` build the same keys with the helpers ``K.NAME`` of ``lib.lua``,
one per method here with the same name and arguments; ``tests/test_keys.py`` evaluates both sides
and compares them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str = "conveyor"

    def store_id(self) -> str:  # string: this store's random id, labelled on containers (orphan reaping)
        return f"{self.prefix}:store_id"

    # DAGs -------------------------------------------------------------------------------------
    def dags(self) -> str:  # set of DAG names
        return f"{self.prefix}:dags"

    def dag(self, name: str) -> str:  # hash: latest, paused, updated_at
        return f"{self.prefix}:dag:{name}"

    def dag_version(self, name: str, version: int) -> str:  # string: JSON of one submitted version
        return f"{self.prefix}:dag:{name}:v:{version}"

    def dag_shas(self, name: str) -> str:  # hash: content sha256 -> version
        return f"{self.prefix}:dag:{name}:shas"

    def dag_runs(self, name: str) -> str:  # zset: run_id by created time
        return f"{self.prefix}:dag:{name}:runs"

    def dag_active(self, name: str) -> str:  # set: runs holding one of max_active_runs
        return f"{self.prefix}:dag:{name}:active"

    def dag_waiting(self, name: str) -> str:  # list: runs waiting for max_active_runs
        return f"{self.prefix}:dag:{name}:waiting"

    def dag_fires(self, name: str) -> str:  # hash: logical date (UTC ISO) -> run_id, one run per fire
        return f"{self.prefix}:dag:{name}:fires"

    def dag_staged(self, name: str) -> str:  # zset: the DAG's staged runs by due time (see staging.py)
        return f"{self.prefix}:dag:{name}:staged"

    def dag_intervals(self, name: str) -> str:  # hash: data interval start -> latest run_id (backfill)
        return f"{self.prefix}:dag:{name}:intervals"

    def sync_files(self) -> str:  # hash: "ROOT|RELATIVE PATH" of a synced DAG file -> the DAG it defines
        return f"{self.prefix}:sync:files"

    def import_errors(self) -> str:  # hash: "ROOT|RELATIVE PATH" -> JSON of the file's problems (dagsync.py)
        return f"{self.prefix}:sync:errors"

    # Scheduling ---------------------------------------------------------------------------------
    def agenda(self) -> str:  # zset: scheduled DAG name by its next due time (epoch seconds)
        return f"{self.prefix}:agenda"

    def staged(self) -> str:  # zset: "QUEUE|DUE" of the staged lists below, by due time (epoch seconds)
        return f"{self.prefix}:staged"

    def staged_list(self, queue: str, due: str) -> str:  # list: RQ job ids staged for one queue and due time
        return f"{self.prefix}:staged:{queue}|{due}"

    def sched_epoch(self) -> str:  # counter: bumped when calendars or global outages change
        return f"{self.prefix}:sched_epoch"

    def wake(self) -> str:  # list: pushed to wake the scheduler at once (submit, pause, outage change)
        return f"{self.prefix}:wake"

    def calendars(self) -> str:  # hash: named calendar -> JSON spec (ctl calendar submit)
        return f"{self.prefix}:calendars"

    def outages(self) -> str:  # hash: global outage name -> JSON spec (ctl outage add)
        return f"{self.prefix}:outages"

    def leader(self) -> str:  # string with a TTL: the leading scheduler's id and fencing token
        return f"{self.prefix}:scheduler:leader"

    def leader_token(self) -> str:  # counter: fencing tokens, one per leadership
        return f"{self.prefix}:scheduler:token"

    # Runs -------------------------------------------------------------------------------------
    def runs(self) -> str:  # zset: every run_id by created time
        return f"{self.prefix}:runs"

    def run(self, run_id: str) -> str:  # hash: the run record
        return f"{self.prefix}:run:{run_id}"

    def step(self, run_id: str, step: str) -> str:  # hash: state, attempt, counters, plan digest, ...
        return f"{self.prefix}:run:{run_id}:step:{step}"

    def attempt(self, run_id: str, step: str, number: int) -> str:  # hash: one attempt's record
        return f"{self.prefix}:run:{run_id}:step:{step}:a:{number}"

    def plan(self, digest: str) -> str:  # string: one rendered step plan (canonical JSON), shared by content
        return f"{self.prefix}:plan:{digest}"

    def plan_refs(self) -> str:  # hash: plan digest -> how many step records name it (the plan goes at 0)
        return f"{self.prefix}:plan_refs"

    def checkpoint(self, run_id: str, step: str) -> str:  # hash: the step's last saved checkpoint (data, bytes, at)
        return f"{self.prefix}:run:{run_id}:step:{step}:checkpoint"

    def log(self, run_id: str, step: str, number: int) -> str:  # string: capped output of an attempt
        return f"{self.prefix}:log:{run_id}:{step}:{number}"

    def pools(self) -> str:  # hash: pool name -> slots
        return f"{self.prefix}:pools"

    def pool_used(self) -> str:  # hash: pool name -> slots taken by running (or handed) attempts
        return f"{self.prefix}:pool_used"

    def pool_waiting(self, pool: str) -> str:  # zset: attempts "run|step|n" waiting for the pool's slots
        return f"{self.prefix}:pool:{pool}:waiting"

    def running(self) -> str:  # zset: running attempts "run|step|n" by lease expiry (Redis TIME seconds)
        return f"{self.prefix}:running"

    def queued(self) -> str:  # zset: queued or retrying attempts "run|step|n" by when they are due
        return f"{self.prefix}:queued"

    def delayed(self) -> str:  # zset: encoded ready attempts by when they are due (Redis TIME seconds)
        return f"{self.prefix}:delayed"

    def sla(self) -> str:  # zset: "run|step" ("run|" for the deadline) by when the SLA falls due
        return f"{self.prefix}:sla"

    def jobs_refused(self) -> str:  # counter: RQ jobs workers refused (not Conveyor's attempt job)
        return f"{self.prefix}:jobs_refused"

    # Datasets (scheduler/datasets.py) -------------------------------------------------------------
    def datasets(self) -> str:  # hash: dataset name -> JSON of its last event (with its sequence number)
        return f"{self.prefix}:datasets"

    def dataset_events(self, name: str) -> str:  # list: a dataset's recent events, newest first, capped
        return f"{self.prefix}:dataset:{name}:events"

    def dataset_seen(self, name: str) -> str:  # hash: dataset -> the event number a DAG's last dataset run used
        return f"{self.prefix}:dag:{name}:datasets_seen"

    def events(self) -> str:  # stream: every state change, capped
        return f"{self.prefix}:events"
