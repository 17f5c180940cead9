"""DAG files → :class:`DagSpec`: YAML, then the JSON Schema, then meaning; every problem at once.

Schema errors are reworded from the validator's structured fields (``validator``,
``validator_value``, ``absolute_path``), never by parsing its message text, and each is placed
at the ``file:line:col`` of the value it is about.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scheduler import conditions, schemacheck, templates
from scheduler.calendars import Calendar, CalendarError, check_cron, resolve, zone
from scheduler.durations import DURATION_PATTERN, DurationError, seconds
from scheduler.errors import Problem, SpecError
from scheduler.gcpause import paused_gc
from scheduler.graph import find_cycle, is_ancestor
from scheduler.model import HANDLERS, Backoff, DagSpec, Mount, ParamSpec, Priority, StepSpec, memory_bytes
from scheduler.outages import Outage, OutageError, OutageSet
from scheduler.schedules import Batch, Schedule, ScheduleError
from scheduler.yamlsource import Source, YamlProblems, parse

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError

PARAM_TYPES = ("string", "int", "float", "bool", "date")
_TYPE_WORDS = {
    "object": "a mapping", "array": "a list", "string": "a string", "integer": "a whole number",
    "number": "a number", "boolean": "true or false", "null": "empty",
}


@cache
def schema() -> dict[str, Any]:
    return json.loads(schemacheck.schema_bytes())


@cache
def _validator() -> jsonschema.protocols.Validator:
    import jsonschema  # only for documents the compiled check rejects (its import alone costs 50 ms)

    cls = jsonschema.validators.validator_for(schema())
    cls.check_schema(schema())
    return cls(schema())


def load_file(path: str | Path, calendars: Mapping[str, Any] | None = None) -> tuple[DagSpec, bytes]:
    """Read and validate a DAG file; returns the spec and the exact bytes it came from.

    ``calendars`` are named calendars known beside the file (submitted with ``ctl calendar submit``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([Problem(str(path), 1, 1, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    return load_bytes(raw, str(path), calendars), raw


def load_bytes(raw: bytes | str, file: str, calendars: Mapping[str, Any] | None = None) -> DagSpec:
    """Validate a DAG document; raise :class:`SpecError` with every problem found."""
    with paused_gc():
        return _load(raw, file, calendars)


def _load(raw: bytes | str, file: str, calendars: Mapping[str, Any] | None) -> DagSpec:
    try:
        source = parse(raw, file)
        problems = _problems(source, calendars)
        if problems and source.recheck:  # placed where the pure-Python composer puts them (yamlsource.parse)
            source = parse(raw, file, fast=False)
            problems = _problems(source, calendars)
    except YamlProblems as exc:
        raise SpecError(exc.problems) from None
    if problems:
        raise SpecError(sorted(set(problems)))
    return _build(source.data)


def _problems(source: Source, calendars: Mapping[str, Any] | None) -> list[Problem]:
    if not isinstance(source.data, dict):
        return [source.problem((), f"a DAG file must be a mapping with 'name' and 'steps', "
                                   f"not {_type_word(source.data)}")]
    problems = list(_schema_problems(source))
    problems += list(_meaning_problems(source))
    # Time sections with schema errors are not checked again for meaning (one message per mistake).
    noisy = {p.path.split(".")[0].split("[")[0] for p in problems}
    problems += [p for p in _schedule_problems(source, calendars or {}) if p.path.split(".")[0] not in noisy]
    return problems


# --- schema ---------------------------------------------------------------------------------------


def _schema_problems(source: Source) -> Iterator[Problem]:
    """Every schema problem, worded by jsonschema's structured fields; the compiled check answers
    first, so a valid document (the common case, and the large one) never reaches jsonschema."""
    if schemacheck.fast_valid(source.data):
        return
    for error in _validator().iter_errors(source.data):
        yield from _reword(source, error)


def _reword(source: Source, error: ValidationError) -> Iterator[Problem]:
    path = tuple(error.absolute_path)
    kind = error.validator
    value = error.validator_value
    instance = error.instance
    if kind == "additionalProperties" and isinstance(instance, dict):
        allowed = list(error.schema.get("properties", {}))
        for extra in sorted(set(instance) - set(allowed)):
            close = difflib.get_close_matches(extra, allowed, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(allowed)}"
            yield source.problem((*path, extra), f"unknown field '{extra}'{hint}", key=True)
        return
    schema_path = [part for part in error.absolute_schema_path if part != "$ref"]
    if len(schema_path) >= 2 and schema_path[-2] == "propertyNames":
        # A bad key: jsonschema reports the key itself as the instance, at the mapping's path,
        # with the validator (pattern) of the propertyNames schema.
        yield source.problem((*path, instance), _name_message(path, instance), key=True)
        return
    if kind == "required":
        for missing in value:
            if missing not in instance:
                yield source.problem(path, f"missing required field '{missing}'")
        return
    if kind == "type":
        wanted = value if isinstance(value, list) else [value]
        words = " or ".join(_TYPE_WORDS.get(w, w) for w in wanted)
        if error.schema.get("pattern") == DURATION_PATTERN:
            words = "a duration like 30s, 5m, 2h, 1d, 1w"
        elif path and path[-1] == "memory":
            words = "a memory size like 256m or 1g"
        yield source.problem(path, f"should be {words}, not {_type_word(instance)}")
        return
    if kind == "enum":
        close = difflib.get_close_matches(str(instance), [str(v) for v in value], n=1, cutoff=0.5)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        yield source.problem(path, f"{instance!r} is not one of: {', '.join(map(str, value))}{hint}")
        return
    if kind == "pattern":
        yield source.problem(path, _pattern_message(path, instance))
        return
    messages = {
        "minimum": lambda: f"{instance!r} is too small; the minimum is {value}",
        "maximum": lambda: f"{instance!r} is too large; the maximum is {value}",
        "exclusiveMinimum": lambda: f"{instance!r} must be more than {value}",
        "minProperties": lambda: "needs at least one entry" if path != ("steps",) else "a DAG needs at least one step",
        "minLength": lambda: "must not be empty",
        "maxLength": lambda: f"is longer than {value} characters",
        "uniqueItems": lambda: "lists the same value twice",
    }
    message = messages.get(kind, lambda: error.message)()
    yield source.problem(path, message)


def _name_message(path: tuple[Any, ...], name: Any) -> str:
    if path == ("steps",):
        return (f"'{name}' is not a valid step name: use letters, digits, '-' and '_', "
                "starting with a letter or digit (at most 63 characters)")
    if path == ("params",):
        return f"'{name}' is not a valid param name: use letters, digits and '_', not starting with a digit"
    if path and path[-1] == "env":
        return (f"'{name}' is not a valid environment variable name: use letters, digits and '_', "
                "not starting with a digit")
    return f"'{name}' is not a valid key here"


def _pattern_message(path: tuple[Any, ...], value: Any) -> str:
    last = path[-1] if path else ""
    if path == ("name",):
        return f"{value!r} is not a valid DAG name: use lower-case letters, digits, '-' and '_'"
    if last in {"timeout", "initial", "max", "duration"}:
        return f"{value!r} is not a duration like 30s, 5m, 2h, 1d, 1w"
    if last == "memory":
        return f"{value!r} is not a memory size like 256m or 1g"
    if last == "working_dir":
        return f"{value!r} must be an absolute path (starting with /)"
    if last == "network":
        return f"{value!r} is not a network: use bridge, none or a network's name (letters, digits, '_', '.', '-')"
    if len(path) >= 2 and path[-2] == "depends_on":
        return f"{value!r} is not a valid step name"
    return f"{value!r} does not have the expected form"


def _type_word(value: Any) -> str:
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return f"{str(value).lower()} (true/false)"
    kind = {dict: "a mapping", list: "a list", str: "a string", int: "a whole number", float: "a number"}
    word = kind.get(type(value), type(value).__name__)
    shown = repr(value) if isinstance(value, str | int | float) and len(repr(value)) < 40 else ""
    return f"{word} {shown}".strip()


# --- meaning ---------------------------------------------------------------------------------------


def _meaning_problems(source: Source) -> Iterator[Problem]:
    data = source.data
    steps = data.get("steps") if isinstance(data.get("steps"), dict) else {}
    defaults = data.get("defaults") if isinstance(data.get("defaults"), dict) else {}
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    yield from _param_problems(source, params)
    known = templates.known_names(params)
    upstream: dict[str, list[str]] = {}
    for name, step in steps.items():
        if not isinstance(step, dict):
            continue
        at = ("steps", name)
        yield from _step_problems(source, at, step, defaults, known, f"step '{name}'")
        deps = step.get("depends_on")
        if isinstance(deps, list):
            good = []
            for index, dep in enumerate(deps):
                if not isinstance(dep, str):
                    continue
                if dep == name:
                    yield source.problem((*at, "depends_on", index), f"step '{name}' depends on itself")
                elif dep not in steps:
                    close = difflib.get_close_matches(dep, list(steps), n=1, cutoff=0.6)
                    hint = f"; did you mean '{close[0]}'?" if close else ""
                    yield source.problem((*at, "depends_on", index),
                                         f"step '{name}' depends on '{dep}', which is not defined{hint}")
                else:
                    good.append(dep)
            upstream[name] = good
        else:
            upstream[name] = []
    for name, step in steps.items():
        if isinstance(step, dict) and isinstance(step.get("when"), str):
            try:  # only the steps the condition names are looked for upstream (linear in the DAG's size)
                named = {n.partition(".")[0] for n in conditions.names(step["when"])} & upstream.keys()
                conditions.check(step["when"], params, {n for n in named if is_ancestor(upstream, name, n)})
            except conditions.ConditionError as exc:
                yield source.problem(("steps", name, "when"), str(exc))
    for key in HANDLERS:
        if isinstance(data.get(key), dict):
            yield from _step_problems(source, (key,), data[key], defaults, known, f"handler '{key}'")
    cycle = find_cycle(upstream)
    if cycle:
        # Each step in the path depends on the next; people read a cycle in run order.
        shown = " -> ".join(reversed(cycle))
        yield source.problem(("steps", cycle[0], "depends_on"), f"dependency cycle: {shown}")


def _step_problems(source: Source, at: tuple[Any, ...], step: dict[str, Any], defaults: dict[str, Any],
                   known: list[str], label: str) -> Iterator[Problem]:
    """What the schema cannot say about one step or handler (``label``: "step 'load'", "handler
    'on_failure'"), its defaults applied: image and command present and of the right form, every
    template in its command and env known, its backoff durations readable. Steps and handlers become
    the same StepSpec and are rendered the same way, so they are checked by this one function."""
    merged = {**defaults, **step}
    kind = label.split()[0]
    if "image" not in merged:
        yield source.problem(at, f"{label} has no image; set 'image' on the {kind} or in 'defaults'", key=True)
    if "command" not in merged:
        yield source.problem(at, f"{label} has no command; give it as a list, e.g. [\"echo\", \"hi\"]", key=True)
    command = merged.get("command")
    where = (*at, "command") if "command" in step else ("defaults", "command")
    if isinstance(command, str) and not merged.get("shell"):
        yield source.problem(where, "command is a string; write it as a list (exec form), "
                                    "e.g. [\"sh\", \"-c\", \"...\"], or set 'shell: true'")
    if isinstance(command, list) and merged.get("shell"):
        yield source.problem(where, "with 'shell: true' the command must be one string for sh -c")
    if isinstance(command, list) and not command:
        yield source.problem(where, "command is an empty list")
    for index, part in enumerate(command if isinstance(command, list) else [command]):
        if isinstance(part, str):
            yield from _template_problem(source, (*where, index) if isinstance(command, list) else where, part, known)
    # The env a step gets is the defaults' env overlaid with its own (see _step): check both parts.
    own_env = step.get("env") if isinstance(step.get("env"), dict) else {}
    default_env = defaults.get("env") if isinstance(defaults.get("env"), dict) else {}
    for key, value in {**default_env, **own_env}.items():
        if isinstance(value, str):
            env_at = (*at, "env", key) if key in own_env else ("defaults", "env", key)
            yield from _template_problem(source, env_at, value, known)
    if isinstance(merged.get("network"), str) and merged["network"].lower() == "host":
        yield source.problem((*at, "network") if "network" in step else ("defaults", "network"),
                             "network 'host' is not allowed: a step would share the worker host's network "
                             "(its loopback services, Redis included); use bridge, none or a named network")
    backoff = merged.get("retry_backoff")
    if isinstance(backoff, dict):
        backoff_at = (*at, "retry_backoff") if "retry_backoff" in step else ("defaults", "retry_backoff")
        yield from _duration_problems(source, backoff_at, backoff, ("initial", "max"))


def _template_problem(source: Source, path: tuple[Any, ...], text: str, known: list[str]) -> Iterator[Problem]:
    try:
        templates.check(text, known)
    except templates.TemplateError as exc:
        yield source.problem(path, str(exc))


def _duration_problems(source: Source, at: tuple[Any, ...], mapping: dict[str, Any],
                       fields: tuple[str, ...]) -> Iterator[Problem]:
    for key in fields:
        if isinstance(mapping.get(key), str):
            try:
                seconds(mapping[key])
            except DurationError as exc:
                yield source.problem((*at, key), str(exc))


def _param_problems(source: Source, params: dict[str, Any]) -> Iterator[Problem]:
    for name, decl in params.items():
        if not isinstance(decl, dict):
            continue
        ptype = decl.get("type", "string")
        if ptype not in PARAM_TYPES:
            continue  # the schema reports the type; checking values against it would only repeat that
        if "default" in decl:
            try:
                default = coerce_value(ptype, decl["default"])
            except ValueError as exc:
                yield source.problem(("params", name, "default"), f"default for param '{name}': {exc}")
            else:
                yield from _default_in_enum(source, name, ptype, decl, default)
            if decl.get("required"):
                yield source.problem(("params", name, "required"),
                                     f"param '{name}' is required and has a default; keep one of the two")
        for index, option in enumerate(decl.get("enum") or []):
            try:
                coerce_value(ptype, option)
            except ValueError as exc:
                yield source.problem(("params", name, "enum", index), f"enum value for param '{name}': {exc}")


def _default_in_enum(source: Source, name: str, ptype: str, decl: dict[str, Any], default: Any) -> Iterator[Problem]:
    enum = decl.get("enum")
    if not isinstance(enum, list) or not enum:
        return
    allowed = []
    for option in enum:
        try:
            allowed.append(coerce_value(ptype, option))
        except ValueError:
            return  # reported as a bad enum value
    if default not in allowed:
        yield source.problem(("params", name, "default"), f"default for param '{name}': {decl['default']!r} "
                                                          f"is not one of: {', '.join(map(str, enum))}")


def build_schedule(document: Mapping[str, Any], calendars: Mapping[str, Any] | None = None,
                   global_outages: Sequence[Outage] = ()) -> Schedule | None:
    """The DAG's schedule (None without one), as the daemon and ``ctl next`` both use it: its inline
    calendars over the named ones given, its own outages plus the global ones (which apply to every DAG)."""
    if not isinstance(document.get("schedule"), dict):
        return None
    schedule = Schedule.from_spec(document["schedule"],
                                  calendars={**(calendars or {}), **document.get("calendars", {})},
                                  outages=document.get("outages", {}), batch=document.get("batch"))
    if global_outages:
        schedule = replace(schedule, outages=OutageSet.of([*schedule.outages.outages, *global_outages]))
    return schedule


def _schedule_problems(source: Source, calendars: Mapping[str, Any]) -> Iterator[Problem]:
    """Crons, timezones, calendars and outages, each placed at its own key; then the whole schedule."""
    data = source.data
    schedule = data.get("schedule")
    found = False
    for name, outage in (data.get("outages") or {}).items() if isinstance(data.get("outages"), dict) else ():
        try:
            Outage.from_spec(name, outage)
        except OutageError as exc:
            found = True
            yield source.problem(("outages", name), str(exc))
    for name, calendar in (data.get("calendars") or {}).items() if isinstance(data.get("calendars"), dict) else ():
        try:
            resolve(calendar, {})
        except CalendarError as exc:
            found = True
            yield source.problem(("calendars", name), str(exc))
    if not isinstance(schedule, dict):
        if "batch" in data and isinstance(data["batch"], str):
            try:
                Batch.parse(data["batch"])
            except ScheduleError as exc:
                yield source.problem(("batch",), str(exc))
        return
    crons = schedule.get("cron")
    for index, cron in enumerate(crons if isinstance(crons, list) else [crons]):
        try:
            check_cron(cron)
        except CalendarError as exc:
            found = True
            yield source.problem(("schedule", "cron", index) if isinstance(crons, list) else ("schedule", "cron"),
                                 str(exc))
    if isinstance(schedule.get("timezone"), str):
        try:
            zone(schedule["timezone"])
        except CalendarError as exc:
            found = True
            yield source.problem(("schedule", "timezone"), str(exc))
    if isinstance(schedule.get("calendar"), str | dict):
        inline = data.get("calendars") if isinstance(data.get("calendars"), dict) else {}
        named = {**calendars, **inline}
        try:
            resolve(schedule["calendar"], _built(named))
        except CalendarError as exc:
            found = True
            hint = "" if isinstance(schedule["calendar"], dict) else (
                " (define it under 'calendars:' or submit it with `ctl calendar submit FILE`)")
            yield source.problem(("schedule", "calendar"), f"{exc}{hint}")
    defined = data.get("outages") if isinstance(data.get("outages"), dict) else {}
    names = schedule.get("outages") if isinstance(schedule.get("outages"), list) else []
    for index, name in enumerate(names):
        if isinstance(name, str) and name not in defined:
            found = True
            close = difflib.get_close_matches(name, list(defined), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else "; define it under 'outages:'"
            yield source.problem(("schedule", "outages", index), f"unknown outage '{name}'{hint}")
    if not found:
        try:
            build_schedule(data, calendars)
        except ScheduleError as exc:
            yield source.problem(("schedule",), str(exc).removeprefix("schedule: "))


def _built(named: Mapping[str, Any]) -> dict[str, Calendar]:
    built = {}
    for name, spec in named.items():
        try:
            built[name] = spec if isinstance(spec, Calendar) else Calendar.from_spec(name, spec)
        except CalendarError:
            continue  # reported where it is defined
    return built


# --- params --------------------------------------------------------------------------------------


def coerce_value(ptype: str, value: Any) -> Any:
    """A param value as its declared type; raises ValueError in people's words."""
    text = str(value).strip() if not isinstance(value, bool) else value
    if ptype == "string":
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if ptype == "int":
        if isinstance(value, (bool, float)):
            raise ValueError(f"{value!r} is not a whole number")
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a whole number") from None
    if ptype == "float":
        if isinstance(value, bool):
            raise ValueError(f"{value!r} is not a number")
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a number") from None
    if ptype == "bool":
        if isinstance(value, bool):
            return value
        lowered = str(value).lower()
        if lowered in {"true", "1", "yes"}:
            return True
        if lowered in {"false", "0", "no"}:
            return False
        raise ValueError(f"{value!r} is not true or false")
    if ptype == "date":
        import datetime as dt

        try:
            return dt.date.fromisoformat(str(text)).isoformat()
        except ValueError:
            raise ValueError(f"{value!r} is not a date like 2026-11-20") from None
    raise ValueError(f"unknown param type {ptype!r}")


def resolve_params(spec: DagSpec, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every declared param's value for a run: given ones (typed), else defaults; all problems at once."""
    from scheduler.errors import ParamError

    problems = []
    for name in given:
        if name not in spec.params:
            close = difflib.get_close_matches(name, list(spec.params), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else (
                f"; declared: {', '.join(spec.params)}" if spec.params else "; this DAG declares no params")
            problems.append(f"unknown param '{name}'{hint}")
    values: dict[str, Any] = {}
    for name, decl in spec.params.items():
        if name in given:
            try:
                values[name] = coerce_value(decl.type, given[name])
            except ValueError as exc:
                problems.append(f"param '{name}' ({decl.type}): {exc}")
                continue
            if decl.enum and values[name] not in [coerce_value(decl.type, o) for o in decl.enum]:
                allowed = ", ".join(map(str, decl.enum))
                problems.append(f"param '{name}' ({decl.type}): {given[name]!r} is not one of: {allowed}")
        elif decl.default is not None:
            values[name] = coerce_value(decl.type, decl.default)
        elif decl.required:
            problems.append(f"param '{name}' ({decl.type}) is required: give it with --param {name}=VALUE")
        else:
            values[name] = None
    if problems:
        raise ParamError(f"{spec.name}: " + f"\n{spec.name}: ".join(problems))
    return values


# --- building -------------------------------------------------------------------------------------


def _build(data: dict[str, Any]) -> DagSpec:
    defaults = data.get("defaults", {})
    steps = {name: _step(name, raw, defaults) for name, raw in data["steps"].items()}
    # Handlers run however the run ended (trigger rule 'always'), also when it was cancelled.
    handlers = {step_name: replace(_step(step_name, data[key], defaults), trigger_rule="always")
                for key, (step_name, _) in HANDLERS.items() if key in data}
    params = {
        name: ParamSpec(
            name=name,
            type=decl.get("type", "string"),
            default=decl.get("default"),
            required=bool(decl.get("required", False)),
            enum=tuple(decl.get("enum", ())),
            description=decl.get("description", ""),
        )
        for name, decl in data.get("params", {}).items()
    }
    return DagSpec(
        name=data["name"],
        steps=steps,
        params=params,
        description=data.get("description", ""),
        max_active_runs=data.get("max_active_runs"),
        priority=Priority(data["priority"]) if "priority" in data else None,
        tags=data.get("tags", {}),
        document=data,
        handlers=handlers,
    )


def _step(name: str, raw: dict[str, Any], defaults: dict[str, Any]) -> StepSpec:
    merged = {**defaults, **raw}
    env = {**defaults.get("env", {}), **raw.get("env", {})}
    tags = {**defaults.get("tags", {}), **raw.get("tags", {})}
    command = merged["command"]
    argv = (command,) if isinstance(command, str) else tuple(templates.to_text(c) for c in command)
    backoff = merged.get("retry_backoff", {})
    resources_ = merged.get("resources", {})
    return StepSpec(
        name=name,
        image=merged["image"],
        command=argv,
        shell=bool(merged.get("shell", False)),
        env={k: templates.to_text(v) for k, v in env.items()},
        working_dir=merged.get("working_dir"),
        depends_on=tuple(raw.get("depends_on", ())),
        retries=int(merged.get("retries", 0)),
        backoff=Backoff(
            initial=seconds(backoff.get("initial"), 10.0),
            factor=float(backoff.get("factor", 2.0)),
            max=seconds(backoff.get("max"), 3600.0),
            jitter=float(backoff.get("jitter", 0.1)),
        ),
        timeout=seconds(merged.get("timeout")),
        priority=Priority(merged["priority"]) if "priority" in merged else None,
        cpus=resources_.get("cpus"),
        memory=memory_bytes(resources_.get("memory")),
        tags=tags,
        pull=merged.get("pull", "never"),
        mounts=tuple(Mount(m["source"], m["target"], m.get("read_only", True)) for m in merged.get("mounts", ())),
        secrets={**defaults.get("secrets", {}), **raw.get("secrets", {})},
        trigger_rule=raw.get("trigger_rule", "all_success"),
        when=raw.get("when"),
        rerun_before_downstream=bool(raw.get("rerun_before_downstream", False)),
        pool=merged.get("pool"),
        pool_slots=int(merged.get("pool_slots", 1)),
        sla=seconds(raw.get("sla")),
        network=merged.get("network", "bridge"),
    )
