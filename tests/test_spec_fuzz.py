"""Fuzzing the DAG loader: whatever the bytes, ``load_bytes`` returns a DagSpec or raises SpecError,
quickly and in bounded memory; ``ctl validate`` answers 0 or 1 and never raises.
"""

from __future__ import annotations

import copy
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.cli.main import main
from scheduler.errors import Problem, SpecError
from scheduler.model import DagSpec
from scheduler.spec import load_bytes

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_TEXT = (ROOT / "examples" / "etl.yaml").read_text(encoding="utf-8")
EXAMPLE = yaml.safe_load(EXAMPLE_TEXT)
PEAK_BYTES = 50 * 1024 * 1024
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])

FRAGMENTS = [
    "name: demo", "name: Demo", "steps:", "steps: {}", "steps: []", "  a:", "  b:", "  a: {}", "    image: x",
    "    image: conveyor/busybox:local", "    command: [echo, hi]", "    command: echo hi", "    command: []",
    "    shell: true", "    depends_on: [a]", "    depends_on: [b, a, a]", "    depends_on: a", "    retries: 2",
    "    retries: -1", "    timeout: 5m", "    timeout: 5 min", "    retry_backoff: {initial: 1s, max: 1y}",
    "    resources: {cpus: 0.5, memory: 1g}", "    env: {A: '{{ params.p }}', B: '{{ nope }}'}",
    "    env: {1A: x}", "params:", "  p: {type: int, default: 1}", "  q: {type: date, enum: [2026-01-01], default: x}",
    "  r: {type: nope, required: true, default: 1}", "defaults:", "  retries: 2", "  command: [echo, '{{ ds }']",
    "x: &a [1, 2, 3]", "y: [*a, *a, *a]", "<<: *a", "<<: {image: x}", "z: *missing", "k: !!python/object:os.system",
    "k: !custom x", "k: !!binary aGk=", "k: !!timestamp 2026-01-01", "k: !!set {a, b}", "k: !!omap [a: 1]",
    "---", "...", "- x", "- {a: b}", "? [a, b]", "  : c", "%YAML 1.2", "%TAG ! tag:example.com,2000:",
    "'unclosed", '"unclosed', "{a: [b, {c: d}", "\t", "key: value: other", "key:", "  - 1", "  - 2",
    "true: 1", "1: 2", "null: x", "~: y", "0x10: z", ".inf: 1", "a: |", "  block", "b: >-", "  folded",
    "a: a", "a: b", "# comment", "", "{{ run_id }}", "$(rm -rf /)", "\ufeffname: bom", "é: ü", "\x85", "\u2028",
]


def check(raw: bytes | str) -> DagSpec | None:
    """The loader's contract on one input, with its peak memory measured."""
    tracemalloc.start()
    try:
        try:
            result = load_bytes(raw, "fuzz.yaml")
        except SpecError as exc:
            assert exc.problems, "a SpecError without problems"
            for problem in exc.problems:
                assert isinstance(problem, Problem)
                assert problem.file == "fuzz.yaml" and problem.line >= 1 and problem.col >= 1
                assert problem.message
            result = None
        else:
            assert isinstance(result, DagSpec)
            assert result.steps and result.name
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak memory {peak:,} bytes"
    return result


def test_the_example_is_valid() -> None:
    assert check(EXAMPLE_TEXT) is not None


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(raw: bytes) -> None:
    check(raw)


@FUZZ
@given(st.text(max_size=1000))
def test_random_text(text: str) -> None:
    check(text)


