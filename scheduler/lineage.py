"""DAGs and datasets together (``ctl graph --datasets``): which DAG produces each dataset (and by which
steps) and which DAGs it triggers, drawn as producer DAG → dataset → consumer DAG in Mermaid or dot.

Built from the DAGs' latest versions (:func:`scheduler.datasetuse.produced` and ``consumed``); the
renderings are pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from scheduler.datasetuse import consumed, produced
from scheduler.model import DagSpec


@dataclass
class Lineage:
    """``producers``: dataset -> {DAG: its producing steps}; ``consumers``: dataset -> DAGs it triggers;
    ``dags``: every DAG drawn, in name order (one without datasets too, when asked for by name)."""

    dags: list[str] = field(default_factory=list)
    producers: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    consumers: dict[str, list[str]] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return sorted(set(self.producers) | set(self.consumers))


def lineage(specs: Mapping[str, DagSpec], around: str | None = None) -> Lineage:
    """The lineage of ``specs`` (by DAG name); with ``around``, only that DAG's datasets and the DAGs at
    their other ends."""
    found = Lineage()
    for name in sorted(specs):
        for dataset, steps in produced(specs[name]).items():
            found.producers.setdefault(dataset, {})[name] = steps
        for dataset in consumed(specs[name]):
            found.consumers.setdefault(dataset, []).append(name)
    if around is not None:
        kept = {d for d in found.datasets
                if around in found.producers.get(d, {}) or around in found.consumers.get(d, [])}
        found.producers = {d: p for d, p in found.producers.items() if d in kept}
        found.consumers = {d: c for d, c in found.consumers.items() if d in kept}
    drawn = {dag for p in found.producers.values() for dag in p} | {dag for c in found.consumers.values() for dag in c}
    found.dags = sorted(drawn | ({around} if around is not None else set()))
    return found


def render(graph: Lineage, fmt: str) -> str:
    if fmt == "mermaid":
        return mermaid(graph)
    if fmt == "dot":
        return dot(graph)
    return text(graph)


def text(graph: Lineage) -> str:
    """One line per dataset: ``producer (steps) --> dataset --> consumers``."""
    lines = []
    for dataset in graph.datasets:
        made = ", ".join(f"{dag} ({', '.join(steps)})" for dag, steps in graph.producers.get(dataset, {}).items())
        used = ", ".join(graph.consumers.get(dataset, []))
        lines.append(f"{made or '(external)'} --> [{dataset}] --> {used or '(no consumer)'}")
    return "\n".join(lines or ["no DAG produces or consumes a dataset"]) + "\n"


def _label(value: str) -> str:
    return '"' + value.replace('"', "#quot;") + '"'


def mermaid(graph: Lineage) -> str:
    """A Mermaid flowchart: DAGs as boxes, datasets as cylinders, edges labelled with producing steps."""
    dag_ids = {dag: f"d{i}" for i, dag in enumerate(graph.dags)}
    set_ids = {dataset: f"ds{i}" for i, dataset in enumerate(graph.datasets)}
    lines = ["---\ntitle: datasets\n---", "flowchart LR"]
    lines += [f"    {dag_ids[dag]}[{_label(dag)}]" for dag in graph.dags]
    lines += [f"    {set_ids[d]}[({_label(d)})]" for d in graph.datasets]
    for dataset in graph.datasets:
        for dag, steps in graph.producers.get(dataset, {}).items():
            lines.append(f"    {dag_ids[dag]} -->|{_label(', '.join(steps))}| {set_ids[dataset]}")
        lines += [f"    {set_ids[dataset]} --> {dag_ids[dag]}" for dag in graph.consumers.get(dataset, [])]
    return "\n".join(lines) + "\n"


def _dot_id(value: str) -> str:
    return value if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) else json.dumps(value)


def dot(graph: Lineage) -> str:
    """Graphviz dot: DAGs as boxes, datasets as cylinders (ids ``dag:NAME`` and ``dataset:NAME``)."""
    def dag_id(name: str) -> str:
        return _dot_id(f"dag:{name}")

    def set_id(name: str) -> str:
        return _dot_id(f"dataset:{name}")

    lines = ["digraph datasets {", "    rankdir=LR;"]
    lines += [f"    {dag_id(dag)} [label={_dot_id(dag)}, shape=box, style=rounded];" for dag in graph.dags]
    lines += [f"    {set_id(d)} [label={_dot_id(d)}, shape=cylinder];" for d in graph.datasets]
    for dataset in graph.datasets:
        for dag, steps in graph.producers.get(dataset, {}).items():
            lines.append(f"    {dag_id(dag)} -> {set_id(dataset)} [label={json.dumps(', '.join(steps))}];")
        lines += [f"    {set_id(dataset)} -> {dag_id(dag)};" for dag in graph.consumers.get(dataset, [])]
    lines.append("}")
    return "\n".join(lines) + "\n"
