"""``ctl pool``: named slots that limit how many steps of a kind run at once."""

from __future__ import annotations

import typer

from scheduler.cli import common, views

pool_app = typer.Typer(help="Pools: a step with `pool: NAME` runs only while it holds a slot.", no_args_is_help=True)


@pool_app.command("set")
def pool_set(name: str = typer.Argument(..., help="The pool's name."),
             slots: int = typer.Argument(..., min=0, help="How many slots.")) -> None:
    """Define or resize a pool (waiting steps get freed slots at once)."""
    common.engine().set_pool(name, slots)
    views.out.print(f"pool {name}: {slots} slots")


@pool_app.command("list")
def pool_list(output: common.Output = common.OutputOption) -> None:
    """Show pools: slots, slots in use, steps waiting."""
    pools = common.store().pools()
    if output == common.Output.json:
        views.print_json(pools)
        return
    for pool in pools:
        views.out.print(f"{pool['name']}: {pool['used']}/{pool['slots']} used, {pool['waiting']} waiting")


@pool_app.command("remove")
def pool_remove(name: str = typer.Argument(..., help="The pool's name.")) -> None:
    """Remove a pool: its steps are no longer limited."""
    common.engine().set_pool(name, None)
    views.out.print(f"pool {name}: removed")
