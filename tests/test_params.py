"""Run params: typed from ``--param`` text or YAML values, checked against the DAG's declarations,
and kept as data (never parsed as YAML, a template or a shell command).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler import templates
from scheduler.cli.common import parse_params
from scheduler.errors import ParamError
from scheduler.model import DagSpec
from scheduler.spec import coerce_value, load_bytes, resolve_params

DAG = """
name: report
params:
  date: {type: date, required: true}
  rows: {type: int, default: 3}
  ratio: {type: float, default: 0.5}
  dry_run: {type: bool, default: false}
  region: {type: string, enum: [eu, us], default: eu}
  level: {type: int, enum: [1, 2, 3]}
  note: {type: string}
steps:
  hello:
    image: conveyor/busybox:local
    command: [echo, "{{ params.note }}"]
"""


@pytest.fixture(scope="module")
def spec() -> DagSpec:
    return load_bytes(DAG, "report.yaml")


def problems(spec: DagSpec, given: dict[str, Any]) -> list[str]:
    with pytest.raises(ParamError) as caught:
        resolve_params(spec, given)
    return str(caught.value).splitlines()


# --- coerce_value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("ptype", "value", "expected"), [
    ("string", "hello", "hello"),
    ("string", 42, "42"),
    ("string", True, "true"),
    ("string", False, "false"),
    ("string", "  spaced  ", "  spaced  "),
    ("int", "42", 42),
    ("int", " 7 ", 7),
    ("int", "-3", -3),
    ("int", 5, 5),
    ("float", "1.5", 1.5),
    ("float", 2, 2.0),
    ("float", "-0.25", -0.25),
    ("bool", True, True),
    ("bool", "true", True),
    ("bool", "TRUE", True),
    ("bool", "yes", True),
    ("bool", "1", True),
    ("bool", "false", False),
    ("bool", "No", False),
    ("bool", "0", False),
    ("date", "2026-11-20", "2026-11-20"),
    ("date", " 2026-02-28 ", "2026-02-28"),
])
def test_coerce_value(ptype: str, value: Any, expected: Any) -> None:
    result = coerce_value(ptype, value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("ptype", "value", "message"), [
    ("int", "ten", "'ten' is not a whole number"),
    ("int", "4.5", "'4.5' is not a whole number"),
    ("int", 4.5, "4.5 is not a whole number"),
    ("int", True, "True is not a whole number"),
    ("int", "", "'' is not a whole number"),
    ("float", "1.5.2", "'1.5.2' is not a number"),
    ("float", False, "False is not a number"),
    ("bool", "maybe", "'maybe' is not true or false"),
    ("bool", 2, "2 is not true or false"),
    ("date", "2026-13-01", "'2026-13-01' is not a date like 2026-11-20"),
    ("date", "tomorrow", "'tomorrow' is not a date like 2026-11-20"),
    ("integer", "1", "unknown param type 'integer'"),
])
def test_coerce_value_refuses(ptype: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        coerce_value(ptype, value)
    assert str(caught.value) == message


@given(st.text())
def test_a_string_param_is_any_text_verbatim(text: str) -> None:
    assert coerce_value("string", text) == text


# --- resolve_params -------------------------------------------------------------------------------


def test_defaults_fill_in_and_are_typed(spec: DagSpec) -> None:
    assert resolve_params(spec, {"date": "2026-11-20"}) == {
        "date": "2026-11-20", "rows": 3, "ratio": 0.5, "dry_run": False, "region": "eu", "level": None,
        "note": None,
    }


def test_given_values_are_typed(spec: DagSpec) -> None:
    values = resolve_params(spec, {"date": "2026-11-20", "rows": "10", "ratio": "2", "dry_run": "yes",
                                   "region": "us", "level": "2", "note": "hi"})
    assert values == {"date": "2026-11-20", "rows": 10, "ratio": 2.0, "dry_run": True, "region": "us",
                      "level": 2, "note": "hi"}


def test_a_required_param_must_be_given(spec: DagSpec) -> None:
    assert problems(spec, {}) == ["report: param 'date' (date) is required: give it with --param date=VALUE"]


def test_wrong_types_are_refused(spec: DagSpec) -> None:
    assert problems(spec, {"date": "20th of November", "rows": "many", "dry_run": "perhaps"}) == [
        "report: param 'date' (date): '20th of November' is not a date like 2026-11-20",
        "report: param 'rows' (int): 'many' is not a whole number",
        "report: param 'dry_run' (bool): 'perhaps' is not true or false",
    ]


def test_enum_values_are_checked_after_typing(spec: DagSpec) -> None:
    assert resolve_params(spec, {"date": "2026-11-20", "level": " 3 "})["level"] == 3
    assert problems(spec, {"date": "2026-11-20", "region": "asia", "level": "4"}) == [
        "report: param 'region' (string): 'asia' is not one of: eu, us",
        "report: param 'level' (int): '4' is not one of: 1, 2, 3",
    ]


def test_unknown_params_get_a_hint(spec: DagSpec) -> None:
    assert problems(spec, {"date": "2026-11-20", "row": "1", "colour": "red"}) == [
        "report: unknown param 'row'; did you mean 'rows'?",
        "report: unknown param 'colour'; declared: date, rows, ratio, dry_run, region, level, note",
    ]


def test_every_problem_is_reported_at_once(spec: DagSpec) -> None:
    assert problems(spec, {"datte": "2026-11-20", "rows": "x"}) == [
        "report: unknown param 'datte'; did you mean 'date'?",
        "report: param 'date' (date) is required: give it with --param date=VALUE",
        "report: param 'rows' (int): 'x' is not a whole number",
    ]


def test_a_dag_without_params_says_so() -> None:
    bare = load_bytes("name: bare\nsteps: {a: {image: x, command: [echo]}}\n", "bare.yaml")
    assert resolve_params(bare, {}) == {}
    assert problems(bare, {"date": "2026-11-20"}) == ["bare: unknown param 'date'; this DAG declares no params"]


@pytest.mark.parametrize("value", [
    "$(rm -rf /)",
    "`reboot`; echo pwned",
    "{{ run_id }}",
    "{{ params.note }}",
    "!!python/object/apply:os.system ['id']",
    "&a [*a, *a]",
    "key: value\n- item",
    "'\"\\",
    "",
])
def test_values_stay_verbatim_data(spec: DagSpec, value: str) -> None:
    given = parse_params([f"note={value}"])
    assert given == {"note": value}
    values = resolve_params(spec, {"date": "2026-11-20", **given})
    assert values["note"] == value
    # Rendering is one pass: a value that looks like a template or a tag is data in the command.
    context = {"params.note": values["note"], "run_id": "R1", "params.date": values["date"]}
    assert templates.render("{{ params.note }}", context) == value
    assert templates.render("[{{params.note}}] {{ run_id }}", context) == f"[{value}] R1"
