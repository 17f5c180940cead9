"""Commands about time: the scheduler daemon, pause/unpause, and ``ctl next``."""

from __future__ import annotations

import logging
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import typer

from scheduler.cli import common, observe, views
from scheduler.errors import UnavailableError
from scheduler.leader import DEFAULT_TTL
from scheduler.settings import DEFAULT_LOOKAHEAD

if TYPE_CHECKING:  # the rest is imported by the command that uses it (test_startup keeps --help light)
    from scheduler.clock import Clock

DAY = 86400.0
HISTORY_FORMS = "a number of days like 30 or 0.5, or a duration like 12h or 2w"


def scheduler(
    dags: Path | None = typer.Option(None, "--dags", envvar="CONVEYOR_DAGS",
                                     help="Keep this folder's DAG files (recursively) in sync: changes within "
                                          "--sync-interval, import errors recorded, removed files deactivate."),
    sync_interval: float = typer.Option(2.0, "--sync-interval", envvar="CONVEYOR_SYNC_INTERVAL",
                                        parser=common.Seconds(minimum=0.1), metavar="DURATION",
                                        help="How often to look at the --dags folder (2s, or seconds)."),
    lease_ttl: float = typer.Option(DEFAULT_TTL, "--lease-ttl", envvar="CONVEYOR_LEASE_TTL",
                                    parser=common.Seconds(minimum=1.0), metavar="DURATION",
                                    help="Leader lease (10s, 1m, or seconds); a standby takes over when it expires."),
    fake_clock: datetime | None = typer.Option(None, "--fake-clock", hidden=True,
                                               help="Testing: start the clock here (UTC unless an offset is given)."),
    clock_speed: float = typer.Option(1.0, "--clock-speed", hidden=True, help="Testing: fake clock speed."),
    lookahead: float = typer.Option(DEFAULT_LOOKAHEAD, "--lookahead", envvar="CONVEYOR_LOOKAHEAD",
                                    parser=common.Seconds(), metavar="DURATION",
                                    help="Stage runs up to this long (60s, 2m, or seconds) before they are due, so "
                                         "that they reach the queues at their due time even with thousands due at "
                                         "once (0: off)."),
    log_level: observe.LogLevel = observe.LogLevelOption,
    log_format: observe.LogFormat = observe.LogFormatOption,
    metrics_port: int | None = observe.MetricsPortOption,
    history: float = typer.Option(30.0, "--history-days", envvar="CONVEYOR_HISTORY_DAYS",
                                  parser=common.Seconds(plain_unit=DAY, forms=HISTORY_FORMS), metavar="DAYS",
                                  help="Delete ended runs older than this many days, or a duration like 12h "
                                       "(0: keep all)."),
) -> None:
    """Run the scheduler: create scheduled runs when due. Any number may run; one leads."""
    from scheduler import logs
    from scheduler.clock import Clock, FakeClock
    from scheduler.daemon import Scheduler
    from scheduler.engine import Engine

    logs.setup(log_level.value, log_format.value)
    current = common.settings()
    store = common.store(current)
    exporter = observe.start_metrics(store, current, metrics_port)
    folder = None
    if dags:
        from scheduler.dagsync import DagFolder

        folder = DagFolder(store, dags)
        folder.sync()  # at once, so that the first pass sees the folder; bad files are import errors
    clock: Clock = FakeClock(_aware(fake_clock), clock_speed) if fake_clock else Clock()
    daemon = Scheduler(Engine(store, common.dispatcher(current)), clock=clock, lease_ttl=lease_ttl,
                       history_days=history / DAY, lookahead=lookahead)
    if exporter is not None:
        from scheduler.metrics import watch_leadership

        watch_leadership(exporter.registry, lambda: daemon.leading)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: daemon.stop.set())
    logging.getLogger("conveyor.scheduler").info("scheduler %s started (Redis %s)", daemon.lease.identity,
                                                 current.safe_url)
    # The release thread must get the interpreter within a millisecond of a due time, even while the
    # main loop is busy planning (the default switch interval is 5 ms).
    sys.setswitchinterval(0.001)
    if folder is not None:
        folder.run_in_thread(daemon.stop, sync_interval)
    daemon.serve()


