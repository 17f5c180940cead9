"""The DAG schema as compiled Python: a yes/no answer in microseconds per step, cached between runs.

jsonschema words problems well but walks a 5,000-step document in over a second and costs 80 ms to
import and build. fastjsonschema turns the schema into plain Python functions: this module asks them
whether a document is valid and, only when it is not, :mod:`scheduler.spec` asks jsonschema for every
problem in people's words. So the compiled check only has to be at least as strict as jsonschema on
what it accepts (tests/test_schemacheck.py checks that on the golden and fuzzed documents); when it
rejects something jsonschema accepts, jsonschema's answer (none) wins.

Generating and compiling the validator costs ~60 ms, so its code object is cached on disk, keyed by
the schema's bytes, the fastjsonschema version and the interpreter's bytecode magic, in
``$CONVEYOR_CACHE_DIR`` (default ``$XDG_CACHE_HOME/conveyor`` or ``~/.cache/conveyor``). The cache is
read only from a directory and file that belong to this user and that nobody else may write; anything
unusual (no fastjsonschema, a read-only home, a foreign file) means compiling in memory, or falling back
to jsonschema alone: never an error.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import os
import stat
import tempfile
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

SCHEMA_FILE = "dag.schema.json"
# fastjsonschema knows drafts 4, 6 and 7; every keyword our 2020-12 schema uses means the same in 7
# ($defs is reached by JSON pointer like any other member).
COMPILED_DRAFT = "http://json-schema.org/draft-07/schema#"
CODE_OPTIONS = b"formats=0 defaults=0 names=0"  # part of the cache key: code compiled otherwise is never read
# The generated code names each value it enters for its error message, with a ``str.format(**locals())``
# per list item or mapping entry: half of its time on a large DAG. Only its yes/no is read here (jsonschema
# words the problems), so the names are left unformatted (a name then reads "[{data_x}]"; nobody sees it).
_NAMING = ".format(**locals())"


def schema_bytes() -> bytes:
    return resources.files("schemas").joinpath(SCHEMA_FILE).read_bytes()


def fast_valid(document: Any) -> bool | None:
    """True if the compiled schema accepts ``document``, False if not, None if no compiled check exists."""
    check = compiled()
    if check is None:
        return None
    try:
        check(document)
    except Exception:  # fastjsonschema's JsonSchemaValueException, or anything it did not expect
        return False
    return True


@cache
def compiled() -> Callable[[Any], Any] | None:
    try:
        import fastjsonschema
    except ImportError:
        return None
    raw = schema_bytes()
    key = hashlib.sha256(raw + fastjsonschema.VERSION.encode() + _magic() + CODE_OPTIONS).hexdigest()[:32]
    code = _read_cache(key)
    if code is None:
        try:
            code = _compile(raw)
        except Exception:  # a schema fastjsonschema cannot compile: jsonschema alone then
            return None
        _write_cache(key, code)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # our own schema's generated code, compiled here or read from our own cache
    return namespace[_entry_name(namespace)]


def _compile(raw: bytes) -> Any:
    import fastjsonschema

    schema = json.loads(raw)
    schema["$schema"] = COMPILED_DRAFT
    # Formats are not asserted by jsonschema's default validator either; and the check must only look:
    # fastjsonschema would otherwise write the schema's "default" values into the document.
    source = fastjsonschema.compile_to_code(schema, use_formats=False, use_default=False).replace(_NAMING, "")
    return compile(source, f"<compiled {SCHEMA_FILE}>", "exec")


def _entry_name(namespace: dict[str, Any]) -> str:
    # The generated module's first function validates the root; the others are its $defs.
    names = [n for n, v in namespace.items() if n.startswith("validate") and callable(v)]
    return min(names, key=len)


def _magic() -> bytes:
    from importlib.util import MAGIC_NUMBER

    return MAGIC_NUMBER


def cache_dir() -> Path:
    explicit = os.environ.get("CONVEYOR_CACHE_DIR", "").strip()
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "conveyor"


def _private(path: Path) -> bool:
    """Ours, and writable by nobody else (so that nobody else can choose the code we run)."""
    try:
        info = path.stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_cache(key: str) -> Any:
    path = cache_dir() / f"dag-schema-{key}.marshal"
    if not (_private(path.parent) and _private(path)):
        return None
    try:
        return marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None


def _write_cache(key: str, code: Any) -> None:
    folder = cache_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _private(folder):
            return
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=".dag-schema-")
        with os.fdopen(handle, "wb") as out:
            out.write(marshal.dumps(code))
        os.replace(temporary, folder / f"dag-schema-{key}.marshal")
    except OSError:
        pass  # a read-only home: compiled again next time
