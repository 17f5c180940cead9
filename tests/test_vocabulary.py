"""Python and Lua speak one language: every key builder and every state has one definition per side,
and these tests evaluate the Lua side in a real Redis and compare."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path

from scheduler.keys import Keys
from scheduler.model import TERMINAL_RUN_STATES, TERMINAL_STEP_STATES, RunState, StepState
from scheduler.store import RunStore, _lua

ROOT = Path(__file__).resolve().parent.parent


def lua(store: RunStore, body: str, *args: object) -> object:
    """Evaluate ``body`` after lib.lua with ARGV[1] = the store's prefix."""
    return store.r.eval(_lua("lib.lua") + body, 0, store.prefix, *args)


def test_every_key_builder_has_a_lua_twin_that_builds_the_same_key(store: RunStore) -> None:
    keys = Keys(store.prefix)
    methods = [name for name, _ in inspect.getmembers(Keys, inspect.isfunction) if not name.startswith("_")]
    assert len(methods) > 30
    sample = {"name": "etl", "version": 3, "run_id": "etl-20261120T000000-abc123", "step": "load[2]",
              "number": 4, "queue": "default", "due": "1795000000.000", "pool": "db",
                  "digest": "c207b563939561dc801c88dcca342183"}
    for name in methods:
        params = [p for p in inspect.signature(getattr(Keys, name)).parameters if p != "self"]
        args = [sample[p] for p in params]
        python = getattr(keys, name)(*args)
        assert python.startswith(f"{store.prefix}:"), name
        placeholders = ", ".join(f"ARGV[{i + 2}]" for i in range(len(args)))
        assert lua(store, f"return K.{name}({placeholders})", *args) == python, name


def test_lua_defines_no_key_helper_that_python_lacks() -> None:
    lua_names = set(re.findall(r"^function K\.(\w+)\(", _lua("lib.lua"), re.M))
    python_names = {name for name, _ in inspect.getmembers(Keys, inspect.isfunction) if not name.startswith("_")}
    assert lua_names == python_names


def test_no_script_builds_a_key_by_hand() -> None:
    """Outside the K helpers of lib.lua, no script concatenates the prefix into a key."""
    for path in sorted((ROOT / "scheduler/lua").glob("*.lua")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if path.name == "lib.lua" and line.startswith("function K."):
                continue
            assert "P .. '" not in line, f"{path.name}:{number}: {line.strip()}"


def test_state_vocabularies_agree(store: RunStore) -> None:
    steps = json.loads(lua(store, "return cjson.encode(STEP_STATES)"))
    runs = json.loads(lua(store, "return cjson.encode(RUN_STATES)"))
    assert steps == [s.value for s in StepState]
    assert runs == [s.value for s in RunState]
    step_done = json.loads(lua(store, "local t = {} for k in pairs(STEP_DONE) do table.insert(t, k) end "
                                      "table.sort(t) return cjson.encode(t)"))
    run_done = json.loads(lua(store, "local t = {} for k in pairs(RUN_DONE) do table.insert(t, k) end "
                                     "table.sort(t) return cjson.encode(t)"))
    waiting = json.loads(lua(store, "local t = {} for k in pairs(STEP_WAITING) do table.insert(t, k) end "
                                    "table.sort(t) return cjson.encode(t)"))
    failed = json.loads(lua(store, "local t = {} for k in pairs(FAILED) do table.insert(t, k) end "
                                   "table.sort(t) return cjson.encode(t)"))
    assert step_done == sorted(TERMINAL_STEP_STATES)
    assert run_done == sorted(TERMINAL_RUN_STATES)
    assert waiting == sorted(s for s in StepState if s.waiting)
    assert failed == sorted(s for s in StepState if s.failed)


def test_every_state_a_script_writes_is_in_the_vocabulary() -> None:
    """A literal state written into a step or run hash by any script is a known state."""
    known = {s.value for s in StepState} | {s.value for s in RunState}
    written = set()
    for path in (ROOT / "scheduler/lua").glob("*.lua"):
        written |= set(re.findall(r"'state', '(\w+)'", path.read_text()))
    assert written <= known, written - known


def test_one_door_to_redis() -> None:
    """No Redis access outside the store layer, no enqueue outside the engine, no inline Lua."""
    store_layer = {"store.py", "agenda.py", "staging.py", "leader.py", "dispatch.py", "replicas.py"}
    grep = subprocess.run(["grep", "-rnE", r"\.r\.|store\.r\b|\.register_script\(|redis\.call", "scheduler", "runner",
                           "--include=*.py"], cwd=ROOT, capture_output=True, text=True).stdout
    offenders = [line for line in grep.splitlines() if Path(line.split(":")[0]).name not in store_layer]
    assert offenders == []
    enqueues = subprocess.run(["grep", "-rn", r"dispatcher\.enqueue(", "scheduler", "runner", "--include=*.py"],
                              cwd=ROOT, capture_output=True, text=True).stdout
    assert [line for line in enqueues.splitlines() if not line.startswith("scheduler/engine.py")] == []
    inline = subprocess.run(["grep", "-rln", "redis.call(", "scheduler", "runner", "--include=*.py"],
                            cwd=ROOT, capture_output=True, text=True).stdout
    assert inline == ""
