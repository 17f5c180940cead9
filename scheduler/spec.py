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

from scheduler import advice, conditions, schemacheck, templates
from scheduler.calendars import Calendar, CalendarError, canonical_source, check_cron, resolve, zone
from scheduler.durations import DURATION_PATTERN, DurationError, seconds
from scheduler.errors import Problem, SpecError
from scheduler.gcpause import paused_gc
from scheduler.graph import find_cycle, is_ancestor
from scheduler.model import (
    HANDLERS,
    Backoff,
    DagSpec,
    Mount,
    ParamSpec,
    Priority,
    Sensor,
    StepSpec,
    memory_bytes,
)
from scheduler.outages import Outage, OutageError, OutageSet
from scheduler.schedules import Batch, Schedule, ScheduleError
from scheduler.yamlsource import Source, YamlProblems, parse

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.exceptions import ValidationError

PARAM_TYPES = ("string", "int", "float", "bool", "date")
DEFAULT_MAX_ITEMS = 1000  # instances of one mapped step (for_each), unless the step says max_items
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


def load_file(path: str | Path, calendars: Mapping[str, Any] | None = None, *,
              warnings: list[Problem] | None = None, offline: bool = False) -> tuple[DagSpec, bytes]:
    """Read and validate a DAG file; returns the spec and the exact bytes it came from.

    ``calendars`` are named calendars known beside the file (submitted with ``ctl calendar submit``);
    ``warnings`` and ``offline`` as :func:`load_bytes`.
    """
    raw = file_bytes(path)
    return load_bytes(raw, str(path), calendars, warnings=warnings, offline=offline), raw


def check_file(path: str | Path, calendars: Mapping[str, Any] | None = None, *,
               warnings: list[Problem] | None = None, offline: bool = False) -> dict[str, Any]:
    """Read and validate a DAG file as :func:`load_file` does, without building its spec (``ctl validate``
    uses none of it); returns the valid document."""
    return check_bytes(file_bytes(path), str(path), calendars, warnings=warnings, offline=offline)


