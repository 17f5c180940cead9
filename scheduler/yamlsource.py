"""Safe YAML with positions: every value keeps the ``line:col`` it came from.

The loader is YAML 1.2-flavoured where YAML 1.1 surprises people: only ``true``/``false`` are
booleans (``on``, ``no``, ``NO`` stay strings) and dates stay strings (``2026-11-20``), so
that what a user writes is what a container receives. It refuses what a DAG never needs and
an attacker might send: custom tags, duplicate keys, deep nesting and alias bombs.

Two composers, one answer. libyaml's C composer (``yaml.CSafeLoader``, in PyYAML's wheels) builds
the same node tree with the same marks ten times faster than the pure-Python one, so it reads every
file first. Only a file it finds clean (it composes, and the node checks below find nothing) is
taken from it; any problem in a file of up to ``EXACT_BYTES`` is found again by the pure-Python
composer, so that every message and position stays exactly what it always was (the golden tests);
a larger file (which pure Python would take minutes over) gets libyaml's own message and position.
Without libyaml, the pure-Python composer reads everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from scheduler.errors import Problem

MAX_BYTES = 8 * 1024 * 1024  # a 50,000-step DAG is about 4 MiB
EXACT_BYTES = 1024 * 1024  # up to this size, problems are worded by the pure-Python composer (see above)
MAX_DEPTH = 50
MAX_NODES = 50_000
_SCAN_DEPTH = 2 * MAX_DEPTH  # the scanner's guard; the node walk places the exact limit

_STANDARD_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "seq", "map", "merge")
}


class _Loader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1 booleans and timestamps, that stops scanning at absurd nesting.

    PyYAML's scanner slows down with the square of the nesting: a few thousand '[' take minutes.
    """

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= _SCAN_DEPTH:
            raise _TooDeep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= _SCAN_DEPTH:
            raise _TooDeep(self.get_mark())
        return super().add_indent(column)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in {
        "tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"}]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


_ODD_BREAKS = re.compile("[\ufeff\x85\u2028\u2029]")
_CBase: Any = getattr(yaml, "CSafeLoader", None)  # None when PyYAML was built without libyaml

if _CBase is not None:

    class _CLoader(_CBase):
        """libyaml's composer with the resolvers of :class:`_Loader` (libyaml stops at 1,000 levels of nesting
        by itself; the node walk places the exact limit)."""

    _CLoader.yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers
else:
    _CLoader = None  # type: ignore[misc,assignment]


