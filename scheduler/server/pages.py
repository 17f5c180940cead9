"""The web UI: server-rendered pages (Jinja2, autoescaped) at shareable URLs, and the form posts that
change state (each checked for role, same origin and CSRF token). Live regions re-render through
``?fragment=live`` when the page's script hears an event."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from importlib import resources
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from scheduler.errors import ConveyorError, ParamError
from scheduler.model import Priority
from scheduler.server import present
from scheduler.server.access import Principal, identify, same_origin, tokens_of
from scheduler.server.auth import SESSION_COOKIE, SESSION_TTL, Session
from scheduler.server.ops import Ops
from scheduler.service import Reprocess, parse_instant

LOGIN_COOKIE = "conveyor_login"
STATES = ("success", "failed", "upstream_failed", "running", "queued", "retrying", "cancelled", "skipped",
          "pending", "scheduled")

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(resources.files("scheduler.server") / "templates"))
templates.env.globals.update(
    words=present.schedule_words, relative=present.relative, human_seconds=present.human_seconds,
    seconds_between=present.seconds_between, states=STATES,
)
templates.env.filters["clock"] = lambda v: (v[:19].replace("T", " ") + " UTC") if v else "—"
templates.env.filters["shown"] = lambda v: "—" if v is None or v == "" else (v if isinstance(v, str) else
                                                                                json.dumps(v))


def ops_of(request: Request) -> Ops:
    return request.app.state.ops


def login_url(request: Request) -> str:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return f"/login?next={quote(target, safe='')}"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")


class Viewer:
    """The person looking at a page: their role and the CSRF token their forms carry."""

    def __init__(self, request: Request):
        who = identify(request)
        if who is None:
            raise HTTPException(401, "log in first")
        self.request = request
        self.who: Principal = who
        self.new_cookie: str | None = None
        session = who.session
        if session is None:  # no tokens file (or a bearer token in a browser): a session for CSRF only
            self.new_cookie, session = tokens_of(request).anonymous_session()
        self.session: Session = session

    @property
    def csrf(self) -> str:
        return tokens_of(self.request).csrf_token(self.session.sid)

    def render(self, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        context = {"who": self.who, "csrf": self.csrf, "auth": tokens_of(self.request).enabled, **context}
        response = templates.TemplateResponse(self.request, name, context, status_code=status)
        if self.new_cookie:
            _cookie(response, self.request, SESSION_COOKIE, self.new_cookie, SESSION_TTL)
        response.headers["Cache-Control"] = "no-store"
        return response


async def operator_form(request: Request) -> dict[str, str]:
    """The posted form, after checking the poster may write and the CSRF token is theirs."""
    who = identify(request)
    if who is None:
        raise HTTPException(401, "log in first")
    if not who.can_write:
        raise HTTPException(403, f"the {who.role.value} role cannot change anything; log in with an operator token")
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not same_origin(request) or who.session is None or not tokens_of(request).csrf_ok(who.session.sid,
                                                                                       form.get("_csrf")):
        raise HTTPException(403, "the form expired or did not come from this site; reload the page and try again")
    return form


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    try:
        viewer = Viewer(request)
    except HTTPException:
        return templates.TemplateResponse(request, "error.html", {"status": status, "message": message, "who": None,
                                                                  "auth": True, "csrf": ""}, status_code=status)
    return viewer.render("error.html", {"status": status, "message": message}, status)


def back_to(form: dict[str, str], default: str) -> str:
    target = form.get("_next") or default
    parts = urlsplit(target)
    return target if target.startswith("/") and not target.startswith("//") and not parts.netloc else default


# --- login ---------------------------------------------------------------------------------------


def _login_csrf(request: Request, nonce: str) -> str:
    return hmac.new(tokens_of(request).secret, b"login:" + nonce.encode(), hashlib.sha256).hexdigest()


@router.get("/login")
def login_form(request: Request, next: str = "/", failed: bool = False) -> Response:
    if not tokens_of(request).enabled:
        return RedirectResponse("/", status_code=303)
    nonce = request.cookies.get(LOGIN_COOKIE) or secrets.token_urlsafe(16)
    response = templates.TemplateResponse(request, "login.html", {
        "who": None, "auth": True, "csrf": _login_csrf(request, nonce), "next": back_to({"_next": next}, "/"),
        "failed": failed}, status_code=401 if failed else 200)
    _cookie(response, request, LOGIN_COOKIE, nonce, 3600)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    target = back_to(form, "/")
    if not nonce or not hmac.compare_digest(_login_csrf(request, nonce), form.get("_csrf", "")) \
            or not same_origin(request):
        return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    opened = tokens_of(request).open_session(form.get("token", "").strip())
    if opened is None:
        return login_form(request, next=target, failed=True)
    response = RedirectResponse(target, status_code=303)
    _cookie(response, request, SESSION_COOKIE, opened[0], SESSION_TTL)
    response.delete_cookie(LOGIN_COOKIE, path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    who = identify(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    response = RedirectResponse("/login" if tokens_of(request).enabled else "/", status_code=303)
    if who and who.session and tokens_of(request).csrf_ok(who.session.sid, form.get("_csrf")):
        response.delete_cookie(SESSION_COOKIE, path="/")
    return response


# --- DAGs ----------------------------------------------------------------------------------------


@router.get("/")
def dags_page(request: Request, fragment: str | None = None) -> Response:
    viewer = Viewer(request)
    dags = ops_of(request).dags(last=14)
    context = {"dags": dags, "title": "DAGs", "counts": {
        "total": len(dags), "paused": sum(d["paused"] for d in dags),
        "broken": sum(bool(d["import_error"]) for d in dags),
        "failing": sum(1 for d in dags if d["last_run"] and d["last_run"]["state"] == "failed")}}
    return viewer.render("_dags_live.html" if fragment == "live" else "dags.html", context)


def dag_context(request: Request, name: str) -> dict[str, Any]:
    ops = ops_of(request)
    dag = ops.dag(name)
    grid = ops.grid(name, 20)
    latest = {s["name"]: s["state"] for s in grid[-1]["steps"]} if grid else {}
    upstream = {s["name"]: s["depends_on"] for s in dag["steps"]}
    upcoming, upcoming_error = None, None
    if dag["schedule"] and not dag["import_error"]:
        try:
            found = ops.next_fires(name, 10)
            events = [{"kind": "fire", "at": f.logical_date.isoformat(), "utc": f.utc.isoformat(),
                       "note": f"deferred to {f.due.isoformat()} by outage {f.deferred_by}" if f.deferred_by else "",
                       "key": f.utc} for f in found.fires]
            events += [{"kind": "dropped", "at": d.at.isoformat(), "utc": d.utc.isoformat(), "note": d.reason,
                        "key": d.utc} for d in found.dropped]
            upcoming = {"timezone": str(found.schedule.tz), "events": sorted(events, key=lambda e: str(e["key"])),
                        "fires": len(found.fires), "dropped": len(found.dropped)}
        except ConveyorError as exc:
            upcoming_error = str(exc)
    names = [s["name"] for s in dag["steps"]]
    for run in grid:
        names += [s["name"] for s in run["steps"] if s["name"] not in names]
    return {"dag": dag, "grid": grid, "grid_steps": names,
            "grid_states": [{s["name"]: s for s in run["steps"]} for run in grid],
            "layout": present.graph_layout(upstream, latest), "upcoming": upcoming, "upcoming_error": upcoming_error,
            "title": name, "priorities": [p.value for p in Priority], "reprocess": [r.value for r in Reprocess],
            "values": {}, "trigger_error": None, "backfill": None, "backfill_error": None, "backfill_values": {}}


@router.get("/dags/{name}")
def dag_page(request: Request, name: str, fragment: str | None = None) -> Response:
    viewer = Viewer(request)
    return viewer.render("_dag_live.html" if fragment == "live" else "dag.html", dag_context(request, name))


@router.post("/dags/{name}/trigger")
async def trigger_form(request: Request, name: str) -> Response:
    form = await operator_form(request)
    ops = ops_of(request)
    declared = [p["name"] for p in ops.dag(name)["params"]]
    params = {p: form[p] for p in declared if form.get(p, "") != ""}
    try:
        priority = Priority(form["_priority"]) if form.get("_priority") else None
        run_id = ops.trigger(name, params, priority)
    except (ParamError, ValueError) as exc:
        context = dag_context(request, name)
        context.update(values=params, trigger_error=str(exc))
        return Viewer(request).render("dag.html", context, 422)
    return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)


@router.post("/dags/{name}/backfill")
async def backfill_form(request: Request, name: str) -> Response:
    form = await operator_form(request)
    ops = ops_of(request)
    context = dag_context(request, name)
    context["backfill_values"] = form
    try:
        start, end = parse_instant(form.get("start", "")), parse_instant(form.get("end", ""))
        limit = int(form["max_active_runs"]) if form.get("max_active_runs") else None
        plan = ops.backfill_plan(name, start, end, batch=form.get("batch") or None,
                                 schedule_aligned=form.get("schedule_aligned") == "on",
                                 reprocess=Reprocess(form.get("reprocess") or "none"),
                                 backwards=form.get("backwards") == "on")
        if form.get("_action") == "create":
            created = ops.backfill(plan, {}, Priority.LOW, limit)
            context = dag_context(request, name)
            context["backfill"] = {"created": len(created), "pending": len(plan.todo) - len(created),
                                   "intervals": [{**i.to_json(), "run_id": i.run_id} for i in plan.intervals]}
        else:
            context["backfill"] = {"preview": True, "todo": len(plan.todo),
                                   "intervals": [i.to_json() for i in plan.intervals]}
    except (ConveyorError, ValueError) as exc:
        context["backfill_error"] = str(exc) if not isinstance(exc, ValueError) or isinstance(
            exc, ConveyorError) else f"start and end must be dates (YYYY-MM-DD) or ISO times ({exc})"
        return Viewer(request).render("dag.html", context, 422)
    return Viewer(request).render("dag.html", context)


@router.post("/dags/{name}/pause")
async def pause_form(request: Request, name: str) -> Response:
    form = await operator_form(request)
    ops_of(request).set_paused(name, form.get("paused") != "false")
    return RedirectResponse(back_to(form, f"/dags/{quote(name)}"), status_code=303)


# --- runs ----------------------------------------------------------------------------------------


def run_context(request: Request, run_id: str, step: str | None, attempt: int | None) -> dict[str, Any]:
    ops = ops_of(request)
    status = ops.status(run_id)
    upstream = ops.step_plans(run_id)
    states = {s["name"]: s["state"] for s in status["steps"]}
    by_name = {s["name"]: s for s in status["steps"]}
    if step not in by_name:
        chosen = (next((s for s in status["steps"] if s["state"] in {"failed", "running", "retrying"}), None)
                  or next((s for s in reversed(status["steps"]) if s["attempts"]), None))
        step = chosen["name"] if chosen else None
    log = None
    if step is not None and by_name[step]["attempts"]:
        attempts = by_name[step]["attempts"]
        number = attempt if attempt and 1 <= attempt <= len(attempts) else attempts[-1]["number"]
        current = next(a for a in attempts if a["number"] == number)
        raw = ops.read_log(run_id, step, number)
        log = {"step": step, "attempt": number, "text": raw.decode("utf-8", errors="replace"), "bytes": len(raw),
               "live": current["ended_at"] is None, "attempts": [a["number"] for a in attempts]}
    return {"run": status, "layout": present.graph_layout(upstream, states),
            "gantt": present.gantt(status["steps"]), "log": log, "selected": step,
            "previous": ops.previous_run(run_id), "title": f"{status['dag']} · {run_id}",
            "ended": status["state"] in {"success", "failed", "cancelled"},
            "rerunnable": any(s["state"] in {"failed", "upstream_failed", "cancelled"} for s in status["steps"])}


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str, step: str | None = None, attempt: int | None = None,
             fragment: str | None = None) -> Response:
    viewer = Viewer(request)
    context = run_context(request, run_id, step, attempt)
    return viewer.render("_run_live.html" if fragment == "live" else "run.html", context)


@router.post("/runs/{run_id}/rerun")
async def rerun_form(request: Request, run_id: str) -> Response:
    form = await operator_form(request)
    mode = form.get("mode", "failed")
    step = form.get("step") or None
    ops_of(request).rerun(run_id, step=step if mode in {"step", "only"} else None, downstream=mode != "only",
                          everything=mode == "all")
    target = f"/runs/{quote(run_id)}" + (f"?step={quote(step)}" if step else "")
    return RedirectResponse(target, status_code=303)


@router.post("/runs/{run_id}/cancel")
async def cancel_form(request: Request, run_id: str) -> Response:
    form = await operator_form(request)
    ops_of(request).cancel(run_id, form.get("step") or None)
    return RedirectResponse(f"/runs/{quote(run_id)}", status_code=303)


@router.post("/runs/{run_id}/again")
async def again_form(request: Request, run_id: str) -> Response:
    """Trigger a new run of the same DAG with the same params (their stored, typed values)."""
    await operator_form(request)
    ops = ops_of(request)
    old = ops.status(run_id)
    params = {k: v for k, v in old["params"].items() if v is not None}
    new = ops.trigger(old["dag"], params, Priority(old["priority"]) if old.get("priority") else None)
    return RedirectResponse(f"/runs/{quote(new)}", status_code=303)


@router.get("/runs/{a}/diff/{b}")
def diff_page(request: Request, a: str, b: str) -> Response:
    viewer = Viewer(request)
    data = ops_of(request).diff(a, b)
    return viewer.render("diff.html", {"diff": data, "title": f"{a} vs {b}"})


@router.get("/stats")
def stats_page(request: Request, dag: str | None = None, since: str = "7d", by: str = "dag") -> Response:
    from scheduler.server.api import since_epoch

    viewer = Viewer(request)
    data = ops_of(request).stats(dag or None, since_epoch(since), by, 8)
    worst = max([g["failure_rate"] or 0 for g in data["groups"]] + [0.0001])
    slowest = max([g["p95_seconds"] or 0 for g in data["groups"]] + [0.0001])
    return viewer.render("stats.html", {"stats": data, "title": "Stats", "dag": dag or "", "since": since, "by": by,
                                        "worst": worst, "slowest": slowest,
                                        "dag_names": [d["name"] for d in ops_of(request).dags(last=1)]})