def file_bytes(path: str | Path) -> bytes:
    """A DAG file's bytes; a file that cannot be read is a problem at 1:1 naming why."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise SpecError([Problem(str(path), 1, 1, "", f"cannot read the file: {exc.strerror or exc}")]) from None


def load_bytes(raw: bytes | str, file: str, calendars: Mapping[str, Any] | None = None, *,
               warnings: list[Problem] | None = None, offline: bool = False) -> DagSpec:
    """Validate a DAG document; raise :class:`SpecError` with every problem found.

    Warnings (valid text that probably means something else, see :mod:`scheduler.advice`) are
    appended to ``warnings`` when a list is given, whether or not the file has errors; they never
    make the file invalid. ``offline``: the named calendars are unknown (no Redis to ask), so a
    calendar name that is not built in is a warning instead of an error.
    """
    with paused_gc():  # a large DAG is millions of objects and no cycles (scheduler/gcpause.py)
        return _build(check_bytes(raw, file, calendars, warnings=warnings, offline=offline))


def check_bytes(raw: bytes | str, file: str, calendars: Mapping[str, Any] | None = None, *,
                warnings: list[Problem] | None = None, offline: bool = False) -> dict[str, Any]:
    """:func:`load_bytes` without building the spec: the valid document, or :class:`SpecError`."""
    with paused_gc():
        source, problems = _read(raw, file, calendars, offline)
        document = source.data
        del source  # its node tree is most of the objects: freed before the collector resumes and walks them
    if warnings is not None:
        warnings += sorted({p for p in problems if p.is_warning})
    problems = [p for p in problems if not p.is_warning]
    if problems:
        raise SpecError(sorted(set(problems)))
    return document


def _read(raw: bytes | str, file: str, calendars: Mapping[str, Any] | None,
          offline: bool) -> tuple[Source, list[Problem]]:
    """The parsed document and its problems (warnings included), placed as the pure-Python composer
    places them: a document libyaml read is parsed again when it has any (yamlsource.parse)."""
    try:
        source = parse(raw, file)
        problems = _problems(source, calendars, offline)
        if problems and source.recheck:
            source = parse(raw, file, fast=False)
            problems = _problems(source, calendars, offline)
    except YamlProblems as exc:
        raise SpecError(exc.problems) from None
    return source, problems


def _problems(source: Source, calendars: Mapping[str, Any] | None, offline: bool) -> list[Problem]:
    if not isinstance(source.data, dict):
        message = f"a DAG file must be a mapping with 'name' and 'steps', not {_type_word(source.data)}"
        if source.data is None:  # an empty document: its node's place differs between YAML composers
            raise SpecError([Problem(source.file, 1, 1, "", message)])
        raise SpecError([source.problem((), message)])
    problems = list(_schema_problems(source))
    problems += list(_meaning_problems(source))
    # Time sections with schema errors are not checked again for meaning (one message per mistake).
    noisy = {p.path.split(".")[0].split("[")[0] for p in problems}
    problems += [p for p in _schedule_problems(source, {} if calendars is None else calendars, offline)
                 if p.path.split(".")[0] not in noisy]  # (calendars may be read lazily: not asked for its length)
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
    if "cron" in path[-2:] and isinstance(instance, str | list):
        found = list(_cron_problems(source, path, instance))
        if found:
            yield from found
            return
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
        words = " or ".join(str(_TYPE_WORDS.get(w, w)) for w in wanted)
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


def _cron_problems(source: Source, path: tuple[Any, ...], value: str | list[Any]) -> Iterator[Problem]:
    """A cron the schema refused, in croniter's words with an example (not "not valid under any of the
    given schemas"); a list, item by item."""
    for index, cron in enumerate(value) if isinstance(value, list) else [(None, value)]:
        if not isinstance(cron, str):
            continue
        try:
            check_cron(cron)
        except CalendarError as exc:
            yield source.problem(path if index is None else (*path, index), str(exc))


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
    if len(path) >= 2 and path[-2] in {"produces", "on"}:
        return (f"{value!r} is not a dataset name: use letters, digits and . _ - / : (starting with a letter or "
                "digit, at most 200 characters), e.g. warehouse.orders or s3://bucket/path")
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
    declared = _declared_outputs(steps)
    graph = {name: [d for d in step.get("depends_on") or [] if isinstance(d, str) and d in steps and d != name]
             if isinstance(step, dict) and isinstance(step.get("depends_on"), list) else []
             for name, step in steps.items()}
    for name, step in steps.items():
        if not isinstance(step, dict):
            continue
        at = ("steps", name)
        refs = _OutputRefs(name, _Ancestors(graph, name), declared, steps, "for_each" in step)
        if "for_each" in step:
            yield from _for_each_problems(source, at, step["for_each"], params, refs)
        for key in ("max_parallel", "max_items"):
            if key in step and "for_each" not in step:
                yield source.problem((*at, key), f"'{key}' applies only to a step with for_each", key=True)
        yield from _step_problems(source, at, step, defaults, known, f"step '{name}'", refs)
        if isinstance(step.get("wait_for"), list):
            for index, wait in enumerate(step["wait_for"]):
                if isinstance(wait, dict):
                    yield from _duration_problems(source, (*at, "wait_for", index), wait, ("timeout", "interval"),
                                                  positive=True)
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
                named = {_condition_step(n) for n in conditions.names(step["when"])} & upstream.keys()
                conditions.check(step["when"], params, {n for n in named if is_ancestor(upstream, name, n)},
                                 declared)
            except conditions.ConditionError as exc:
                yield source.problem(("steps", name, "when"), str(exc))
    for key in HANDLERS:
        if isinstance(data.get(key), dict):
            yield from _step_problems(source, (key,), data[key], defaults, [*known, *templates.HANDLER_NAMES],
                                      f"handler '{key}'")
    cycle = find_cycle(upstream)
    if cycle:
        # Each step in the path depends on the next; people read a cycle in run order.
        shown = " -> ".join(reversed(cycle))
        yield source.problem(("steps", cycle[0], "depends_on"), f"dependency cycle: {shown}")