def pause(dag: str = typer.Argument(..., help="A submitted DAG's name.")) -> None:
    """Stop creating scheduled runs of a DAG (runs already created go on)."""
    set_paused(dag, True)
    views.out.print(f"{dag}: paused")


def unpause(dag: str = typer.Argument(..., help="A submitted DAG's name.")) -> None:
    """Create scheduled runs of a DAG again (missed ones follow the DAG's catchup setting)."""
    set_paused(dag, False)
    views.out.print(f"{dag}: active")


def set_paused(dag: str, paused: bool) -> None:
    remote = common.remote()
    if remote:
        remote.set_paused(dag, paused)
    else:
        from scheduler.agenda import Agenda

        Agenda(common.store()).set_paused(dag, paused)


def next_(
    dag: str = typer.Argument(..., help="A submitted DAG's name, or a DAG file."),
    count: int = typer.Option(10, "-n", "--count", min=1, max=1000, help="How many fire times."),
    start: datetime | None = typer.Option(None, "--from", help="Start here instead of now (UTC unless an offset)."),
    explain: bool = typer.Option(False, "--explain", help="List every dropped candidate time with its reason, "
                                 "not only how many were dropped for each reason."),
    output: common.Output = common.OutputOption,
) -> None:
    """Show the next fire times, and how many candidate times were dropped and why (--explain: each one)."""
    from scheduler.spec import load_file
    from scheduler.upcoming import dropped_summary, upcoming

    path = Path(dag)
    after = _aware(start) if start else None
    remote = common.remote()
    is_file = path.suffix in {".yaml", ".yml"} or path.exists()
    if remote and not is_file:
        name, data = dag, remote.next_fires(dag, count, after)
    else:
        if is_file:
            calendars, outages = {}, []
            try:
                if remote:  # a team member's ctl has no Redis to ask
                    raise UnavailableError("through ctl server")
                store = common.store_if_up()  # one quick try: no Redis is an instant answer, not retries
                if store is not None:
                    from scheduler.agenda import Agenda

                    agenda = Agenda(store)
                    calendars, outages = agenda.calendars(), agenda.global_outages()
            except UnavailableError:
                pass  # a file can be checked without Redis; named calendars and global outages then do not apply
            spec, _ = load_file(path, calendars)
        else:
            from scheduler.agenda import Agenda
            from scheduler.service import load_version, store_calendars

            store = common.store()
            calendars = store_calendars(store)
            spec, _ = load_version(store, dag, calendars=calendars)
            outages = Agenda(store).global_outages()
        name, data = spec.name, upcoming(spec, calendars, outages, after or datetime.now(UTC), count).to_json()
    if output == common.Output.json:
        views.print_json(data)
        return
    events = [(datetime.fromisoformat(f["utc"]), f["at"], f["utc"],
               f"deferred to {f['due']} by outage {f['deferred_by']}" if f.get("deferred_by") else "")
              for f in data["fires"]]
    if explain:
        events += [(datetime.fromisoformat(d["utc"]), d["at"], d["utc"], f"dropped: {d['reason']}")
                   for d in data["dropped"]]
    # Plain aligned text: with --explain, hundreds of rows, which rich takes 0.2 s to lay out.
    views.plain_table(f"{name}: next {len(data['fires'])} fire times ({data['timezone']})",
                      ("local time", "UTC", "note"), [row[1:] for row in sorted(events)])
    if data["dropped"]:
        hint = "" if explain else " (--explain lists them)"
        summary = dropped_summary(len(data["dropped"]), data["dropped_by_reason"].items())
        views.plain(f"{summary}{hint}")


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo("UTC"))
