"""Which RQ jobs a Conveyor worker runs: its own attempt job, and nothing else.

RQ calls whatever importable function a job names, with whatever its serializer decodes. Anyone who
can write to the Redis could therefore run code in a worker (which holds the Docker socket or a
service account). So a worker checks every job *before* anything of it is called:

- the raw payload is small (``MAX_JOB_BYTES``) and JSON (RQ's JSONSerializer: nothing is unpickled);
- the function is :data:`scheduler.dispatch.JOB_FUNC`, with exactly (run id, step, attempt,
  prefix) as plain values, no kwargs, the worker's own prefix, and a job id that names them.

Anything else is refused: moved to RQ's failed registry with the reason, logged, counted
(``conveyor_jobs_refused_total``), and never imported, unpickled or called.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rq.job import Job

from scheduler.dispatch import JOB_FUNC, job_id

log = logging.getLogger("conveyor.runner")
MAX_JOB_BYTES = 4096  # a real attempt job is ~150 bytes of JSON
_NAME = re.compile(r"^[A-Za-z0-9_.:\[\]-]{1,256}$")


class JobRefused(Exception):
    """A job this worker will not run; ``job_id`` names it when it is known."""

    def __init__(self, reason: str, job_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.job_id = job_id


class ConveyorJob(Job):
    """An RQ job whose payload size is checked before RQ reads and decompresses it."""

    @classmethod
    def fetch(cls, id: str, connection: Any = None, serializer: Any = None) -> Job:
        if connection is not None:
            size = connection.hstrlen(cls.key_for(id), "data")
            if size > MAX_JOB_BYTES:
                raise JobRefused(f"job payload of {size:,} bytes (a Conveyor job is under {MAX_JOB_BYTES:,})", id)
        return super().fetch(id, connection=connection, serializer=serializer)


def check(job: Job, prefix: str) -> None:
    """Raise :class:`JobRefused` unless ``job`` is Conveyor's attempt job for this prefix."""
    if len(job.data) > MAX_JOB_BYTES:  # decompressed (RQ stores the payload zlib-compressed)
        raise JobRefused(f"job payload of {len(job.data):,} bytes (a Conveyor job is under {MAX_JOB_BYTES:,})",
                         job.id)
    try:
        func, args, kwargs = job.func_name, job.args, job.kwargs
    except Exception:  # DeserializationError: not JSON (a pickle, garbage)
        raise JobRefused("the job's payload is not Conveyor's JSON payload", job.id) from None
    if func != JOB_FUNC:
        raise JobRefused(f"the job calls {str(func)[:100]!r}; a Conveyor worker runs only {JOB_FUNC}", job.id)
    if kwargs or not isinstance(args, list | tuple) or len(args) != 4:
        raise JobRefused("the job's arguments are not (run id, step, attempt, prefix)", job.id)
    run_id, step, attempt, job_prefix = args
    if not (isinstance(run_id, str) and isinstance(step, str) and isinstance(job_prefix, str)
            and isinstance(attempt, int) and not isinstance(attempt, bool) and attempt > 0
            and _NAME.match(run_id) and _NAME.match(step)):
        raise JobRefused("the job's arguments are not plain (run id, step, attempt, prefix) values", job.id)
    if job_prefix != prefix:
        raise JobRefused(f"the job is for prefix {job_prefix[:64]!r}, this worker serves {prefix!r}", job.id)
    expected = job_id(run_id, step, attempt)
    if job.id != expected and not job.id.startswith(expected + "-"):
        raise JobRefused(f"the job id {job.id[:80]!r} does not name its attempt ({expected})", job.id)