def _step_problems(source: Source, at: tuple[Any, ...], step: dict[str, Any], defaults: dict[str, Any],
                   known: list[str], label: str, refs: _OutputRefs | None = None) -> Iterator[Problem]:
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
    if isinstance(merged.get("image"), str):
        yield from _image_problems(source, (*at, "image") if "image" in step else ("defaults", "image"),
                                   merged["image"], known)
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
            yield from _template_problem(source, (*where, index) if isinstance(command, list) else where, part, known,
                                         refs)
    # The env a step gets is the defaults' env overlaid with its own (see _step): check both parts.
    own_env: dict[str, Any] = step["env"] if isinstance(step.get("env"), dict) else {}
    default_env: dict[str, Any] = defaults["env"] if isinstance(defaults.get("env"), dict) else {}
    for key, value in {**default_env, **own_env}.items():
        if isinstance(value, str):
            env_at = (*at, "env", key) if key in own_env else ("defaults", "env", key)
            yield from _template_problem(source, env_at, value, known, refs)
    if isinstance(merged.get("network"), str) and merged["network"].lower() == "host":
        yield source.problem((*at, "network") if "network" in step else ("defaults", "network"),
                             "network 'host' is not allowed: a step would share the worker host's network "
                             "(its loopback services, Redis included); use bridge, none or a named network")
    backoff = merged.get("retry_backoff")
    if isinstance(backoff, dict):
        backoff_at = (*at, "retry_backoff") if "retry_backoff" in step else ("defaults", "retry_backoff")
        yield from _duration_problems(source, backoff_at, backoff, ("initial", "max"))


def _image_problems(source: Source, path: tuple[Any, ...], image: str, known: list[str]) -> Iterator[Problem]:
    """Templates in an image may name params only: the image is part of what a run is (``ctl diff``,
    pinned reruns), chosen when the run is created, not a per-step or per-attempt value."""
    try:
        used = templates.names_in(image)
    except templates.TemplateError as exc:
        yield source.problem(path, str(exc))
        return
    if not used:
        return  # a plain image (every step of most DAGs)
    params = [name for name in known if name.startswith("params.")]
    for name in used:
        if name in templates.BUILTINS:
            yield source.problem(path, f"'{{{{ {name} }}}}' cannot be used in an image: image templates may name "
                                       "params only, e.g. \"myorg/etl:{{ params.tag }}\"")
            return
    if params:
        yield from _template_problem(source, path, image, params)
    elif used:
        yield source.problem(path, f"unknown template variable '{used[0]}'; this DAG declares no params")


def _condition_step(name: str) -> str:
    """The step a condition's name reads: ``STEP.exit_code``, ``steps.STEP.outputs.NAME``."""
    if name.startswith("steps.") and name.count(".") == 3:
        return name.split(".")[1]
    return name.partition(".")[0]


class _Ancestors:
    """The steps upstream of one step, directly or not, looked for as asked: a chain of 50,000 steps has
    1.25 billion (step, ancestor) pairs, so the sets are never all built (validation stays linear)."""

    def __init__(self, upstream: Mapping[str, list[str]], step: str):
        self.upstream, self.step = upstream, step

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and is_ancestor(self.upstream, self.step, name)


def _declared_outputs(steps: Mapping[str, Any]) -> dict[str, list[str]]:
    """The declared output names of each step that declares some (the well-formed ones; the schema reports
    the rest). Steps without outputs are left out: the lookups that follow are per step, so they stay
    proportional to the few steps with outputs, not to the DAG."""
    found = {name: list(dict.fromkeys(o for o in step.get("outputs") or [] if isinstance(o, str)))
             if isinstance(step, dict) and isinstance(step.get("outputs"), list) else []
             for name, step in steps.items()}
    return {name: outputs for name, outputs in found.items() if outputs}


class _OutputRefs:
    """What a step may read as ``{{ steps.STEP.outputs.NAME }}``: the declared outputs of its ancestors."""

    def __init__(self, step: str, ancestors: _Ancestors, declared: Mapping[str, list[str]],
                 steps: Mapping[str, Any], mapped: bool = False):
        self.step, self.ancestors, self.declared, self.steps = step, ancestors, declared, steps
        self.mapped = mapped  # a for_each step: {{ item }}, {{ item.KEY }} and {{ index }} are known

    def names(self) -> list[str]:
        # Only steps that declare outputs are looked for upstream (most DAGs have few or none).
        return [templates.output_name(a, o) for a in sorted(self.declared) if a in self.ancestors
                for o in self.declared[a]]

    def problem(self, name: str) -> str | None:
        """Why ``name`` (an output reference, an item name) cannot be read here, or None when it can."""
        if templates.is_item(name):
            return None if self.mapped else (f"'{{{{ {name} }}}}' is only known in a step with for_each (each "
                                             "instance's element and index)")
        ref = templates.step_ref(name)
        if ref is None:
            return None
        step, output = ref
        if step not in self.steps:
            close = difflib.get_close_matches(step, self.steps, n=1, cutoff=0.6)
            return f"'{name}': no step named '{step}'" + (f"; did you mean '{close[0]}'?" if close else "")
        if step not in self.ancestors:
            return (f"'{name}': step '{step}' is not upstream of '{self.step}'; a step reads only the outputs of "
                    f"steps it depends on, directly or not (add '{step}' to its depends_on)")
        outputs = self.declared.get(step, [])
        if output not in outputs:
            listed = f"; its outputs: {', '.join(outputs)}" if outputs else "; it declares no outputs"
            return f"'{name}': step '{step}' declares no output '{output}'{listed}"
        return None


