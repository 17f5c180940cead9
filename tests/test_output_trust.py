"""The pieces of output signing that need no container: the signature's bindings, the gathered-outputs
format the worker rebuilds (checked against lib.lua itself) and the strict JSON comparison of items."""

from __future__ import annotations

import pytest

from scheduler import signing
from scheduler.output_trust import _same_json, lua_array
from scheduler.store import RunStore, _lua

KEY = b"k" * 32


def test_an_output_signature_binds_run_step_attempt_and_the_exact_json() -> None:
    sig = signing.sign_outputs(KEY, "r1", "each[2]", 3, '{"a": "1"}')
    assert sig.startswith("3:") and signing.verify_outputs(KEY, "r1", "each[2]", '{"a": "1"}', sig)
    assert not signing.verify_outputs(KEY, "r2", "each[2]", '{"a": "1"}', sig)
    assert not signing.verify_outputs(KEY, "r1", "each[1]", '{"a": "1"}', sig)
    assert not signing.verify_outputs(KEY, "r1", "each[2]", '{"a":"1"}', sig)  # the exact text
    assert not signing.verify_outputs(KEY, "r1", "each[2]", '{"a": "1"}', "4" + sig[1:])
    assert not signing.verify_outputs(b"other", "r1", "each[2]", '{"a": "1"}', sig)
    for bad in ("", None, sig[2:], "x:" + sig[2:], "3:"):
        assert not signing.verify_outputs(KEY, "r1", "each[2]", '{"a": "1"}', bad)


@pytest.mark.parametrize("value", ["plain", 'quo"te', "back\\slash", "new\nline\ttab\x01\x7f", "é😀/</script>", ""])
def test_the_rebuilt_aggregate_is_byte_for_byte_what_lib_lua_gathers(store: RunStore, value: str) -> None:
    gathered = store.r.eval(_lua("lib.lua") + "return '[' .. json_string(ARGV[2]) .. ',null]'", 0,
                            store.prefix, value)
    assert lua_array([value, None]) == gathered


def test_items_compare_as_rendered_json() -> None:
    assert _same_json('["a", 1]', '["a",1]')
    assert not _same_json("[1]", "[true]") and not _same_json("[1]", "[1.0]")
    assert not _same_json('[{"a": 1, "b": 2}]', '[{"b": 2, "a": 1}]')
    assert not _same_json("[1]", "not json") and not _same_json("[" * 100_000, "[]")
