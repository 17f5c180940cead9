"""``ctl dags``: the DAGs Conveyor knows (list, show, delete) and ``ctl dags sync DIR``."""

from __future__ import annotations

from pathlib import Path

import typer

from scheduler.cli import common, views

dags_app = typer.Typer(help="DAGs: list them (the default), show one, delete one, sync a folder.",
                       invoke_without_command=True)


@dags_app.callback()
def dags_list(ctx: typer.Context, output: common.Output = common.OutputOption) -> None:
    """List DAGs: version, file, schedule in words, timezone, paused, next fire, last run, problems."""
    if ctx.invoked_subcommand is not None:
        return
    remote = common.remote()
    if remote:
        rows, orphans = remote.dags()
    else:
        from scheduler.catalog import dag_rows

        rows, orphans = dag_rows(common.store())
    if output == common.Output.json:
        views.print_json({"dags": rows, "import_errors": orphans})
        return
    from rich.table import Table

    table = Table(title_justify="left", show_lines=False)
    for column in ("DAG", "version", "schedule", "timezone", "next fire", "last run", "file"):
        table.add_column(column, overflow="fold")
    for row in rows:
        flags = [] if row["active"] else ["deactivated: its file is gone"]
        flags += ["paused"] if row["paused"] else []
        schedule = row["schedule_words"] + (f" ({', '.join(flags)})" if flags else "")
        last = row["last_run"]
        table.add_row(row["name"], str(row["version"]), schedule, row["timezone"] or "-",
                      row["next_fire"] or "-", f"{last['state']} {last['run_id']}" if last else "-",
                      row["file"] or "-")
    views.out.print(table)
    for row in rows:
        if row["import_error"]:
            views.err.print(f"{row['name']}: import error (running version {row['version']}):", markup=False,
                            highlight=False)
            for problem in row["import_error"]["problems"]:
                views.err.print(f"  {problem}", markup=False, highlight=False)
        if row["scheduler_error"]:
            views.err.print(f"{row['name']}: the scheduler reports: {row['scheduler_error']}", markup=False,
                            highlight=False)
    for error in orphans:
        views.err.print(f"{error['file']}: import error:", markup=False, highlight=False)
        for problem in error["problems"]:
            views.err.print(f"  {problem}", markup=False, highlight=False)


@dags_app.command("show")
def dags_show(name: str = typer.Argument(..., help="The DAG's name."),
              output: common.Output = common.OutputOption) -> None:
    """Show a DAG's stored version: where it came from (file, git commit) and its source."""
    from scheduler.catalog import dag_detail

    detail = dag_detail(common.store(), name)
    if output == common.Output.json:
        views.print_json(detail)
        return
    for key in ("name", "version", "file", "sha256", "git_commit", "submitted_at", "schedule_words", "timezone",
                "next_fire", "paused", "active"):
        views.out.print(f"{key}: {detail.get(key)}", markup=False, highlight=False)
    if detail["import_error"]:
        views.out.print("import error: " + "; ".join(detail["import_error"]["problems"]), markup=False)
    views.out.print("---", markup=False)
    views.out.print(detail["source"], markup=False, highlight=False, end="")


@dags_app.command("delete")
def dags_delete(name: str = typer.Argument(..., help="The DAG's name."),
                yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
                purge: bool = typer.Option(False, "--purge", help="Also delete its ended runs (default: keep).")
                ) -> None:
    """Remove a DAG's definition and schedule. History is kept unless --purge. (Delete its file too, if it
    lives in a synced folder: a changed file comes back.)"""
    from scheduler.catalog import delete_dag

    store = common.store()
    if not yes:
        what = "its definition, schedule and every ended run" if purge else "its definition and schedule"
        if not views.err.is_terminal or not typer.confirm(f"Delete DAG {name} ({what})?", err=True):
            views.err.print("not deleted (pass --yes to delete without asking)")
            raise typer.Exit(1)
    deleted = delete_dag(store, name, purge=purge)
    views.out.print(f"DAG {name}: deleted" + (f", {deleted} run(s) purged" if purge else ", history kept"),
                    highlight=False)


@dags_app.command("sync")
def dags_sync(folder: Path = typer.Argument(..., help="The folder of DAG files (searched recursively)."),
              output: common.Output = common.OutputOption) -> None:
    """Sync a folder once: submit new and changed files, record import errors, deactivate DAGs whose file
    is gone. Exit 1 when a file has problems (the others are synced all the same)."""
    from scheduler.dagsync import DagFolder

    results = DagFolder(common.store(), folder).sync()
    if output == common.Output.json:
        views.print_json([r.to_json() for r in results])
    else:
        for r in results:
            if r.action == "import_error":
                views.err.print(f"{r.file}: import error", markup=False, highlight=False)
                for problem in r.problems:
                    views.err.print(f"  {problem}", markup=False, highlight=False)
            else:
                what = {"new_version": f"new version {r.version}", "unchanged": f"unchanged, version {r.version}",
                        "deactivated": "deactivated (file removed)"}[r.action]
                views.out.print(f"{r.file}: {r.dag}: {what}", markup=False, highlight=False)
    if any(r.action == "import_error" for r in results):
        raise typer.Exit(1)