_FOR_EACH_FORMS = "a list, '{{ steps.STEP.outputs.NAME }}' (a JSON array) or '{{ params.NAME }}' (a JSON array)"


def for_each_source(value: Any) -> dict[str, str] | None:
    """What a valid ``for_each`` runs over, as the store keeps it: ``{"items": JSON}``, ``{"step": S,
    "output": N}`` or ``{"param": P}``; None for anything else."""
    if isinstance(value, list):
        return {"items": json.dumps(value)}
    name = templates.only_name(value) if isinstance(value, str) else None
    if name is None:
        return None
    ref = templates.step_ref(name)
    if ref:
        return {"step": ref[0], "output": ref[1]}
    if name.startswith("params."):
        return {"param": name.removeprefix("params.")}
    return None


def _for_each_problems(source: Source, at: tuple[Any, ...], value: Any, params: Mapping[str, Any],
                       refs: _OutputRefs) -> Iterator[Problem]:
    where = (*at, "for_each")
    if not isinstance(value, str | list):
        return  # the schema says what it should be
    found = for_each_source(value)
    if found is None:
        yield source.problem(where, f"for_each takes {_FOR_EACH_FORMS}, not {_type_word(value)}")
    elif "step" in found:
        problem = refs.problem(templates.output_name(found["step"], found["output"]))
        if problem:
            yield source.problem(where, problem)
    elif "param" in found:
        decl = params.get(found["param"])
        if not isinstance(decl, dict):
            yield source.problem(where, f"unknown param '{found['param']}' in for_each")
        elif decl.get("type", "string") != "string":
            kind = _TYPE_NAMES.get(str(decl.get("type")), "not a list")
            yield source.problem(where, f"param '{found['param']}' is {kind}, not a list; for_each needs a "
                                        "string param holding a JSON array")


_TYPE_NAMES = {"int": "a whole number", "float": "a number", "bool": "true or false", "date": "a date"}


def _template_problem(source: Source, path: tuple[Any, ...], text: str, known: list[str],
                      refs: _OutputRefs | None = None) -> Iterator[Problem]:
    try:
        if refs is not None:
            used = templates.names_in(text)
            for name in used:
                problem = refs.problem(name)
                if problem:
                    yield source.problem(path, problem)
                    return
            # The output references and item names it uses passed refs.problem: known. Every readable
            # output (an upstream search per producer) is listed only to word a problem (suggestions).
            items = [n for n in used if templates.is_item(n)]
            if all(n in known or n in items or templates.step_ref(n) for n in used):
                return  # what templates.check would answer, without reading the text again
            known = [*known, *refs.names(), *items]
        templates.check(text, known)
    except templates.TemplateError as exc:
        yield source.problem(path, str(exc))


def _duration_problems(source: Source, at: tuple[Any, ...], mapping: dict[str, Any],
                       fields: tuple[str, ...], *, positive: bool = False) -> Iterator[Problem]:
    """``positive``: zero is refused too (a wait checked again every 0 s, or timing out at once)."""
    for key in fields:
        if isinstance(mapping.get(key), str):
            try:
                if not seconds(mapping[key]) and positive:
                    yield source.problem((*at, key), f"'{key}' must be longer than 0s")
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
    if not isinstance(document.get("schedule"), dict) or "cron" not in document["schedule"]:
        return None  # none, or only dataset triggers (schedule: {on: [...]}, scheduler/datasets.py)
    schedule = Schedule.from_spec(document["schedule"],
                                  calendars={**(calendars or {}), **document.get("calendars", {})},
                                  outages=document.get("outages", {}), batch=document.get("batch"))
    if global_outages:
        schedule = replace(schedule, outages=OutageSet.of([*schedule.outages.outages, *global_outages]))
    return schedule


