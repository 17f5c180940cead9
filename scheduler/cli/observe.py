"""Observing: ``ctl stats`` and ``ctl graph``, and the ``--metrics-port``/``--log-format`` options that
``ctl scheduler`` and ``ctl worker`` share."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from scheduler.cli import common, views
from scheduler.errors import ConveyorError, InputError, NotFoundError, UnavailableError

if TYPE_CHECKING:
    from scheduler.settings import Settings
    from scheduler.store import RunStore


class LogFormat(StrEnum):
    text = "text"
    json = "json"


class LogLevel(StrEnum):
    DEBUG = "DEBUG"
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"


class GraphFormat(StrEnum):
    ascii = "ascii"
    mermaid = "mermaid"
    dot = "dot"


LogFormatOption = typer.Option(LogFormat.text, "--log-format", envvar="CONVEYOR_LOG_FORMAT",
                               help="text for people, json for log collectors (one object per line).")
LogLevelOption = typer.Option(LogLevel.INFO, "--log-level", case_sensitive=False,
                              help="DEBUG, INFO, WARNING or ERROR.")
MetricsPortOption = typer.Option(None, "--metrics-port", envvar="CONVEYOR_METRICS_PORT", min=0, max=65535,
                                 help="Serve Prometheus metrics on this port (default and 0: off).")


def start_metrics(store: RunStore, current: Settings, port: int | None, addr: str = "0.0.0.0") -> Any:
    """Start the exporter when a port is given; a busy port is one clear error."""
    if not port:
        return None
    from scheduler import metrics

    try:
        return metrics.start(store, current.connect(decode=False), port, addr)
    except OSError as exc:
        raise ConveyorError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from None


# --- ctl stats ----------------------------------------------------------------------------------


def _since(value: str) -> float:
    from scheduler.stats import since_epoch

    try:
        return since_epoch(value)
    except InputError:
        raise typer.BadParameter(f"{value!r} is neither a duration (7d, 12h) nor a date/time",
                                 param_hint="--since") from None


def stats(
    dag: str | None = typer.Argument(None, help="Only this DAG's runs."),
    since: str = typer.Option("7d", "--since", help="Runs created in this last duration (7d, 12h) or since a "
                              "date/time (UTC unless an offset)."),
    by: str = typer.Option("dag", "--by", help="Group by dag, step, host or tag:KEY."),
    top: int = typer.Option(5, "--top", min=1, help="How many failing hosts and tag values to show."),
    output: common.Output = common.OutputOption,
) -> None:
    """Failure rates, retries, p50/p95 durations, attempts far slower than usual, failing hosts and tags."""
    from scheduler import stats as history

    try:
        history.check_by(by)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--by") from None
    start = _since(since)
    store = common.store()
    if dag and dag not in store.dag_names():
        from scheduler.errors import NotFoundError

        raise NotFoundError(store.unknown_dag(dag))
    data = history.report(history.load(store, start, dag), by, now=time.time(), since=start, top=top)
    if output == common.Output.json:
        views.print_json(data)
        return
    for renderable in stats_tables(data):
        views.out.print(renderable)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f}s" if value < 60 else f"{int(value // 60)}m{int(value % 60):02d}s"


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:.1%}"


def stats_tables(data: dict[str, Any]) -> list[Any]:
    from rich.table import Table
    from rich.text import Text

    states = ", ".join(f"{k} {v}" for k, v in data["run_states"].items()) or "none"
    shown: list[Any] = [f"{data['runs']} runs since {data['since']} ({states})"]
    unit = {"dag": "runs", "host": "attempts"}.get(data["by"], "steps")
    table = Table(title=f"by {data['by']}", title_justify="left")
    for column in (data["by"], unit, "failed", "failure rate", "retries", "p50", "p95"):
        table.add_column(column, justify="left" if column == data["by"] else "right")
    for row in data["groups"]:
        table.add_row(row["key"], str(row["count"]), Text(str(row["failed"]), style="red" if row["failed"] else ""),
                      _rate(row["failure_rate"]), str(row["retries"]), _seconds(row["p50_seconds"]),
                      _seconds(row["p95_seconds"]))
    shown.append(table)
    if data["slow_attempts"]:
        slow = Table(title="far slower than their own history", title_justify="left")
        for column in ("run_id", "step", "attempt", "state", "took", "p50", "threshold", "samples"):
            slow.add_column(column)
        for row in data["slow_attempts"]:
            slow.add_row(row["run_id"], f"{row['dag']}.{row['step']}", str(row["attempt"]), views.styled(row["state"]),
                         f"{_seconds(row['seconds'])} (x{row['ratio']})", _seconds(row["p50_seconds"]),
                         _seconds(row["threshold_seconds"]), str(row["samples"]))
        shown.append(slow)
    if data["failing_hosts"]:
        hosts = Table(title="hosts with the most failed attempts", title_justify="left")
        for column in ("host", "failures", "attempts", "failure rate"):
            hosts.add_column(column)
        for row in data["failing_hosts"]:
            hosts.add_row(row["host"], str(row["failures"]), str(row["attempts"]), _rate(row["failure_rate"]))
        shown.append(hosts)
    if data["failing_tags"]:
        tags = Table(title="tag values with the most failed steps", title_justify="left")
        for column in ("tag", "failures", "steps", "failure rate"):
            tags.add_column(column)
        for row in data["failing_tags"]:
            tags.add_row(f"{row['tag']}={row['value']}", str(row["failures"]), str(row["steps"]),
                         _rate(row["failure_rate"]))
        shown.append(tags)
    if data.get("sla_misses"):
        misses = Table(title=f"missed SLAs and deadlines ({len(data['sla_misses'])})", title_justify="left")
        for column in ("run", "dag", "step"):
            misses.add_column(column)
        for row in data["sla_misses"][:20]:
            misses.add_row(row["run_id"], row["dag"], row["step"] or "(run deadline)")
        shown.append(misses)
    return shown


# --- ctl graph ----------------------------------------------------------------------------------


def graph(
    dag: str | None = typer.Argument(None, help="A submitted DAG's name, or a DAG file (with --datasets: "
                                     "optional, only that DAG's datasets)."),
    fmt: GraphFormat = typer.Option(GraphFormat.ascii, "--format", "-f", help="ascii, mermaid or dot."),
    datasets: bool = typer.Option(False, "--datasets", help="Draw the submitted DAGs and their datasets: "
                                  "producer DAG -> dataset -> consumer DAG."),
) -> None:
    """Draw a DAG's steps and dependencies (ASCII tree, Mermaid or Graphviz dot), or with --datasets the
    DAGs and the datasets between them."""
    from scheduler import graphviz
    from scheduler.service import load_version, store_calendars
    from scheduler.spec import load_file

    if datasets:
        _dataset_graph(dag, fmt)
        return
    if dag is None:
        raise ConveyorError("name a DAG (or a DAG file) to draw, or use --datasets")
    path = Path(dag)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        calendars: dict[str, Any] = {}
        with contextlib.suppress(UnavailableError):  # a file can be drawn without Redis (not with a bad REDIS_URL)
            store = common.store_if_up()
            calendars = store_calendars(store) if store is not None else {}
        spec, _ = load_file(path, calendars)
    else:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", dag):
            raise ConveyorError(f"'{dag}' is neither a DAG file nor a DAG name")
        spec, _ = load_version(common.store(), dag)
    # A mapped step (for_each) is drawn as STEP[*]: its instances, known only at run time.
    shown = {name: f"{name}[*]" if step.for_each is not None else name for name, step in spec.steps.items()}
    upstream = {shown[name]: [shown[d] for d in step.depends_on] for name, step in spec.steps.items()}
    text = graphviz.render(spec.name, upstream, fmt.value)
    sys.stdout.write(text)
    sys.stdout.flush()


def _dataset_graph(dag: str | None, fmt: GraphFormat) -> None:
    """``ctl graph --datasets``: every submitted DAG's latest version (one that cannot load is left out,
    with a note), with its datasets."""
    from scheduler import lineage
    from scheduler.service import load_version

    store = common.store()
    specs = {}
    for name in store.dag_names():
        try:
            specs[name], _ = load_version(store, name)
        except ConveyorError as exc:
            views.err.print(f"{name}: left out: {exc}", markup=False)
    if dag is not None and dag not in specs:
        raise NotFoundError(f"no DAG '{dag}'; DAGs: {', '.join(sorted(specs)) or '(none)'}")
    sys.stdout.write(lineage.render(lineage.lineage(specs, dag), fmt.value))
    sys.stdout.flush()
