"""libyaml's composer and the pure-Python one give the same document, node tree and marks whenever
both read a text, and the loader's answer never depends on which one read it (scheduler/yamlsource.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import yamlsource
from scheduler.errors import SpecError
from scheduler.spec import load_bytes
from tests.test_spec_fuzz import EXAMPLE_TEXT, FRAGMENTS, mangled_example

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [p.read_text(encoding="utf-8", errors="replace") for p in sorted((ROOT / "tests/specs/invalid").glob("*.yaml"))]
TEXTS += [EXAMPLE_TEXT, "a: é\nb: [ü, {c: 'ö'}]\n", "a: 1\r\nb:\r\n  - x\r\n  - 'y'\r\n", "x: &a {k: v}\ny: *a\n"]
# Keys and scalars the one-pass reading (yamlsource._clean_data) must read as the full walks do, or decline.
TEXTS += ["a: {1: x, 0x1: y}\n", "a: {true: 1, True: 2, ~: 3, null: 4, 1.5: 5}\n", "a: [=]\n", "=: 1\n",
          "a: !!str 5\nb: !!float 1\nc: [1_000, 0o17, .inf, -.5, ~, true, FALSE, 'x', \"y\"]\n",
          "<<: {a: 1}\nb: 2\n", "a: 1\nb: &x 2\nc: *x\n", "a: {b: 1, b: 2}\n", "? [k]\n: v\n", "a: !custom x\n",
          "a: {True: 1, !!str True: 2}\n", "a: {0x1: 1, !!str 0x1: 2}\n"]


def tree(node: yaml.Node | None, seen: dict[int, int] | None = None) -> Any:
    """A node tree as nested tuples of (kind, tag, value, style, marks); a node met again (an alias) is
    ("alias", n), n its order of first appearance, so that alias bombs stay small."""
    if node is None:
        return None
    seen = {} if seen is None else seen
    if id(node) in seen:
        return ("alias", seen[id(node)])
    seen[id(node)] = len(seen)
    where = (node.start_mark.line, node.start_mark.column)  # end marks are never shown
    if isinstance(node, yaml.ScalarNode):
        return ("scalar", node.tag, node.value, node.style or None, *where)  # libyaml says "" for plain
    if isinstance(node, yaml.SequenceNode):
        return ("seq", node.tag, tuple(tree(v, seen) for v in node.value), *where)
    return ("map", node.tag, tuple((tree(k, seen), tree(v, seen)) for k, v in node.value), *where)


def root(loader_class: type, text: str) -> yaml.Node | None:
    loader = loader_class(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def same_tree(text: str) -> None:
    """Whenever the loader would take libyaml's tree (see yamlsource._parse_fast), it equals pure Python's."""
    if yamlsource._ODD_BREAKS.search(text.removeprefix("\ufeff")):
        return
    try:
        python = root(yamlsource._Loader, text)
    except Exception:
        return  # the pure-Python composer refuses it: the fast path then never answers (see same_answer)
    try:
        fast = root(yamlsource._CLoader, text)
    except yaml.YAMLError:
        return  # libyaml refuses it: the pure-Python composer reads it
    if fast is None or has_empty_value(fast):
        return  # libyaml places empty values elsewhere: spec.load_bytes parses again before placing a problem
    assert tree(fast) == tree(python)


def has_empty_value(node: yaml.Node, seen: set[int] | None = None) -> bool:
    seen = set() if seen is None else seen
    if id(node) in seen:
        return False
    seen.add(id(node))
    if isinstance(node, yaml.ScalarNode):
        return not node.value and not node.style
    children = node.value if isinstance(node, yaml.SequenceNode) else [n for pair in node.value for n in pair]
    return any(has_empty_value(child, seen) for child in children)


def same_answer(raw: str | bytes) -> None:
    """The loader's answer with libyaml equals its answer with the pure-Python composer alone."""
    def answer() -> Any:
        try:
            return ("ok", load_bytes(raw, "t.yaml").document)
        except SpecError as exc:
            return ("problems", [str(p) for p in exc.problems])

    with_c = answer()
    saved = yamlsource._CLoader
    yamlsource._CLoader = None
    try:
        python = answer()
    finally:
        yamlsource._CLoader = saved
    if python != with_c:
        # The one difference allowed: libyaml reads a few plain scalars that PyYAML's scanner refuses
        # (`[sh, -?c]`); what it reads then is a document like any other, checked like any other.
        assert python[0] == "problems" and all(": YAML syntax error: " in p for p in python[1]), (python, with_c)
        assert with_c[0] == "ok" or not any(": YAML syntax error: " in p for p in with_c[1]), with_c


def test_libyaml_is_there() -> None:
    assert yamlsource._CLoader is not None, "PyYAML's wheel ships libyaml: large DAGs need it"


def same_data(text: str) -> None:
    """The one-pass reading of libyaml's tree either declines it or gives exactly what the node checks
    (finding nothing), PyYAML's constructor and ``_plain`` give: same values, types and key order."""
    loader = yamlsource._CLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.YAMLError:
            return
        if node is None:
            return
        fast = yamlsource._clean_data(loader, node, anchored="&" in text)
        if fast is yamlsource._NOT_CLEAN:
            return
        assert list(yamlsource._check_nodes(node, "t.yaml")) == []
        assert repr(fast) == repr(yamlsource._plain(loader.construct_document(node)))
    finally:
        loader.dispose()


@pytest.mark.parametrize("text", TEXTS, ids=range(len(TEXTS)))
def test_corpus_trees_and_answers(text: str) -> None:
    same_tree(text)
    same_answer(text)
    same_data(text)


def test_the_one_pass_reading_takes_plain_documents_and_declines_the_rest() -> None:
    def taken(text: str) -> bool:
        loader = yamlsource._CLoader(text)
        try:
            return yamlsource._clean_data(loader, loader.get_single_node(), anchored="&" in text) \
                is not yamlsource._NOT_CLEAN
        finally:
            loader.dispose()

    assert taken(EXAMPLE_TEXT) and taken("a: {1: x, '2': [true, ~, 1.5]}\n")
    for declined in ("a: 1\nb: &x 2\nc: *x\n", "<<: {a: 1}\nb: 2\n", "a: {b: 1, b: 2}\n", "a: {1: x, 0x1: y}\n",
                     "? [k]\n: v\n", "a: !custom x\n", "a: [=]\n", "a: " + "[" * 60 + "]" * 60 + "\n",
                     "a: {True: 1, !!str True: 2}\n"):
        assert not taken(declined), declined


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12).map("\n".join))
def test_fragments(text: str) -> None:
    same_tree(text)
    same_answer(text)
    same_data(text)


@FUZZ
@given(mangled_example())
def test_mangled_example(text: str) -> None:
    same_tree(text)
    same_answer(text)
    same_data(text)


def test_a_large_file_gets_libyamls_position(tmp_path: Path) -> None:
    lines = ["name: big", "steps:"] + [f"  s{i}: {{image: x, command: [echo, 'step {i}']}}" for i in range(30_000)]
    lines.insert(15_000, "  broken: [unclosed")
    text = "\n".join(lines) + "\n"
    assert len(text) > yamlsource.EXACT_BYTES
    with pytest.raises(SpecError) as caught:
        load_bytes(text, "big.yaml")
    [problem] = caught.value.problems
    assert problem.line >= 15_001 and "YAML syntax error" in problem.message
