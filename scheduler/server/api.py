"""The JSON API under ``/api/v1``. Every handler calls :class:`scheduler.server.ops.Ops` and returns what
the matching ``ctl ... -o json`` prints; errors are ``{"detail": message}`` with a fitting status."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from scheduler import stats as history
from scheduler.errors import InputError
from scheduler.model import Priority
from scheduler.server import streams
from scheduler.server.access import Principal, api_reader, api_writer
from scheduler.server.errors import BadInput
from scheduler.server.ops import Ops
from scheduler.service import Reprocess, parse_instant

router = APIRouter(prefix="/api/v1")


def ops_of(request: Request) -> Ops:
    return request.app.state.ops


class TriggerBody(BaseModel):
    params: dict[str, Any] = Field(default_factory=dict, description="Param values; checked against their types.")
    priority: Priority | None = Field(None, description="Queue for the run's steps (default: high).")


class RerunBody(BaseModel):
    step: str | None = Field(None, description="Rerun this step (and what is downstream of it).")
    no_downstream: bool = Field(False, description="With step: only that step.")
    all: bool = Field(False, description="Rerun every step.")
    latest: bool = Field(False, description="Use the DAG's latest version and image tags.")


class CancelBody(BaseModel):
    step: str | None = Field(None, description="Cancel only this step.")


class BackfillBody(BaseModel):
    start: str = Field(..., description="First instant (YYYY-MM-DD or ISO time, DAG timezone).")
    end: str = Field(..., description="End of the range, excluded.")
    batch: str | None = None
    schedule_aligned: bool = False
    reprocess: Reprocess = Reprocess.none
    max_active_runs: int | None = Field(None, ge=1)
    dry_run: bool = False
    backwards: bool = False
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Priority = Priority.LOW


@router.get("/dags", summary="Every DAG: version, paused, schedule, next fire, last run, import error")
def list_dags(request: Request, _: Principal = Depends(api_reader)) -> list[dict[str, Any]]:
    return [{k: v for k, v in d.items() if k != "recent_runs"} for d in ops_of(request).dags(last=1)]


@router.get("/catalog", summary="Every DAG as `ctl dags -o json` lists it, and orphan import errors")
def catalog(request: Request, _: Principal = Depends(api_reader)) -> dict[str, Any]:
    return ops_of(request).catalog()


@router.get("/dags/{dag}", summary="One DAG with its params and steps")
def get_dag(dag: str, request: Request, _: Principal = Depends(api_reader)) -> dict[str, Any]:
    return ops_of(request).dag(dag)


@router.get("/dags/{dag}/next", summary="Next fire times and every dropped candidate with its reason (ctl next)")
def next_fires(dag: str, request: Request, n: int = Query(10, ge=1, le=1000),
               start: datetime | None = Query(None, alias="from", description="Start here instead of now "
                                                                          "(UTC unless it has an offset)."),
               _: Principal = Depends(api_reader)) -> dict[str, Any]:
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    return ops_of(request).next_fires(dag, n, start).to_json()


class DatasetEventBody(BaseModel):
    payload: Any = Field(None, description="Any JSON value, kept with the event and passed to consumers.")


@router.post("/datasets/{name}/events", status_code=201,
             summary="Record a dataset event (ctl dataset emit): DAGs whose schedule lists it get their run")
def dataset_event(name: str, request: Request, body: DatasetEventBody | None = None,
                  principal: Principal = Depends(api_writer)) -> dict[str, Any]:
    return ops_of(request).emit_dataset(name, (body or DatasetEventBody()).payload, "api")


@router.post("/dags/{dag}/pause", summary="Stop creating scheduled runs")
def pause(dag: str, request: Request, _: Principal = Depends(api_writer)) -> dict[str, Any]:
    ops_of(request).set_paused(dag, True)
    return {"dag": dag, "paused": True}


@router.post("/dags/{dag}/unpause", summary="Create scheduled runs again")
def unpause(dag: str, request: Request, _: Principal = Depends(api_writer)) -> dict[str, Any]:
    ops_of(request).set_paused(dag, False)
    return {"dag": dag, "paused": False}


# The two calls a team's scripts make most (trigger, poll a run) run on the event loop itself: their work
# is a few Redis round trips (under a millisecond), less than handing them to a worker thread costs, and
# they answer with a JSONResponse built once instead of a return value FastAPI would validate and encode
# again. Everything else (big pages, DAG lists, backfills) stays in the thread pool.
@router.post("/dags/{dag}/runs", status_code=201, summary="Trigger a run (ctl trigger)",
             responses={201: {"description": '{"run_id": "..."}'}})
async def trigger(dag: str, body: TriggerBody, request: Request, _: Principal = Depends(api_writer)) -> JSONResponse:
    return JSONResponse({"run_id": ops_of(request).trigger(dag, body.params, body.priority)}, status_code=201)


@router.post("/dags/{dag}/backfill", summary="Runs for past data intervals (ctl backfill); dry_run plans only")
def backfill(dag: str, body: BackfillBody, request: Request, _: Principal = Depends(api_writer)) -> JSONResponse:
    ops = ops_of(request)
    try:
        start, end = parse_instant(body.start), parse_instant(body.end)
    except ValueError:
        raise BadInput("start and end must be dates (YYYY-MM-DD) or ISO times") from None
    plan = ops.backfill_plan(dag, start, end, batch=body.batch, schedule_aligned=body.schedule_aligned,
                             reprocess=body.reprocess, backwards=body.backwards)
    if body.dry_run:
        return JSONResponse({"dag": dag, "dry_run": True, "batches": [i.to_json() for i in plan.intervals]})
    created = ops.backfill(plan, body.params, body.priority, body.max_active_runs)
    pending = len(plan.todo) - len(created)
    return JSONResponse({"dag": dag, "created": len(created), "pending": pending,
                         "skipped": len(plan.intervals) - len(plan.todo),
                         "runs": [{**i.to_json(), "run_id": i.run_id} for i in plan.intervals]}, status_code=201)


@router.get("/runs", summary="Runs, newest first, a page at a time")
def list_runs(request: Request, dag: str | None = None, state: str | None = None,
              limit: int = Query(50, ge=1, le=500), cursor: str | None = None,
              _: Principal = Depends(api_reader)) -> dict[str, Any]:
    ops = ops_of(request)
    runs, following = ops.runs(dag or None, state or None, limit, cursor or None)
    problem = ops.dag_error(dag) if dag else None  # the scheduler cannot evaluate or plan it (ctl runs DAG)
    return {"runs": runs, "next_cursor": following,
            "dag_error": {"message": problem[0], "since": problem[1]} if problem else None}


@router.get("/runs/{run_id}", summary="A run and its steps with attempts (ctl status RUN -o json)",
            responses={200: {"description": "The document `ctl status RUN -o json` prints."}})
async def get_run(run_id: str, request: Request, _: Principal = Depends(api_reader)) -> JSONResponse:
    return JSONResponse(ops_of(request).status(run_id))


@router.post("/runs/{run_id}/rerun", summary="Rerun steps of an ended run (ctl rerun)")
def rerun(run_id: str, request: Request, body: RerunBody | None = None,
          _: Principal = Depends(api_writer)) -> dict[str, Any]:
    body = body or RerunBody()
    done = ops_of(request).rerun(run_id, step=body.step, downstream=not body.no_downstream, everything=body.all,
                                 latest=body.latest)
    return {"run_id": run_id, "rerun": done.steps, "version": done.version, "notes": done.notes}


@router.post("/runs/{run_id}/cancel", summary="Cancel a run or one step (ctl cancel)")
def cancel(run_id: str, request: Request, body: CancelBody | None = None,
           _: Principal = Depends(api_writer)) -> JSONResponse:
    result = ops_of(request).cancel(run_id, (body or CancelBody()).step)
    return JSONResponse(result, status_code=409 if result["ended"] else 200)


@router.get("/runs/{run_id}/steps/{step}/logs", summary="An attempt's output, raw bytes; follow streams it",
            response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def logs(run_id: str, step: str, request: Request, attempt: int | None = Query(None, ge=1), follow: bool = False,
         _: Principal = Depends(api_reader)) -> Response:
    ops = ops_of(request)
    number = ops.log_attempt(run_id, step, attempt)
    headers = {"X-Conveyor-Attempt": str(number), "Cache-Control": "no-store"}
    if not follow:
        return Response(ops.read_log(run_id, step, number), media_type="text/plain; charset=utf-8", headers=headers)
    return StreamingResponse(streams.follow_log(ops, request, run_id, step, number),
                             media_type="text/plain; charset=utf-8", headers={**headers, "X-Accel-Buffering": "no"})


@router.get("/runs/{a}/diff/{b}", summary="What changed between two runs (ctl diff)")
def diff(a: str, b: str, request: Request, _: Principal = Depends(api_reader)) -> dict[str, Any]:
    return ops_of(request).diff(a, b)


@router.get("/stats", summary="Failure rates, durations, slow attempts, failing hosts and tags (ctl stats)")
def stats(request: Request, dag: str | None = None, since: str = "7d", by: str = "dag", top: int = Query(5, ge=1),
          _: Principal = Depends(api_reader)) -> dict[str, Any]:
    return ops_of(request).stats(dag or None, since_epoch(since), by, top)


@router.get("/events", summary="Server-Sent Events of state changes; resumable with Last-Event-ID",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
def events(request: Request, run: str | None = None, last_event_id: str | None = None,
           _: Principal = Depends(api_reader)) -> StreamingResponse:
    start = request.headers.get("last-event-id") or last_event_id or "$"
    if start != "$" and not streams.valid_id(start):
        raise BadInput(f"invalid event id {start!r}")
    return StreamingResponse(streams.events(request, start, run), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def since_epoch(value: str) -> float:
    """``since`` as ``ctl stats --since`` reads it (one parser: :func:`scheduler.stats.since_epoch`)."""
    try:
        return history.since_epoch(value)
    except InputError as exc:
        raise BadInput(str(exc)) from None
