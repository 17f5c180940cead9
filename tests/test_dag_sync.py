"""DAG folders kept in sync by real ``ctl scheduler`` processes: a bad file among good ones, files added,
changed, broken, fixed and deleted while it runs, git-sync's symlink swap, two schedulers on one folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scheduler.dagsync import DagFolder
from scheduler.store import RunStore

GOOD = """name: {name}
schedule: {{cron: "* * * * * *"}}
steps:
  s: {{image: conveyor/busybox:local, command: [echo, "{text}"]}}
"""
BAD = """name: {name}
schedule: {{cron: "* * * * * *"}}
steps:
  s: {{image: conveyor/busybox:local, command: [echo, x], depends_on: [nope]}}
"""


def ctl(settings, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}
    return subprocess.run([sys.executable, "-m", "scheduler.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def schedulers(settings, tmp_path) -> Iterator[Callable[..., subprocess.Popen]]:
    started: list[subprocess.Popen] = []
    logs: list = []
    env = {**os.environ, "REDIS_URL": settings.redis_url, "CONVEYOR_PREFIX": settings.prefix}

    def start(folder: Path) -> subprocess.Popen:
        log = open(tmp_path / f"scheduler-{len(started)}.log", "w")  # noqa: SIM115
        logs.append(log)
        process = subprocess.Popen([sys.executable, "-m", "scheduler.cli.main", "scheduler", "--dags", str(folder),
                                    "--sync-interval", "0.5", "--lookahead", "0"], env=env, stderr=log)
        started.append(process)
        return process

    yield start
    for process in started:
        process.terminate()
        process.wait(timeout=30)
    for log in logs:
        log.close()


def wait_until(check: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds it took for ``check`` to hold (fails after ``timeout``)."""
    began = time.monotonic()
    while not check():
        assert time.monotonic() - began < timeout, "not within the time"
        time.sleep(0.1)
    return time.monotonic() - began


