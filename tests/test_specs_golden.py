"""Golden error tests: each broken DAG in ``tests/specs/invalid/`` with the exact lines it must produce.

``NN-name.yaml`` is the DAG and ``NN-name.expected`` the lines, ``file:line:col: path: message`` with the
file relative to the repository root. A case too big to commit (``NN-name.seed``) is grown from its seed
into a temporary copy of that layout. ``UPDATE_GOLDEN=1`` rewrites the ``.expected`` files from what the
loader says now: review every changed line before committing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import pytest

from scheduler.errors import SpecError
from scheduler.spec import load_file
from scheduler.yamlsource import MAX_BYTES

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path("tests/specs/invalid")  # relative to ROOT: the file names in messages are
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


def _too_large(seed: bytes) -> bytes:
    """The seed, then comment lines up to one byte over the limit."""
    pad = MAX_BYTES + 1 - len(seed)
    line = b"#" + b"." * 62 + b"\n"
    return seed + line * (pad // len(line)) + b"#" * (pad % len(line))


Run = Callable[[str], "subprocess.CompletedProcess[str]"]
GENERATORS: dict[str, Callable[[bytes], bytes]] = {"62-too-large": _too_large}
CASES = sorted({p.name.split(".")[0] for p in (ROOT / CORPUS).iterdir() if p.suffix in {".yaml", ".seed"}})


def _rel(name: str) -> str:
    return f"{CORPUS.as_posix()}/{name}.yaml"


def _expected(name: str) -> list[str]:
    path = ROOT / CORPUS / f"{name}.expected"
    if not path.exists():
        assert UPDATE, f"{path} is missing: write it, or run with UPDATE_GOLDEN=1 and review it"
        return []
    return path.read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Where each case runs from: the repository, or a temporary tree for generated files."""
    dirs = {}
    for name in CASES:
        if name in GENERATORS:
            work = tmp_path_factory.mktemp(name)
            (work / CORPUS).mkdir(parents=True)
            seed = (ROOT / CORPUS / f"{name}.seed").read_bytes()
            (work / _rel(name)).write_bytes(GENERATORS[name](seed))
            dirs[name] = work
        else:
            dirs[name] = ROOT
    return dirs


def _ctl(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"FORCE_COLOR", "CONVEYOR_DEBUG"}}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def cli_results(workdirs: dict[str, Path]) -> Run:
    """``ctl validate FILE`` for every case, run a few at a time (each start costs about a second)."""
    pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2))
    futures = {name: pool.submit(_ctl, ["validate", _rel(name)], workdirs[name]) for name in CASES}
    pool.shutdown(wait=False)

    @cache
    def result(name: str) -> subprocess.CompletedProcess[str]:
        return futures[name].result()

    return result


def test_corpus_is_complete() -> None:
    assert len(CASES) >= 45
    assert set(GENERATORS) <= set(CASES)
    for name in CASES:
        assert (ROOT / _rel(name)).exists() != (name in GENERATORS), name
        assert (ROOT / CORPUS / f"{name}.expected").exists() or UPDATE, name
    orphans = {p.stem for p in (ROOT / CORPUS).glob("*.expected")} - set(CASES)
    assert not orphans


@pytest.mark.parametrize("name", CASES)
def test_load_file_reports_exactly(name: str, workdirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdirs[name])
    with pytest.raises(SpecError) as caught:
        load_file(_rel(name))
    lines = [str(p) for p in caught.value.problems]
    if UPDATE:
        (ROOT / CORPUS / f"{name}.expected").write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    assert lines == _expected(name)
    assert all(p.file == _rel(name) and p.line >= 1 and p.col >= 1 for p in caught.value.problems)


@pytest.mark.parametrize("name", CASES)
def test_ctl_validate_reports_exactly(name: str, cli_results: Run) -> None:
    done = cli_results(name)
    assert "Traceback" not in done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == _expected(name)
    assert done.returncode == 1


def test_ctl_validate_reports_every_file(workdirs: dict[str, Path]) -> None:
    names = ["08-duplicate-key", "37-unknown-dependency", "69-several-problems", "64-empty-file"]
    done = _ctl(["validate", *map(_rel, names), "examples/etl.yaml"], ROOT)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [line for name in names for line in _expected(name)]
    assert done.stdout.splitlines() == ["examples/etl.yaml: ok (etl, 4 steps)"]


def test_ctl_validate_json_lists_every_file() -> None:
    names = ["39-cycle-two-steps", "70-several-problems-nested"]
    done = _ctl(["validate", "--output", "json", *map(_rel, names), "examples/etl.yaml"], ROOT)
    assert done.returncode == 1
    results = json.loads(done.stdout)
    assert [r["file"] for r in results] == [*map(_rel, names), "examples/etl.yaml"]
    for name, result in zip(names, results, strict=False):
        shown = [f"{p['file']}:{p['line']}:{p['col']}: {p['path']}: {p['message']}" for p in result["problems"]]
        assert shown == _expected(name)
    assert results[-1]["problems"] == []


EXAMPLES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_loads(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    spec, raw = load_file(example)
    assert spec.steps and raw


def test_ctl_validate_accepts_every_example() -> None:
    assert EXAMPLES
    done = _ctl(["validate", *EXAMPLES], ROOT)
    assert (done.returncode, done.stderr) == (0, "")
    assert len(done.stdout.splitlines()) == len(EXAMPLES)


def test_a_file_of_exactly_the_limit_is_read(tmp_path: Path) -> None:
    seed = (ROOT / CORPUS / "62-too-large.seed").read_bytes()
    path = tmp_path / "limit.yaml"
    path.write_bytes(_too_large(seed)[:-1])
    assert path.stat().st_size == MAX_BYTES
    spec, _ = load_file(path)
    assert spec.name == "demo"


def test_ctl_validate_prints_keys_verbatim(tmp_path: Path) -> None:
    path = tmp_path / "emoji.yaml"
    path.write_text("name: demo\nsteps:\n  hello:\n    image: x\n    command: [echo]\n    ':smile:': 1\n")
    done = _ctl(["validate", str(path)], tmp_path)
    assert "':smile:'" in done.stderr