@dataclass
class Source:
    """A parsed YAML document and its node tree, to locate any path in it."""

    file: str
    data: Any
    root: yaml.Node
    recheck: bool = False  # read by libyaml: a problem found in it is placed by parsing again with fast=False

    def locate(self, path: tuple[Any, ...], *, key: bool = False) -> tuple[int, int]:
        """1-based ``(line, col)`` of the value at ``path`` (of its key with ``key=True``)."""
        node: yaml.Node = self.root
        key_node: yaml.Node | None = None
        for part in path:
            child = _child(node, part)
            if child is None:
                break
            key_node, node = child
        target = key_node if key and key_node is not None else node
        return target.start_mark.line + 1, target.start_mark.column + 1

    def problem(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> Problem:
        line, col = self.locate(path, key=key)
        return Problem(self.file, line, col, format_path(path), message)


def _child(node: yaml.Node, part: Any) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(part):
                return key_node, value_node
        for key_node, value_node in node.value:  # merged keys (<<: *defaults)
            if key_node.tag == "tag:yaml.org,2002:merge":
                found = _child(value_node, part)
                if found:
                    return found
    elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


def format_path(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse(raw: bytes | str, file: str, *, fast: bool = True) -> Source:
    """Parse one YAML document; raise SpecError-ready problems as ``ValueError(list[Problem])``.

    ``fast``: libyaml may read it. Its tree is the pure-Python one except for where an empty value
    (``key:``) is placed, so a caller that finds a problem in a ``Source`` marked ``recheck``
    parses again with ``fast=False`` to place it as always (:func:`scheduler.spec.load_bytes`)."""
    if isinstance(raw, bytes):
        if len(raw) > MAX_BYTES:
            raise YamlProblems([Problem(file, 1, 1, "", f"file is {len(raw):,} bytes; the limit is {MAX_BYTES:,}")])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            line_start = raw.rfind(b"\n", 0, exc.start) + 1
            col = len(raw[line_start:exc.start].decode("utf-8")) + 1  # in characters, as everywhere else
            raise YamlProblems(
                [Problem(file, line, col, "", f"not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8")]
            ) from None
    else:
        text = raw
        if len(text) > MAX_BYTES:
            message = f"file is {len(text):,} characters; the limit is {MAX_BYTES:,}"
            raise YamlProblems([Problem(file, 1, 1, "", message)])
    text = text.removeprefix("\ufeff")
    if fast:
        try:
            read = _parse_fast(text, file, exact=len(text) <= EXACT_BYTES)
        except RecursionError:
            read = None  # a cycle through an alias: the pure-Python composer words it below
        if read is not None:
            return read
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # control characters: the reader checks the whole text first
        line = text.count("\n", 0, exc.position) + 1
        col = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise YamlProblems([Problem(file, line, col, "", f"YAML syntax error: control character "
                                                         f"#x{exc.character:02x} is not allowed")]) from None
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise _problem_at(file, mark, f"YAML syntax error: {_syntax_message(exc)}") from None
        except yaml.YAMLError as exc:
            raise YamlProblems([Problem(file, 1, 1, "", f"YAML error: {exc}")]) from None
        except RecursionError:
            raise YamlProblems([Problem(file, 1, 1, "", f"nesting is deeper than {MAX_DEPTH} levels")]) from None
        except _TooDeep as exc:
            raise _problem_at(file, exc.mark, f"nesting is deeper than {MAX_DEPTH} levels") from None
        if root is None:
            raise YamlProblems([Problem(file, 1, 1, "", "the file is empty; a DAG needs at least 'name' and 'steps'")])
        try:
            problems = list(_check_nodes(root, file))
            if problems:
                raise YamlProblems(problems)
            data = _plain(loader.construct_document(root))
        except RecursionError:  # an alias inside the node it names (`a: &x [*x]`) never ends
            raise _problem_at(file, _cycle_mark(root), "an alias inside the node its anchor names (like `&x [*x]`): "
                                                       "the document never ends") from None
        except yaml.MarkedYAMLError as exc:  # a standard tag on the wrong kind of node: `a: !!str {b: 1}`
            mark = exc.problem_mark or exc.context_mark
            raise _problem_at(file, mark, f"YAML error: {(exc.problem or str(exc)).strip()}") from None
    finally:
        loader.dispose()
    return Source(file, data, root)


def _problem_at(file: str, mark: Any, message: str) -> YamlProblems:
    """One problem at a YAML mark (1-based line and column; 1:1 without a mark)."""
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    return YamlProblems([Problem(file, line, col, "", message)])


def _cycle_mark(root: yaml.Node) -> Any:
    """Where the node that contains an alias to itself starts (its anchor), found without recursion."""
    on_path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            on_path.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in on_path:
            return node.start_mark
        if id(node) in done or not isinstance(node, yaml.CollectionNode):
            continue
        on_path.add(id(node))
        stack.append((node, True))
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        stack += [(child, False) for child in reversed(children)]
    return None


def _parse_fast(text: str, file: str, *, exact: bool) -> Source | None:
    """The document through libyaml when it is clean; None when the pure-Python composer must read it
    (no libyaml, or a problem in a file small enough for its exact wording). A problem in a larger file
    is raised here, from libyaml's mark."""
    if _CLoader is None:
        return None
    if yaml.reader.Reader.NON_PRINTABLE.search(text):
        return None  # the pure-Python reader words control characters (and finds them in any file quickly)
    if exact and _ODD_BREAKS.search(text):
        return None  # a BOM or a Unicode line break inside the text: the two composers count lines apart
    loader = _CLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            if exact:
                return None
            mark = exc.problem_mark or exc.context_mark
            raise _problem_at(file, mark, f"YAML syntax error: {_syntax_message(exc)}") from None
        except (yaml.YAMLError, RecursionError):
            if exact:
                return None
            raise YamlProblems([Problem(file, 1, 1, "", "YAML error: the file cannot be read as YAML")]) from None
        if root is None:
            return None
        data = _clean_data(loader, root, anchored="&" in text)
        if data is not _NOT_CLEAN:
            return Source(file, data, root, recheck=exact)
        problems = list(_check_nodes(root, file))
        if problems:
            if exact:
                return None
            raise YamlProblems(problems)
        try:
            data = _plain(loader.construct_document(root))
        except yaml.MarkedYAMLError as exc:  # a standard tag on the wrong kind of node: `a: !!str {b: 1}`
            if exact:
                return None
            mark = exc.problem_mark or exc.context_mark
            raise _problem_at(file, mark, f"YAML error: {(exc.problem or str(exc)).strip()}") from None
    finally:
        loader.dispose()
    return Source(file, data, root, recheck=exact)


def _syntax_message(exc: yaml.MarkedYAMLError) -> str:
    """PyYAML's problem, with its context and where that context starts when it is elsewhere."""
    problem = (exc.problem or "").strip()
    context = (exc.context or "").strip()
    if "'\\t'" in problem:
        return "found a tab character; indent YAML with spaces, not tabs"
    if problem == "but found another document":
        return "a DAG file holds one YAML document, but another one ('---') starts here"
    if problem == "mapping values are not allowed here":
        return f"{problem}; quote a value that contains ': '"
    if not problem:
        return context or "invalid YAML"
    mark, where = exc.context_mark, exc.problem_mark
    if context and mark is not None and (where is None or (mark.line, mark.column) != (where.line, where.column)):
        problem = f"{problem} {context} that starts at line {mark.line + 1}, column {mark.column + 1}"
    if problem.startswith("expected <block end>"):
        problem += "; check the indentation"
    return problem


class YamlProblems(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__("\n".join(map(str, problems)))


def _check_nodes(root: yaml.Node, file: str) -> Iterator[Problem]:
    """Duplicate keys, custom tags, depth and expanded size, checked on the node graph."""
    sizes: dict[int, int] = {}
    visited: set[int] = set()

    def where(node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    aliases = []

    def walk(node: yaml.Node, depth: int, path: tuple[Any, ...]) -> Iterator[Problem]:
        if depth > MAX_DEPTH:
            raise _TooDeep(node.start_mark)
        if id(node) in visited:  # an alias: its node was checked where it was anchored
            aliases.append(node)
            return
        visited.add(id(node))
        if node.tag not in _STANDARD_TAGS:
            yield Problem(file, *where(node), format_path(path), f"YAML tag '{_short_tag(node.tag)}' is not allowed")
            return
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    yield Problem(file, *where(key_node), format_path(path), "a key must be a plain value")
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    yield from walk(value_node, depth + 1, path)
                    continue
                name = key_node.value
                if name in seen:
                    yield Problem(
                        file, *where(key_node), format_path((*path, name)),
                        f"duplicate key '{name}' (first defined on line {seen[name]})",
                    )
                else:
                    seen[name] = key_node.start_mark.line + 1
                yield from walk(value_node, depth + 1, (*path, name))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                yield from walk(item, depth + 1, (*path, index))

    def size(node: yaml.Node) -> int:
        """Nodes after expanding aliases, memoized per node so a bomb costs no more to measure."""
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(v) for v in node.value)
        sizes[id(node)] = total = min(total, MAX_NODES + 1)
        return total

    try:
        found = list(walk(root, 0, ()))
    except _TooDeep as exc:
        yield Problem(file, exc.mark.line + 1, exc.mark.column + 1, "", f"nesting is deeper than {MAX_DEPTH} levels")
        return
    yield from found
    # Only aliases can make a document expand beyond its own nodes (whose number the size cap bounds):
    # a large plain DAG is fine, a small file that expands a hundredfold is a bomb.
    if not found and aliases and size(root) > MAX_NODES and size(root) > 2 * len(visited):
        yield Problem(
            file, 1, 1, "",
            f"the document expands to more than {MAX_NODES:,} values through anchors and aliases "
            "(a 'billion laughs' YAML bomb?)",
        )


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_PLAIN_SCALAR_TAGS = {"tag:yaml.org,2002:" + t for t in ("int", "float", "bool", "null")}
_NOT_CLEAN = object()


class _Unclean(Exception):
    """The one-pass reading met something it leaves to the full one (see :func:`_clean_data`)."""


def _clean_data(loader: Any, root: yaml.Node, *, anchored: bool) -> Any:
    """The document's plain data (as ``_plain(construct_document(root))`` gives it) in one pass over a
    plain node tree, or ``_NOT_CLEAN``.

    A large DAG is tens of thousands of nodes: checking them (:func:`_check_nodes`), constructing them
    (PyYAML's generic constructor) and making the result plain (:func:`_plain`) were three walks. This
    one does all three for the common tree: standard tags, scalar keys, no duplicate key, no alias or merge
    key, no deeper than ``MAX_DEPTH``. Anything else (any problem, any alias: ``anchored`` says whether
    the text could hold one) returns ``_NOT_CLEAN``, and the full walks place and word it as always."""
    seen: set[int] = set()
    scalar = loader.yaml_constructors

    def key_of(node: yaml.Node) -> Any:
        if type(node) is not yaml.ScalarNode:
            raise _Unclean
        if node.tag == _STR:
            return node.value
        if node.tag not in _PLAIN_SCALAR_TAGS:
            raise _Unclean  # a merge key (<<), a custom tag, ...
        key = scalar[node.tag](loader, node)
        return "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)

    def build(node: yaml.Node, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise _Unclean
        if anchored:
            if id(node) in seen:
                raise _Unclean  # an alias
            seen.add(id(node))
        kind, tag = type(node), node.tag
        if kind is yaml.ScalarNode:
            if tag == _STR:
                return node.value
            if tag not in _PLAIN_SCALAR_TAGS:
                raise _Unclean
            return scalar[tag](loader, node)
        if kind is yaml.MappingNode and tag == _MAP:
            pairs = node.value
            mapping = {key_of(k): build(v, depth + 1) for k, v in pairs}
            if len(mapping) != len(pairs):
                raise _Unclean  # a duplicate key (or two keys that read the same, like 1 and 0x1)
            if any(k.tag != _STR for k, _ in pairs) and len({k.value for k, _ in pairs}) != len(pairs):
                raise _Unclean  # keys written alike that read apart (True and !!str True): a duplicate too
            return mapping
        if kind is yaml.SequenceNode and tag == _SEQ:
            return [build(item, depth + 1) for item in node.value]
        raise _Unclean

    try:
        return build(root, 0)
    except Exception:  # _Unclean, or a scalar its constructor refuses (`!!int x`): the full walks say why
        return _NOT_CLEAN


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix("tag:yaml.org,2002:") if tag.startswith("tag:yaml.org,2002:") else tag


class _TooDeep(Exception):
    def __init__(self, mark: yaml.Mark):
        self.mark = mark


def _plain(value: Any) -> Any:
    """Keys as strings (YAML allows ``1:``), and no shared objects left from aliases."""
    if isinstance(value, dict):
        return {("null" if k is None else str(k).lower() if isinstance(k, bool) else str(k)): _plain(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
