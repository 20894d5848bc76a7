"""cds_service.limits: strict JSON and the nesting limit, checked before the parser runs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds_service.limits import JsonRejected, nesting_exceeds, parse_json


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0, ``[]`` is 1)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


# Strings full of the characters that could fool a bracket count: quotes, backslashes, brackets.
tricky_text = st.text(alphabet=st.sampled_from('[]{}"\\\\/ab\n\u00e9\u2028'), max_size=8)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | tricky_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(tricky_text, children, max_size=4),
    max_leaves=40,
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(value=json_values, limit=st.integers(min_value=0, max_value=12), ascii_only=st.booleans())
def test_nesting_check_agrees_with_the_parsed_depth(value, limit, ascii_only):
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert nesting_exceeds(text.encode(), limit) == (depth(value) > limit)


@pytest.mark.parametrize(
    ("text", "limit", "exceeds"),
    [
        ("[" * 64 + "]" * 64, 64, False),
        ("[" * 65 + "]" * 65, 64, True),
        ("[" * 64 + "[]" + "]" * 64, 64, True),  # no run of 65 openers, still 65 deep
        ('["[[[[", "\\\\", "\\"[[[["]', 1, False),  # brackets inside strings, escaped quote and backslash
        ('{"a": {"b": [1, {"c": []}]}}', 5, False),
        ('{"a": {"b": [1, {"c": []}]}}', 4, True),
        ("[" * 2_000_000, 64, True),  # unclosed: found without walking the brackets
        ('"' + "\\" * 9 + '"[[[', 1, True),  # odd backslashes: the quote after them is escaped
    ],
)
def test_nesting_examples(text, limit, exceeds):
    assert nesting_exceeds(text.encode(), limit) is exceeds


def test_parse_accepts_strict_json_in_utf8_and_the_encodings_json_detects():
    document = {"hook": "patient-view", "context": {"patientId": "pat-\u00e9"}, "n": [1, 2.5, None, True]}
    text = json.dumps(document, ensure_ascii=False)
    for raw in (text.encode(), text.encode("utf-8-sig"), text.encode("utf-16"), text.encode("utf-32-le")):
        assert parse_json(raw, 8) == document


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[" * 100 + b"]" * 100, "nests arrays or objects deeper than 64 levels"),
        (b"[" * 1_000_000, "nests arrays or objects deeper than 64 levels"),
        (b'{"a": NaN}', "is not valid JSON"),
        (b'{"a": -Infinity}', "is not valid JSON"),
        (b'{"a": 1', "is not valid JSON"),
        (b'{"a": "\xff"}', "is not valid JSON (not UTF-8 text)"),
        (b'{"a": "\xed\xa0\x80"}', "is not valid JSON (not UTF-8 text)"),  # an encoded surrogate
        (b'{"n": ' + b"9" * 5000 + b"}", "is not valid JSON"),  # over Python's int digit limit
    ],
    ids=["deep", "unclosed", "nan", "infinity", "truncated", "latin-1", "surrogate", "huge-int"],
)
def test_parse_rejects(raw, message):
    with pytest.raises(JsonRejected) as caught:
        parse_json(raw, 64)
    assert str(caught.value) == message
