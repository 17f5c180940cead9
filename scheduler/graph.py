"""Pure graph helpers over ``{step: [upstream, ...]}`` mappings."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping


def downstream_map(upstream: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Invert ``step -> upstreams`` into ``step -> direct downstream steps`` (in declaration order)."""
    down: dict[str, list[str]] = {name: [] for name in upstream}
    for name, ups in upstream.items():
        for up in ups:
            if up in down:
                down[up].append(name)
    return down


def find_cycle(upstream: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle as its path ``[a, b, c, a]`` (each depends on the next), or None. Iterative DFS."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(upstream, WHITE)
    for root in upstream:
        if color[root] != WHITE:
            continue
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(upstream[root]))]
        path = [root]
        color[root] = GREY
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in color:
                    continue
                if color[child] == GREY:
                    return [*path[path.index(child):], child]
                if color[child] == WHITE:
                    color[child] = GREY
                    stack.append((child, iter(upstream[child])))
                    path.append(child)
                    break
            else:
                color[node] = BLACK
                stack.pop()
                path.pop()
    return None


def topological_order(upstream: Mapping[str, Iterable[str]]) -> list[str]:
    """Steps in an order where every step comes after its upstreams (stable: declaration order)."""
    remaining = {name: set(ups) for name, ups in upstream.items()}
    down = downstream_map(upstream)
    ready = deque(name for name, ups in remaining.items() if not ups)
    order: list[str] = []
    while ready:
        name = ready.popleft()
        order.append(name)
        for child in down[name]:
            remaining[child].discard(name)
            if not remaining[child]:
                ready.append(child)
    if len(order) != len(upstream):
        raise ValueError("graph has a cycle")
    return order


def is_ancestor(upstream: Mapping[str, Iterable[str]], step: str, candidate: str) -> bool:
    """Whether ``candidate`` is upstream of ``step``, directly or not: a search that stops when found."""
    seen: set[str] = set()
    todo = list(upstream.get(step, ()))
    while todo:
        name = todo.pop()
        if name == candidate:
            return True
        if name not in seen:
            seen.add(name)
            todo += upstream.get(name, ())
    return False


def descendants(upstream: Mapping[str, Iterable[str]], start: str) -> list[str]:
    """Every step downstream of ``start`` (not including it), in topological order."""
    down = downstream_map(upstream)
    seen: set[str] = set()
    todo = [start]
    while todo:
        for child in down[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return [name for name in topological_order(upstream) if name in seen]