def _schedule_problems(source: Source, calendars: Mapping[str, Any], offline: bool = False) -> Iterator[Problem]:
    """Crons, timezones, calendars and outages, each placed at its own key; then the whole schedule.
    Warnings (:mod:`scheduler.advice`) come out as problems of severity "warning"."""
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
        holidays = calendar.get("holidays") if isinstance(calendar, dict) else None
        for index, code in enumerate(holidays if isinstance(holidays, list) else [holidays]):
            hint = advice.uk_calendar(code) if isinstance(code, str) else None
            if hint:
                at = ("calendars", name, "holidays", *((index,) if isinstance(holidays, list) else ()))
                yield _warning(source, at, hint)
    if not isinstance(schedule, dict):
        if "batch" in data and isinstance(data["batch"], str):
            try:
                Batch.parse(data["batch"])
            except ScheduleError as exc:
                yield source.problem(("batch",), str(exc))
        return
    if "cron" not in schedule:
        return  # dataset triggers only (schedule: {on: [...]})
    crons = schedule.get("cron")
    for index, cron in enumerate(crons if isinstance(crons, list) else [crons]):
        at = ("schedule", "cron", index) if isinstance(crons, list) else ("schedule", "cron")
        try:
            check_cron(cron)
        except CalendarError as exc:
            found = True
            yield source.problem(at, str(exc))
            continue
        hint = advice.quartz_cron(cron)
        if hint:
            yield _warning(source, at, hint)
    if isinstance(schedule.get("timezone"), str):
        try:
            zone(schedule["timezone"])
        except CalendarError as exc:
            found = True
            yield source.problem(("schedule", "timezone"), str(exc))
    if isinstance(schedule.get("calendar"), str | dict):
        inline = data.get("calendars") if isinstance(data.get("calendars"), dict) else {}
        named = {**calendars, **inline}
        chosen = schedule["calendar"]
        hint = advice.uk_calendar(chosen) if isinstance(chosen, str) else None
        if hint and chosen not in named:
            yield _warning(source, ("schedule", "calendar"), hint)
        try:
            if offline and isinstance(chosen, str) and chosen not in named and not _builtin(chosen):
                found = True  # not built in: a named calendar, which only Redis knows
                yield _warning(source, ("schedule", "calendar"),
                               f"named calendar {chosen!r}: cannot check offline (set REDIS_URL)")
            else:
                resolve(chosen, _built(named))
        except CalendarError as exc:
            found = True
            hint = "" if isinstance(schedule["calendar"], dict) else (
                " (define it under 'calendars:' or submit it with `ctl calendar submit FILE`)")
            yield source.problem(("schedule", "calendar"), f"{exc}{hint}")
    defined = data.get("outages") if isinstance(data.get("outages"), dict) else {}
    names: list[Any] = schedule["outages"] if isinstance(schedule.get("outages"), list) else []
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


def _warning(source: Source, path: tuple[Any, ...], message: str) -> Problem:
    return replace(source.problem(path, message), severity="warning")


def _builtin(name: str) -> bool:
    """Whether ``name`` is (or misspells a part of) a built-in source: ``GB-XX`` is a bad subdivision of
    GB, reported as such, not a named calendar."""
    try:
        canonical_source(name)
    except CalendarError as exc:
        return "subdivision" in str(exc)
    return True


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
        outputs=tuple(raw.get("outputs", ())),
        for_each=for_each_source(raw["for_each"]) if "for_each" in raw else None,
        max_parallel=raw.get("max_parallel"),
        max_items=int(raw.get("max_items", DEFAULT_MAX_ITEMS)),
        sensor=_sensor(raw.get("sensor")),
        wait_for=tuple(_wait(w) for w in raw.get("wait_for", ())),
        produces=tuple(raw.get("produces", ())),
        network=merged.get("network", "bridge"),
    )


WAIT_TIMEOUT, WAIT_INTERVAL = 6 * 3600.0, 30.0


def _wait(raw: dict[str, Any]) -> dict[str, Any]:
    """One ``wait_for`` entry with its defaults: the whole run, of the same logical date, in success."""
    return {"dag": raw["dag"], "step": raw.get("step", ""), "logical_date": raw.get("logical_date", "same"),
            "state": raw.get("state", "success"), "timeout": seconds(raw.get("timeout"), WAIT_TIMEOUT),
            "interval": seconds(raw.get("interval"), WAIT_INTERVAL)}


def _sensor(raw: dict[str, Any] | None) -> Sensor | None:
    if raw is None:
        return None
    return Sensor(interval=seconds(raw["interval"]) or 0.0, timeout=seconds(raw.get("timeout")),
                  not_ready_exit_code=int(raw.get("not_ready_exit_code", 100)))
