"""Golden warning tests: valid DAG files that probably do not mean what they say.

``tests/specs/warnings/NN-name.yaml`` loads, with exactly the warnings of ``NN-name.expected``
(``file:line:col: warning: path: message``). ``ctl validate`` prints them on stderr and exits 0;
``ctl validate --strict`` prints them as errors and exits 1. ``UPDATE_GOLDEN=1`` rewrites the
``.expected`` files: review every changed line. A file is checked as ``ctl validate`` checks it alone:
its datasets that nothing consumes are warned about too (``scheduler/datasetuse.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from scheduler.datasetuse import unconsumed_warnings
from scheduler.errors import Problem, SpecError
from scheduler.spec import load_file
from tests.test_specs_golden import _ctl

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path("tests/specs/warnings")
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
CASES = sorted(p.stem for p in (ROOT / CORPUS).glob("*.yaml"))


def _rel(name: str) -> str:
    return f"{CORPUS.as_posix()}/{name}.yaml"


def _expected(name: str) -> list[str]:
    path = ROOT / CORPUS / f"{name}.expected"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 5
    assert {p.stem for p in (ROOT / CORPUS).glob("*.expected")} == set(CASES)


@pytest.mark.parametrize("name", CASES)
def test_load_file_warns_exactly(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    warnings: list[Problem] = []
    spec, raw = load_file(_rel(name), warnings=warnings, offline=True)
    warnings = sorted(warnings + unconsumed_warnings([(_rel(name), spec.document, raw)]))
    lines = [str(w) for w in warnings]
    if UPDATE:
        (ROOT / CORPUS / f"{name}.expected").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    assert lines == _expected(name)
    assert lines and all(w.is_warning and ": warning: " in str(w) for w in warnings)
    assert spec.name == "demo"


@pytest.mark.parametrize("name", CASES)
def test_ctl_validate_prints_warnings_and_succeeds(name: str) -> None:
    done = _ctl(["validate", _rel(name)], ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == _expected(name)
    count = len(_expected(name))
    assert done.stdout == f"{_rel(name)}: ok (demo, 1 steps; {count} warning(s))\n"


@pytest.mark.parametrize("name", CASES)
def test_ctl_validate_strict_turns_warnings_into_errors(name: str) -> None:
    done = _ctl(["validate", "--strict", _rel(name)], ROOT)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [line.replace(": warning: ", ": ", 1) for line in _expected(name)]


def test_ctl_validate_json_keeps_warnings_apart() -> None:
    name = CASES[0]
    done = _ctl(["validate", "-o", "json", _rel(name), "examples/etl.yaml"], ROOT)
    assert done.returncode == 0
    first, second = json.loads(done.stdout)
    assert first["problems"] == [] and second == {"file": "examples/etl.yaml", "dag": "etl", "steps": 4,
                                                  "problems": [], "warnings": []}
    assert [w["severity"] for w in first["warnings"]] == ["warning"] * len(_expected(name))
    strict = json.loads(_ctl(["validate", "-o", "json", "--strict", _rel(name)], ROOT).stdout)[0]
    assert strict["warnings"] == [] and {p["severity"] for p in strict["problems"]} == {"error"}


def test_the_named_calendar_is_an_error_when_the_caller_knows_the_calendars(monkeypatch: pytest.MonkeyPatch) -> None:
    """``offline`` is what makes an unknown name a warning; with the calendars given, it is an error."""
    monkeypatch.chdir(ROOT)
    with pytest.raises(SpecError) as caught:
        load_file(_rel("04-named-calendar-offline"), {})
    assert "unknown calendar 'ops-london'" in str(caught.value)
    warnings: list[Problem] = []
    spec, _ = load_file(_rel("04-named-calendar-offline"), {"ops-london": {"holidays": ["GB-ENG"]}},
                        warnings=warnings)
    assert warnings == [] and spec.name == "demo"


def test_a_dataset_is_consumed_by_any_dag_validated_with_it(tmp_path: Path) -> None:
    """Files and folders given together are one world: the consumer silences the producer's warning."""
    producer = ROOT / _rel("05-dataset-consumed-by-nobody")
    folder = tmp_path / "dags"
    (folder / "team").mkdir(parents=True)
    (folder / "team" / "consumer.yml").write_text("name: consumer\nschedule: {on: [warehouse.orders]}\n"
                                                  "steps:\n  read: {image: i, command: [\"true\"]}\n")
    (folder / "producer.yaml").write_bytes(producer.read_bytes())
    together = _ctl(["validate", str(producer), str(folder / "team" / "consumer.yml")], ROOT)
    assert (together.returncode, together.stderr) == (0, "")
    in_a_folder = _ctl(["validate", str(folder)], tmp_path)
    assert (in_a_folder.returncode, in_a_folder.stderr) == (0, "")
    assert in_a_folder.stdout.splitlines() == [f"{folder}/producer.yaml: ok (demo, 1 steps)",
                                               f"{folder}/team/consumer.yml: ok (consumer, 1 steps)"]
    (folder / "team" / "consumer.yml").write_text("name: consumer\nsteps: {}\n")  # the consumer is bad now
    alone = _ctl(["validate", str(folder)], tmp_path)
    assert alone.returncode == 1
    assert f"{folder}/producer.yaml:8:16: warning: steps.publish.produces[0]: dataset 'warehouse.orders' is " \
           "consumed by nobody" in alone.stderr