@st.composite
def yamlish(draw: st.DrawFn) -> str:
    """Lines from DAG fragments, some re-indented, some with junk around them."""
    lines = draw(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
    out = []
    for line in lines:
        indent = draw(st.sampled_from(["", "", "", "  ", "    ", " ", "\t"]))
        junk = draw(st.sampled_from(["", "", "", "", ":", " #", " &x", " *x", " !!str", "}", "]", ",", "'"]))
        out.append(indent + line + junk)
    return "\n".join(out)


@FUZZ
@given(yamlish())
def test_yamlish_fragments(text: str) -> None:
    check(text)


@settings(FUZZ, max_examples=40)
@given(st.integers(1, 5000), st.sampled_from(["[", "{a: ", "- ", "a:"]))
def test_deep_nesting(depth: int, opening: str) -> None:
    """PyYAML scans nesting in quadratic time: thousands of levels must still fail fast."""
    if opening in {"[", "{a: "}:
        closing = "]" if opening == "[" else "}"
        check("name: demo\nsteps: {a: {image: x, command: [echo]}}\ntags:\n  deep: "
              + opening * depth + "x" + closing * depth + "\n")
    else:  # block nesting: the indentation grows with depth, so fewer levels fit in the size limit
        depth = min(depth, 300)
        check("".join(" " * (2 * i) + opening + "\n" for i in range(depth)) + " " * (2 * depth) + "x\n")


@settings(FUZZ, max_examples=60)
@given(st.integers(1, 12), st.integers(1, 12))
def test_alias_fans(levels: int, width: int) -> None:
    lines = ["name: demo", "steps: {a: {image: x, command: [echo]}}", "lol:", "  l0: &l0 [lol]"]
    for level in range(1, levels + 1):
        lines.append(f"  l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    check("\n".join(lines) + "\n")


# --- mutations of the example ---------------------------------------------------------------------

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["{{ run_id }}", "{{ nope }}", "{{ 1+1 }}", "5m", "1g", "[a]", "-1s"]),
    st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = []
    if isinstance(value, dict):
        for key, child in value.items():
            found += [(*prefix, key), *_paths(child, (*prefix, key))]
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += [(*prefix, index), *_paths(child, (*prefix, index))]
    return found


def _parent(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        data = data[part]
    return data


@st.composite
def mutated_example(draw: st.DrawFn) -> str:
    """The example's data with keys deleted, renamed, copied or retyped, dumped back to YAML."""
    data = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 5))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(data, path), path[-1]
        action = draw(st.sampled_from(["delete", "retype", "rename", "copy"]))
        if action == "delete":
            del parent[key]
        elif action == "retype":
            parent[key] = draw(VALUES)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(min_size=0, max_size=8)) + str(key)[draw(st.integers(0, 3)):]] = parent.pop(key)
        elif action == "copy" and isinstance(parent, dict):
            parent[draw(st.sampled_from(list(parent)))] = copy.deepcopy(parent[key])
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


@settings(FUZZ, max_examples=100)
@given(mutated_example())
def test_mutated_example_data(text: str) -> None:
    check(text)


@st.composite
def mangled_example(draw: st.DrawFn) -> str:
    """The example's text with junk inserted, slices removed, lines duplicated, moved or re-indented."""
    lines = EXAMPLE_TEXT.splitlines()
    for _ in range(draw(st.integers(1, 6))):
        index = draw(st.integers(0, len(lines) - 1)) if lines else 0
        action = draw(st.sampled_from(["insert", "cut", "duplicate", "move", "indent"]))
        if not lines:
            lines = [draw(st.text(max_size=10))]
        elif action == "insert":
            line = lines[index]
            at = draw(st.integers(0, len(line)))
            junk = draw(st.text(alphabet=":{}[]-&*!|>'\"#%@`\t ,?\\\x00\x07\ufeff", min_size=1, max_size=4))
            lines[index] = line[:at] + junk + line[at:]
        elif action == "cut":
            line = lines[index]
            start = draw(st.integers(0, len(line)))
            lines[index] = line[:start] + line[start + draw(st.integers(1, 10)):]
        elif action == "duplicate":
            lines.insert(index, lines[index])
        elif action == "move":
            lines.insert(draw(st.integers(0, len(lines))), lines.pop(index))
        else:
            lines[index] = " " * draw(st.integers(0, 6)) + lines[index].lstrip()
    return "\n".join(lines) + "\n"


@settings(FUZZ, max_examples=100)
@given(mangled_example())
def test_mangled_example_text(text: str) -> None:
    check(text)


@settings(FUZZ, max_examples=100)
@given(mangled_example())
def test_mangled_example_bytes(text: str) -> None:
    check(text.encode("utf-8", "surrogatepass"))


# --- through the CLI ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mangled_example(), mutated_example(), yamlish()).map(lambda t: t.encode("utf-8", "surrogatepass"))
       | st.binary(max_size=500))
def test_ctl_validate_answers_0_or_1(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "dag.yaml"
        path.write_bytes(raw)
        code = main(["validate", str(path)])
    assert code in (0, 1)
