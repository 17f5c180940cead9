"""Pure renderings of a DAG's shape over ``{step: [upstream, ...]}`` (``ctl graph``): an ASCII tree,
Mermaid and Graphviz dot. No I/O; the order of the mapping (declaration order) is kept.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from scheduler.graph import downstream_map

FORMATS = ("ascii", "mermaid", "dot")


def render(name: str, upstream: Mapping[str, Iterable[str]], fmt: str = "ascii") -> str:
    graph = {step: list(ups) for step, ups in upstream.items()}
    if fmt == "ascii":
        return ascii_tree(name, graph)
    if fmt == "mermaid":
        return mermaid(name, graph)
    if fmt == "dot":
        return dot(name, graph)
    raise ValueError(f"unknown graph format {fmt!r}; use {', '.join(FORMATS)}")


def ascii_tree(name: str, upstream: Mapping[str, list[str]]) -> str:
    """Roots first, each step's downstream steps below it (like ``tree --charset=ascii``). A step with
    several upstreams is drawn in full once, under its first; later it appears as ``name (*)``, and
    its other upstreams are named after it (``<- a, b``)."""
    down = downstream_map(upstream)
    edges = sum(len(ups) for ups in upstream.values())
    lines = [f"{name} ({len(upstream)} steps, {edges} dependencies)"]
    shown: set[str] = set()

    def label(step: str) -> str:
        ups = upstream[step]
        return f"{step}  <- {', '.join(ups)}" if len(ups) > 1 else step

    def walk(step: str, prefix: str, last: bool, root: bool) -> None:
        branch = "" if root else ("`-- " if last else "+-- ")
        if step in shown:
            lines.append(f"{prefix}{branch}{step} (*)")
            return
        shown.add(step)
        lines.append(f"{prefix}{branch}{label(step)}")
        children = down[step]
        inner = prefix if root else prefix + ("    " if last else "|   ")
        for i, child in enumerate(children):
            walk(child, inner, i == len(children) - 1, False)

    for root in (s for s, ups in upstream.items() if not ups):
        walk(root, "", True, True)
    return "\n".join(lines) + "\n"


def _mermaid_label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def mermaid(name: str, upstream: Mapping[str, list[str]]) -> str:
    """A Mermaid ``flowchart LR`` (pastes into GitHub Markdown, GitLab, Notion...)."""
    ids = {step: f"s{i}" for i, step in enumerate(upstream)}
    lines = [f"---\ntitle: {name}\n---", "flowchart LR"]
    lines += [f"    {ids[step]}[{_mermaid_label(step)}]" for step in upstream]
    lines += [f"    {ids[up]} --> {ids[step]}" for step, ups in upstream.items() for up in ups if up in ids]
    return "\n".join(lines) + "\n"


def _dot_id(text: str) -> str:
    return text if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) else json.dumps(text)


def dot(name: str, upstream: Mapping[str, list[str]]) -> str:
    """Graphviz ``dot`` (``ctl graph etl --format dot | dot -Tsvg > etl.svg``)."""
    lines = [f"digraph {_dot_id(name)} {{", "    rankdir=LR;", "    node [shape=box, style=rounded];"]
    lines += [f"    {_dot_id(step)};" for step in upstream]
    lines += [f"    {_dot_id(up)} -> {_dot_id(step)};" for step, ups in upstream.items() for up in ups]
    lines.append("}")
    return "\n".join(lines) + "\n"