def dags_json(settings) -> dict:
    result = ctl(settings, "dags", "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_bad_file_never_stops_the_good_ones(tmp_path, settings, store: RunStore, schedulers) -> None:
    folder = tmp_path / "dags"
    (folder / "team").mkdir(parents=True)
    (folder / "a.yaml").write_text(GOOD.format(name="alpha", text="a"))
    (folder / "b.yaml").write_text(BAD.format(name="bravo"))
    (folder / "team" / "c.yml").write_text(GOOD.format(name="charlie", text="c"))
    process = schedulers(folder)
    wait_until(lambda: len(store.run_ids("alpha", 10)) >= 3 and len(store.run_ids("charlie", 10)) >= 3, 30)
    assert process.poll() is None
    listing = dags_json(settings)
    assert {d["name"] for d in listing["dags"]} == {"alpha", "charlie"}
    [orphan] = listing["import_errors"]
    assert orphan["file"].endswith("dags/b.yaml")
    assert any(p.startswith(f"{folder}/b.yaml:4:") and "nope" in p for p in orphan["problems"]), orphan
    table = ctl(settings, "dags")
    assert "b.yaml:4:" in table.stderr and "alpha" in table.stdout and "Every second" in table.stdout


def test_changes_are_picked_up_within_seconds(tmp_path, settings, store: RunStore, schedulers) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    schedulers(folder)
    path = folder / "d.yaml"
    path.write_text(GOOD.format(name="delta", text="one"))  # added
    wait_until(lambda: store.dag_state("delta").get("latest") == "1")
    path.write_text(GOOD.format(name="delta", text="two"))  # changed
    wait_until(lambda: store.dag_state("delta").get("latest") == "2")
    path.write_text(BAD.format(name="delta"))  # broken: keeps version 2, shows the error beside it
    wait_until(lambda: any(e.get("dag") == "delta" for e in store.import_errors().values()))
    row = next(d for d in dags_json(settings)["dags"] if d["name"] == "delta")
    assert row["version"] == 2 and row["active"] and "nope" in " ".join(row["import_error"]["problems"])
    runs_before = len(store.run_ids("delta", 1000))
    wait_until(lambda: len(store.run_ids("delta", 1000)) > runs_before + 1)  # still fires, version 2
    path.write_text(GOOD.format(name="delta", text="three"))  # fixed
    wait_until(lambda: store.dag_state("delta").get("latest") == "3" and not store.import_errors())
    path.unlink()  # deleted: deactivated, history kept
    wait_until(lambda: store.dag_state("delta").get("deactivated") == "1")
    time.sleep(1.5)
    count = len(store.run_ids("delta", 1000))
    time.sleep(2.5)
    assert len(store.run_ids("delta", 1000)) == count > 0  # no new runs, old ones kept
    row = next(d for d in dags_json(settings)["dags"] if d["name"] == "delta")
    assert row["active"] is False and row["next_fire"] is None
    path.write_text(GOOD.format(name="delta", text="three"))  # back: active again
    wait_until(lambda: store.dag_state("delta").get("deactivated") is None)


def test_git_sync_symlink_swap(tmp_path, settings, store: RunStore, schedulers) -> None:
    """git-sync checks each revision out into a folder of its own and swaps a symlink to it."""
    root = tmp_path / "git"
    for rev, text in (("rev1", "one"), ("rev2", "two")):
        (root / rev).mkdir(parents=True)
        (root / rev / "e.yaml").write_text(GOOD.format(name="echo", text=text))
    (root / "rev2" / "f.yaml").write_text(GOOD.format(name="foxtrot", text="f"))
    link = tmp_path / "current"
    link.symlink_to(root / "rev1")
    schedulers(link)
    wait_until(lambda: store.dag_state("echo").get("latest") == "1")
    swap = tmp_path / "current.new"
    swap.symlink_to(root / "rev2")
    swap.replace(link)  # atomic rename, as git-sync does
    wait_until(lambda: store.dag_state("echo").get("latest") == "2" and store.dag_state("foxtrot").get("latest"))
    assert json.loads(store.r.get(store.keys.dag_version("echo", 2)))["path"] == f"{link}/e.yaml"


def test_two_schedulers_on_one_folder_create_each_version_once(tmp_path, store: RunStore, schedulers) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    schedulers(folder)
    schedulers(folder)
    for n in range(3):
        (folder / "g.yaml").write_text(GOOD.format(name="golf", text=f"v{n}"))
        wait_until(lambda n=n: store.dag_state("golf").get("latest") == str(n + 1), 10)
        time.sleep(1.2)  # both have looked
    assert store.dag_state("golf")["latest"] == "3"
    assert len(store.r.hgetall(store.keys.dag_shas("golf"))) == 3


def test_one_shot_sync_reports_every_file(tmp_path, settings, store: RunStore) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "h.yaml").write_text(GOOD.format(name="hotel", text="h"))
    (folder / "i.yaml").write_text(BAD.format(name="india"))
    result = ctl(settings, "dags", "sync", str(folder))
    assert result.returncode == 1
    assert "h.yaml: hotel: new version 1" in result.stdout
    assert "i.yaml: import error" in result.stderr and "i.yaml:4:" in result.stderr
    again = DagFolder(store, folder).sync()
    assert [r.action for r in again] == ["unchanged", "import_error"]


def test_ctl_dags_show_and_delete(tmp_path, settings, store: RunStore) -> None:
    folder = tmp_path / "dags"
    folder.mkdir()
    (folder / "j.yaml").write_text(GOOD.format(name="juliet", text="j"))
    assert ctl(settings, "dags", "sync", str(folder)).returncode == 0
    shown = ctl(settings, "dags", "show", "juliet")
    assert shown.returncode == 0 and "version: 1" in shown.stdout and 'echo, "j"' in shown.stdout
    refused = ctl(settings, "dags", "delete", "juliet")  # not a terminal: asks nothing, deletes nothing
    assert refused.returncode == 1 and store.dag_state("juliet")
    deleted = ctl(settings, "dags", "delete", "juliet", "--yes")
    assert deleted.returncode == 0 and "history kept" in deleted.stdout
    assert store.dag_state("juliet") == {} and "juliet" not in store.dag_names()
    missing = ctl(settings, "dags", "show", "juliet")
    assert missing.returncode == 1 and "no DAG named 'juliet'" in missing.stderr and "Traceback" not in missing.stderr
