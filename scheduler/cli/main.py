"""``ctl``: the command line. Data goes to stdout, talk to stderr.

Exit codes: 0 success, 1 invalid input or a failed run, 2 usage (a bad option or setting), 3 unexpected
error, 130 Ctrl-C. Every expected failure is a ConveyorError carrying its exit code (ConfigError: 2).

Start-up is part of the interface: the command modules import at their top only what their options
need (typer, enums), and everything else (Redis, RQ, Docker, Kubernetes, jsonschema, holidays, rich,
FastAPI) inside the command that uses it, so ``ctl --help`` and ``ctl validate`` start like a native tool
(tests/test_startup.py keeps them that way). Help is click's plain text: rich's would cost 0.2 s.
"""

from __future__ import annotations

import sys

import typer

from scheduler.cli import (
    backfill,
    calendars,
    catalog,
    dags,
    data,
    datasets,
    diff,
    local,
    observe,
    pools,
    render,
    reruns,
    runs,
    scheduling,
    server,
    workers,
)
from scheduler.errors import ConveyorError
from scheduler.settings import debug_enabled


class _Commands(typer.core.TyperGroup):
    """Lists every command with its whole summary (its help's first sentence), wrapped rather than cut."""

    def format_commands(self, ctx: typer.Context, formatter: typer._click.HelpFormatter) -> None:  # type: ignore[override]
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="ctl",
    cls=_Commands,
    help="Conveyor: DAGs of containers, scheduled like cron, run through Redis and RQ.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("conveyor")
        except PackageNotFoundError:  # run from a source tree that was never installed
            number = "unknown"
        print(f"ctl (conveyor) {number}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print ctl's version and exit."),
) -> None:
    """Conveyor: DAGs of containers, scheduled like cron, run through Redis and RQ."""
app.command()(dags.validate)
app.command()(dags.submit)
app.command()(runs.trigger)
app.command(name="runs")(runs.runs)
app.command()(runs.status)
app.command()(runs.logs)
app.command()(runs.cancel)
app.command()(data.outputs)
app.command(name="run")(local.run)
app.command()(render.render)
app.command()(workers.worker)
app.command(name="workers")(workers.workers)
app.command()(scheduling.scheduler)
app.command()(scheduling.pause)
app.command()(scheduling.unpause)
app.command(name="next")(scheduling.next_)
app.command()(backfill.backfill)
app.command()(reruns.rerun)
app.command()(observe.stats)
app.command()(observe.graph)
app.command()(diff.diff)
app.command()(server.server)
app.add_typer(calendars.calendar_app, name="calendar")
app.add_typer(calendars.outage_app, name="outage")
app.add_typer(pools.pool_app, name="pool")
app.add_typer(datasets.dataset_app, name="dataset")
app.add_typer(catalog.dags_app, name="dags")


def main(argv: list[str] | None = None) -> int:
    """Entry point: expected failures print one message; only CONVEYOR_DEBUG=1 shows tracebacks."""
    try:
        # Without standalone mode click returns typer.Exit's code instead of exiting.
        code = app(args=argv, standalone_mode=False, prog_name="ctl")
        return code if isinstance(code, int) else 0
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except ConveyorError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    except typer.exceptions.TyperException as exc:  # typer's own click: usage errors and the like
        show = getattr(exc, "show", None)
        if show:
            show()
        return int(getattr(exc, "exit_code", 2))
    except Exception as exc:
        if _is_redis_error(exc):
            print(f"Redis error: {exc}", file=sys.stderr)
            return 1
        if debug_enabled():
            raise
        print(f"unexpected error: {type(exc).__name__}: {exc} (set CONVEYOR_DEBUG=1 for details)", file=sys.stderr)
        return 3


def _is_redis_error(exc: Exception) -> bool:
    """Without importing redis: a command that raised one has imported it already."""
    redis = sys.modules.get("redis")
    return redis is not None and isinstance(exc, redis.RedisError)


if __name__ == "__main__":
    sys.exit(main())
