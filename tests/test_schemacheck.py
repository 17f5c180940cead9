"""The compiled schema check (scheduler/schemacheck.py) never accepts what jsonschema rejects, and its
on-disk cache is used only when it is private to this user."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler import schemacheck, spec
from tests.test_spec_fuzz import EXAMPLE, VALUES, _parent, _paths

ROOT = Path(__file__).resolve().parent.parent
INVALID = sorted((ROOT / "tests" / "specs" / "invalid").glob("*.yaml"))


def jsonschema_errors(document: Any) -> list[Any]:
    return list(spec._validator().iter_errors(document))


def agrees(document: Any) -> None:
    """Accepted by the compiled check => accepted by jsonschema (the reverse need not hold)."""
    fast = schemacheck.fast_valid(document)
    assert fast is not None, "fastjsonschema is a dependency: the compiled check must exist"
    if fast:
        assert jsonschema_errors(document) == [], document


def test_the_example_is_accepted_by_both() -> None:
    assert schemacheck.fast_valid(EXAMPLE) is True
    assert jsonschema_errors(EXAMPLE) == []


def test_the_check_only_looks() -> None:
    """fastjsonschema fills in the schema's defaults unless told not to: a schedule would then gain a
    'roll' (and with it a weekday calendar) that its author never wrote."""
    document = {"name": "x", "schedule": {"cron": "* * * * *"}, "steps": {"a": {"image": "i", "command": ["c"]}}}
    before = copy.deepcopy(document)
    assert schemacheck.fast_valid(document) is True
    assert document == before


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_golden_invalid_documents(path: Path) -> None:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError):
        pytest.skip("not YAML: the schema is never asked")
    agrees(document)


def test_every_golden_schema_error_is_rejected_by_the_compiled_check() -> None:
    rejected = 0
    for path in INVALID:
        try:
            document = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        if jsonschema_errors(document):
            assert schemacheck.fast_valid(document) is False, path.name
            rejected += 1
    assert rejected > 20  # the corpus has that many schema mistakes


def test_the_compiled_check_names_nothing_and_still_rejects_deep_items() -> None:
    """Only its yes/no is read: the generated code formats no name per list item or mapping entry (half
    of its time on a large DAG), and a bad value deep in a list or mapping is still refused."""
    code = schemacheck._compile(schemacheck.schema_bytes())
    functions = [c for c in code.co_consts if hasattr(c, "co_names")]
    assert len(functions) > 10 and not any("locals" in f.co_names for f in [code, *functions])
    for bad in ({"depends_on": ["a", "bad name"]}, {"env": {"1X": "v"}},
                {"mounts": [{"source": "rel", "target": "/t"}]}, {"wait_for": [{"dag": "d", "timeout": "soon"}]}):
        document = {"name": "x", "steps": {"a": {"image": "i", "command": ["c"]},
                                           "b": {"image": "i", "command": ["c"], **bad}}}
        assert schemacheck.fast_valid(document) is False, bad
        assert jsonschema_errors(document), bad


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent, key = _parent(data, path), path[-1]
        action = draw(st.sampled_from(["delete", "retype", "rename"]))
        if action == "delete":
            del parent[key]
        elif action == "retype":
            parent[key] = draw(VALUES)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6)) + str(key)] = parent.pop(key)
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_documents(document: Any) -> None:
    agrees(document)


def test_the_cache_is_written_then_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_CACHE_DIR", str(tmp_path / "cache"))
    schemacheck.compiled.cache_clear()
    try:
        assert schemacheck.fast_valid(EXAMPLE) is True
        [cached] = (tmp_path / "cache").glob("dag-schema-*.marshal")
        assert oct(cached.stat().st_mode & 0o777) == "0o600"
        schemacheck.compiled.cache_clear()
        read = []
        original = schemacheck._read_cache
        monkeypatch.setattr(schemacheck, "_read_cache", lambda key: read.append(key) or original(key))
        monkeypatch.setattr(schemacheck, "_compile", lambda raw: pytest.fail("compiled again"))
        assert schemacheck.fast_valid({"name": "x"}) is False
        assert len(read) == 1
    finally:
        schemacheck.compiled.cache_clear()


def test_a_cache_others_may_write_is_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cache"
    monkeypatch.setenv("CONVEYOR_CACHE_DIR", str(folder))
    schemacheck.compiled.cache_clear()
    try:
        schemacheck.compiled()
        [cached] = folder.glob("dag-schema-*.marshal")
        os.chmod(cached, 0o666)  # anybody could have put code here: compile instead of loading it
        schemacheck.compiled.cache_clear()
        compiled = []
        original = schemacheck._compile
        monkeypatch.setattr(schemacheck, "_compile", lambda raw: compiled.append(1) or original(raw))
        assert schemacheck.fast_valid(EXAMPLE) is True
        assert compiled == [1]
    finally:
        schemacheck.compiled.cache_clear()


def test_an_unwritable_cache_still_validates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CONVEYOR_CACHE_DIR", str(blocker / "cache"))
    schemacheck.compiled.cache_clear()
    try:
        assert schemacheck.fast_valid(EXAMPLE) is True
        assert schemacheck.fast_valid({"steps": {}}) is False
    finally:
        schemacheck.compiled.cache_clear()
