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

if TYPE_CHECKING:
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
    observe.start_metrics(store, current, metrics_port)
    folder = None
    if dags:
        from scheduler.dagsync import DagFolder

        folder = DagFolder(store, dags)
        folder.sync()  # at once, so that the first pass sees the folder; bad files are import errors
    clock: Clock = FakeClock(_aware(fake_clock), clock_speed) if fake_clock else Clock()
    daemon = Scheduler(Engine(store, common.dispatcher(current)), clock=clock, lease_ttl=lease_ttl,
                       history_days=history / DAY, lookahead=lookahead)
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
    from scheduler.agenda import Agenda

    Agenda(common.store()).set_paused(dag, True)
    views.out.print(f"{dag}: paused")


def unpause(dag: str = typer.Argument(..., help="A submitted DAG's name.")) -> None:
    """Create scheduled runs of a DAG again (missed ones follow the DAG's catchup setting)."""
    from scheduler.agenda import Agenda

    Agenda(common.store()).set_paused(dag, False)
    views.out.print(f"{dag}: active")


def next_(
    dag: str = typer.Argument(..., help="A submitted DAG's name, or a DAG file."),
    count: int = typer.Option(10, "-n", "--count", min=1, max=1000, help="How many fire times."),
    start: datetime | None = typer.Option(None, "--from", help="Start here instead of now (UTC unless an offset)."),
    output: common.Output = common.OutputOption,
) -> None:
    """Show the next fire times and every candidate time that was dropped, and why."""
    from scheduler.spec import load_file
    from scheduler.upcoming import upcoming

    path = Path(dag)
    if path.suffix in {".yaml", ".yml"} or path.exists():
        calendars, outages = {}, []
        try:
            store = common.store_if_up()
            if store is not None:  # a file can be checked without Redis: named calendars and global outages
                from scheduler.agenda import Agenda  # then do not apply (nor is the store layer imported)

                agenda = Agenda(store)
                calendars, outages = agenda.calendars(), agenda.global_outages()
        except UnavailableError:
            pass
        spec, _ = load_file(path, calendars)
    else:
        from scheduler.agenda import Agenda
        from scheduler.service import load_version, store_calendars

        store = common.store()
        calendars = store_calendars(store)
        spec, _ = load_version(store, dag, calendars=calendars)
        outages = Agenda(store).global_outages()
    after = _aware(start) if start else datetime.now(UTC)
    found = upcoming(spec, calendars, outages, after, count)
    schedule, fires, dropped = found.schedule, found.fires, found.dropped
    data = found.to_json()
    if output == common.Output.json:
        views.print_json(data)
        return
    events = [(f.utc, f.logical_date.isoformat(), f.utc.isoformat(),
               f"deferred to {f.due.isoformat()} by outage {f.deferred_by}" if f.deferred_by else "") for f in fires]
    events += [(d.utc, d.at.isoformat(), d.utc.isoformat(), f"dropped: {d.reason}") for d in dropped]
    # Hundreds of rows (every dropped candidate): plain aligned text, which rich takes 0.2 s to lay out.
    views.plain_table(f"{spec.name}: next {len(fires)} fire times ({schedule.tz})", ("local time", "UTC", "note"),
                      [row[1:] for row in sorted(events)])


def _aware(value: datetime | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    return value if value.tzinfo else value.replace(tzinfo=ZoneInfo("UTC"))
