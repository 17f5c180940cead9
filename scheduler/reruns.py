"""Which steps a rerun runs again. Pure: the graph and the steps' states in, an ordered list out.

- ``failed`` (the default): the failed and upstream_failed steps (and cancelled ones);
- ``step``: that step and, unless ``downstream=False``, everything downstream of it;
- ``all``: every step.
Then the DAG's rerun rule: a step with ``rerun_before_downstream: true`` is rerun first whenever any
step downstream of it is rerun (it refreshes something its consumers read).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from scheduler.graph import descendants, topological_order

RERUN_STATES = {"failed", "upstream_failed", "cancelled"}


def select(
    upstream: Mapping[str, Iterable[str]],
    states: Mapping[str, str],
    *,
    step: str | None = None,
    downstream: bool = True,
    everything: bool = False,
    rerun_before: Iterable[str] = (),
) -> list[str]:
    graph = {name: list(ups) for name, ups in upstream.items()}
    if everything:
        chosen = set(graph)
    elif step is not None:
        chosen = {step, *(descendants(graph, step) if downstream else ())}
    else:
        chosen = {name for name, state in states.items() if state in RERUN_STATES}
    for name in rerun_before:
        if chosen & set(descendants(graph, name)):
            chosen.add(name)
    return [name for name in topological_order(graph) if name in chosen]
