"""Pure helpers the pages use to show data: schedules in words, durations, the graph laid out in layers,
and the geometry of a Gantt chart. No I/O; everything here is plain data in, plain data out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

DAYS = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
DAY_NAMES = {d[:3].lower(): i for i, d in enumerate(DAYS)}
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ORDINAL = {1: "first", 2: "second", 3: "third", -1: "last", -2: "second to last", -3: "third to last"}

NODE_W, NODE_H, COL_GAP, ROW_GAP, PAD = 168, 36, 64, 14, 8


# --- schedules in words ---------------------------------------------------------------------------


def _num(field: str) -> int | None:
    return int(field) if field.isdigit() else None


def _days(field: str) -> str | None:
    def day(text: str) -> int | None:
        text = text.lower()
        if text.isdigit():
            return int(text) % 7
        return DAY_NAMES.get(text[:3])

    if field == "*":
        return None
    if "-" in field and "," not in field and "/" not in field:
        lo, hi = (day(x) for x in field.split("-", 1))
        if lo is not None and hi is not None:
            return f"{DAYS[lo]} to {DAYS[hi]}"
    names = [day(x) for x in field.split(",")]
    if all(n is not None for n in names):
        return ", ".join(DAYS[n] for n in names if n is not None)
    return f"weekdays {field}"


def cron_words(cron: str) -> str:
    """``0 17 * * 1-5`` → ``at 17:00, Monday to Friday``; anything unusual stays as written."""
    parts = cron.split()
    if len(parts) not in (5, 6):
        return cron
    minute, hour, dom, month, dow = parts[:5]
    second = parts[5] if len(parts) == 6 else "0"
    when = None
    m = _num(minute)
    if minute == "*" and hour == "*":
        when = "every minute"
    elif minute.startswith("*/") and hour == "*" and minute[2:].isdigit():
        when = f"every {minute[2:]} minutes"
    elif m is not None and hour == "*":
        when = f"every hour at :{m:02d}"
    elif m is not None and hour.startswith("*/") and hour[2:].isdigit():
        when = f"every {hour[2:]} hours at :{m:02d}"
    elif m is not None and all(x.isdigit() for x in hour.split(",")):
        when = "at " + ", ".join(f"{int(x):02d}:{m:02d}" for x in hour.split(","))
    if when is None or second not in ("0", "00"):
        return cron
    days = []
    if dom != "*":
        days.append(f"on day {dom} of the month" if dom.replace(",", "").isdigit() else f"days {dom}")
    if month != "*":
        days.append("in " + ", ".join(MONTHS[int(x) - 1] for x in month.split(",")) if all(
            x.isdigit() and 1 <= int(x) <= 12 for x in month.split(",")) else f"months {month}")
    named = _days(dow)
    if named:
        days.append(named)
    if not days and when.startswith("at "):
        days.append("every day")
    return ", ".join([when, *days])


def schedule_words(schedule: Mapping[str, Any] | None) -> str:
    """A DAG's ``schedule:`` block in one sentence (crons, business day, calendar, timezone)."""
    if not schedule:
        return "manual only"
    crons = schedule.get("cron")
    text = "; ".join(cron_words(c) for c in (crons if isinstance(crons, list) else [crons]) if c)
    extra = []
    if schedule.get("business_day"):
        n = int(schedule["business_day"])
        extra.append(f"only the {ORDINAL.get(n, str(n))} business day of the month")
    calendar = schedule.get("calendar")
    if calendar:
        extra.append(f"{calendar if isinstance(calendar, str) else 'own'} calendar")
    if schedule.get("outages"):
        extra.append("outages: " + ", ".join(map(str, schedule["outages"])))
    extra.append(str(schedule.get("timezone") or "UTC"))
    return text + " (" + "; ".join(extra) + ")"


# --- times ---------------------------------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def seconds_between(start: str | None, end: str | None, now: datetime | None = None) -> float | None:
    begin = parse_time(start)
    if begin is None:
        return None
    finish = parse_time(end) or now or datetime.now(UTC)
    return max(0.0, (finish - begin).total_seconds())


