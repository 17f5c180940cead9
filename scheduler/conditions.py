"""``when:`` conditions: a tiny, safe expression language over params and upstream results.

    params.full_refresh == true
    extract.exit_code == 3 or extract.state == "failed"
    params.env in ["prod", "staging"] and not params.dry_run

Parsed with Python's ``ast`` and evaluated by walking the tree: only literals, names of the form
``params.NAME``, ``STEP.exit_code``/``STEP.state`` or ``steps.STEP.outputs.NAME`` (an upstream step's
output, a string), comparisons, ``and``/``or``/``not`` and lists.
Nothing is ever passed to ``eval``; a call, an index or any other node is refused when the DAG is
validated.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any

from scheduler.errors import InputError

STEP_FIELDS = ("exit_code", "state")
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
_COMPARE = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt,
    ast.GtE: operator.ge, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}


_ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.Compare, ast.Constant,
            ast.Name, ast.Attribute, ast.Load, ast.List, ast.Tuple, *_COMPARE)


# An output reference outside string literals (step names may hold '-', which Python would read as a
# minus): each is swapped for a plain placeholder name before parsing, and mapped back after.
_OUTPUT_REF = re.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')"""
                         r"|\bsteps\.([A-Za-z0-9][A-Za-z0-9_-]*)\.outputs\.([A-Za-z_][A-Za-z0-9_]*)")
_PLACEHOLDER = "__conveyor_output_"


class ConditionError(InputError):
    """A condition that cannot be parsed or names something unknown; the message is for people."""


def parse(text: str) -> ast.Expression:
    return _parse(text)[0]


def _parse(text: str) -> tuple[ast.Expression, dict[str, str]]:
    """The syntax tree and the output references it reads (placeholder name -> ``steps.S.outputs.N``)."""
    refs: dict[str, str] = {}

    def swap(match: re.Match[str]) -> str:
        if match.group(1):
            return match.group(1)
        placeholder = f"{_PLACEHOLDER}{len(refs)}"
        refs[placeholder] = f"steps.{match.group(2)}.outputs.{match.group(3)}"
        return placeholder

    source = _OUTPUT_REF.sub(swap, text.replace("&&", " and ").replace("||", " or "))
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        raise ConditionError(f"cannot read the condition {text!r}: {exc.msg}") from None
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ConditionError(f"{text!r}: only comparisons, and/or/not, literals and names are allowed "
                                 f"(found {type(node).__name__})")
    return tree, refs


def names(text: str) -> list[str]:
    """The dotted names a condition reads, e.g. ``params.x``, ``extract.exit_code``."""
    found = []
    tree, refs = _parse(text)
    bases = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not isinstance(node.value, ast.Name):
                raise ConditionError(f"{text!r}: names are params.NAME or STEP.exit_code / STEP.state")
            found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name) and node.id in refs and id(node) not in bases:
            found.append(refs[node.id])
        elif isinstance(node, ast.Name) and node.id not in _LITERALS and id(node) not in bases:
            found.append(node.id)
    return found


def check(text: str, params: Iterable[str], steps: Iterable[str],
          outputs: Mapping[str, Iterable[str]] | None = None) -> None:
    """Raise ConditionError unless every name is a declared param, an upstream step's field or an
    upstream step's declared output (``outputs``: step -> its output names)."""
    params, steps = set(params), set(steps)
    for name in names(text):
        if name.startswith("steps.") and name.count(".") == 3:
            _, step, _, output = name.split(".", 3)
            if step not in steps:
                raise ConditionError(f"'{name}': step '{step}' is not upstream of this step; only the outputs "
                                     "of steps it depends on (directly or not) can be read")
            declared = list((outputs or {}).get(step, ()))
            if output not in declared:
                known = f"; its outputs: {', '.join(declared)}" if declared else "; it declares no outputs"
                raise ConditionError(f"'{name}': step '{step}' declares no output '{output}'{known}")
            continue
        head, _, field = name.partition(".")
        if head == "params" and field in params:
            continue
        if head in steps and field in STEP_FIELDS:
            continue
        if head == "params":
            raise ConditionError(f"unknown param '{field}' in the condition")
        if head in steps:
            raise ConditionError(f"'{name}': a step's result is .exit_code or .state")
        raise ConditionError(f"unknown name '{name}' in the condition; use params.NAME or an upstream "
                             f"step's .exit_code / .state")


def evaluate(text: str, context: Mapping[str, Any]) -> bool:
    """``context`` maps dotted names (``params.x``, ``extract.exit_code``) to values."""
    tree, refs = _parse(text)
    return bool(_eval(tree.body, {**context, **{p: context.get(r) for p, r in refs.items()}}))


def _eval(node: ast.AST, ctx: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in _LITERALS:
            return _LITERALS[node.id]
        return ctx.get(node.id)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return ctx.get(f"{node.value.id}.{node.attr}")
    if isinstance(node, ast.List | ast.Tuple):
        return [_eval(e, ctx) for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, ctx)
        return (not value) if isinstance(node.op, ast.Not) else -value
    if isinstance(node, ast.BoolOp):
        values = (_eval(v, ctx) for v in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _eval(node.left, ctx)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = _eval(right_node, ctx)
            try:
                if not _COMPARE[type(op)](left, right):
                    return False
            except TypeError:
                return False
            left = right
        return True
    raise ConditionError(f"unsupported expression: {type(node).__name__}")