def human_seconds(value: float | None) -> str:
    if value is None:
        return ""
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{int(value // 60)}m {int(value % 60):02d}s"
    return f"{int(value // 3600)}h {int(value % 3600 // 60):02d}m"


def relative(value: str | None, now: datetime | None = None) -> str:
    """``in 3h 10m`` or ``5m 02s ago``."""
    at = parse_time(value)
    if at is None:
        return ""
    delta = (at - (now or datetime.now(UTC))).total_seconds()
    return f"in {human_seconds(delta)}" if delta >= 0 else f"{human_seconds(-delta)} ago"


# --- graph ---------------------------------------------------------------------------------------


def layers(upstream: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Steps in columns by longest path from a root; within a column ordered by the mean row of their
    upstream steps (the barycenter heuristic), which keeps most edges from crossing."""
    depth: dict[str, int] = {}

    def depth_of(name: str) -> int:
        stack = [name]
        while stack:
            node = stack[-1]
            pending = [u for u in upstream.get(node, ()) if u in upstream and u not in depth]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            depth[node] = 1 + max((depth[u] for u in upstream.get(node, ()) if u in upstream), default=-1)
        return depth[name]

    for name in upstream:
        depth_of(name)
    columns: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for name in upstream:
        columns[depth[name]].append(name)
    row: dict[str, float] = {}
    for column in columns:
        column.sort(key=lambda n: (sum(row[u] for u in upstream[n] if u in row) / max(1, len(upstream[n]))
                                   if upstream[n] else 0.0))
        for i, name in enumerate(column):
            row[name] = i
    return columns


def graph_layout(upstream: Mapping[str, Sequence[str]], states: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Boxes and edges of a left-to-right layered drawing, in SVG user units."""
    columns = layers(upstream)
    tallest = max((len(c) for c in columns), default=0)
    height = PAD * 2 + tallest * NODE_H + max(0, tallest - 1) * ROW_GAP
    nodes, where = [], {}
    for ci, column in enumerate(columns):
        span = len(column) * NODE_H + max(0, len(column) - 1) * ROW_GAP
        top = (height - span) / 2
        for ri, name in enumerate(column):
            x, y = PAD + ci * (NODE_W + COL_GAP), top + ri * (NODE_H + ROW_GAP)
            where[name] = (x, y)
            label = name if len(name) <= 20 else name[:19] + "…"
            nodes.append({"name": name, "label": label, "x": x, "y": y, "w": NODE_W, "h": NODE_H,
                          "state": (states or {}).get(name, "none")})
    edges = []
    for name, ups in upstream.items():
        for up in ups:
            if up not in where:
                continue
            (x1, y1), (x2, y2) = where[up], where[name]
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            mid = (sx + ex) / 2
            edges.append({"d": f"M{sx:.1f},{sy:.1f} C{mid:.1f},{sy:.1f} {mid:.1f},{ey:.1f} {ex:.1f},{ey:.1f}",
                          "state": (states or {}).get(up, "none")})
    width = PAD * 2 + len(columns) * NODE_W + max(0, len(columns) - 1) * COL_GAP
    return {"nodes": nodes, "edges": edges, "width": max(width, 1), "height": max(height, 1)}


# --- Gantt ---------------------------------------------------------------------------------------

GANTT_LABEL, GANTT_ROW, GANTT_WIDTH, GANTT_RIGHT = 150, 24, 900, 36


def gantt(steps: Sequence[Mapping[str, Any]], now: datetime | None = None) -> dict[str, Any] | None:
    """One row per step, one bar per attempt, on a shared time axis from the first start to the last end."""
    now = now or datetime.now(UTC)
    spans = []
    for step in steps:
        for a in step["attempts"]:
            start = parse_time(a.get("started_at"))
            if start is not None:
                spans.append((start, parse_time(a.get("ended_at")) or now))
    if not spans:
        return None
    first = min(s for s, _ in spans)
    total = max(0.001, max((e - first).total_seconds() for _, e in spans))
    scale = (GANTT_WIDTH - GANTT_LABEL - GANTT_RIGHT) / total
    rows, bars = [], []
    for i, step in enumerate(steps):
        y = i * GANTT_ROW
        rows.append({"name": step["name"], "y": y + GANTT_ROW / 2 + 4, "line": y + GANTT_ROW})
        for a in step["attempts"]:
            start = parse_time(a.get("started_at"))
            if start is None:
                continue
            end = parse_time(a.get("ended_at")) or now
            x = GANTT_LABEL + (start - first).total_seconds() * scale
            bars.append({"x": round(x, 1), "y": y + 4, "w": round(max(2.0, (end - start).total_seconds() * scale), 1),
                         "h": GANTT_ROW - 8, "state": a.get("state") or "running", "step": step["name"],
                         "number": a.get("number"), "seconds": human_seconds((end - start).total_seconds())})
    ticks = []
    for k in range(5):
        seconds = total * k / 4
        ticks.append({"x": round(GANTT_LABEL + seconds * scale, 1), "label": "+" + human_seconds(seconds)})
    return {"rows": rows, "bars": bars, "ticks": ticks, "width": GANTT_WIDTH,
            "height": len(steps) * GANTT_ROW + 22, "axis": len(steps) * GANTT_ROW + 16, "label_x": GANTT_LABEL}
