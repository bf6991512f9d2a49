"""`filecask.http.jsonbody`: any bytes give a dict or a BadRequest, never another exception;
what is valid and within the limits parses exactly as `json.loads` would; the nesting
measure on raw bytes agrees with the real depth."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from filecask.errors import BadRequest
from filecask.http.jsonbody import (
    MAX_DEPTH,
    MAX_ITEMS,
    MAX_NUMBER_CHARS,
    nesting_at_most,
    outside_strings,
    parse_json_object,
)

# Text without surrogates: what a JSON text may hold as characters.
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(TEXT, inner, max_size=4)),
    max_leaves=30,
)


def depth(value: Any) -> int:
    """Arrays and objects nested in `value` (a scalar is 0)."""
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def nested(levels: int, leaf: str = "1") -> bytes:
    text = leaf
    for i in range(levels):
        text = f'{{"k{i}": {text}}}' if i % 2 else f'[{text}, "]]]"]'
    return text.encode()


@given(VALUES, st.booleans())
def test_valid_bodies_parse_as_json_loads_does(value: Any, ascii_only: bool) -> None:
    raw = json.dumps({"v": value}, ensure_ascii=ascii_only).encode()
    assert parse_json_object(raw) == json.loads(raw)


@given(VALUES)
def test_the_nesting_measure_is_the_depth(value: Any) -> None:
    raw = json.dumps(value).encode()
    real = depth(value)
    for limit in (0, 1, 2, 3, real, real + 1):
        assert nesting_at_most(outside_strings(raw), limit) == (real <= limit)


@given(st.binary(max_size=200))
@example(b"[" * 5000)
@example(b'"' + b"\\" * 7 + b'"[[[')
@example(b'["\\"' + b"[" * 100 + b'"]')
@example(b"\xef\xbb\xbf{}")
@example(b'{"a": 1' + b"0" * 5000 + b"}")
@settings(max_examples=300)
def test_any_bytes_are_an_object_or_a_bad_request(raw: bytes) -> None:
    try:
        body = parse_json_object(raw)
    except BadRequest:
        return
    assert isinstance(body, dict)


@given(st.lists(st.sampled_from(['{"a":', "[", "]", "}", '"', "\\", ",", "1", "e999", " "])))
def test_any_bracket_soup_is_an_object_or_a_bad_request(parts: list[str]) -> None:
    with contextlib.suppress(BadRequest):
        parse_json_object("".join(parts).encode())


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 1000, 20_000])
def test_too_deep_is_refused(levels: int) -> None:
    with pytest.raises(BadRequest, match="deep"):
        parse_json_object(b'{"a": ' + nested(levels - 1) + b"}")


def test_the_deepest_allowed_parses() -> None:
    raw = b'{"a": ' + nested(MAX_DEPTH - 1) + b"}"
    assert depth(parse_json_object(raw)) == MAX_DEPTH


def test_brackets_in_strings_do_not_count() -> None:
    raw = json.dumps({"path": "[" * 100 + "{" * 100, "q": '\\"[[[' * 20}).encode()
    assert parse_json_object(raw)["path"].startswith("[[[")


@pytest.mark.parametrize(
    "number",
    [
        "1" * (MAX_NUMBER_CHARS + 1),
        "-" + "1" * MAX_NUMBER_CHARS,
        "1" * 5000,
        "0." + "1" * 5000,
        "1e-" + "1" * 40,
    ],
)
def test_long_numbers_are_refused(number: str) -> None:
    with pytest.raises(BadRequest, match="longer than"):
        parse_json_object(f'{{"quota": {number}}}'.encode())


@pytest.mark.parametrize(
    "number", ["-9223372036854775808", "18446744073709551615", "-2.2250738585072014e-308"]
)
def test_every_int64_and_double_fits(number: str) -> None:
    assert parse_json_object(f'{{"n": {number}}}'.encode())["n"] == json.loads(number)


@pytest.mark.parametrize("token", ["1e999", "-1e400", "NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_not_json(token: str) -> None:
    with pytest.raises(BadRequest):
        parse_json_object(f'{{"n": {token}}}'.encode())


def test_digits_inside_strings_are_not_numbers() -> None:
    raw = json.dumps({"hash": "1" * 64, "name": "0" * 500}).encode()
    assert parse_json_object(raw)["hash"] == "1" * 64


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": "\\udcff"}',
        b'{"a": "x\\ud800"}',
        b'{"\\udfff": 1}',
        b'{"a": ["\\ude00\\ud83d"]}',  # a pair in the wrong order is two lone ones
        b'{"a": "\xed\xb3\xbf"}',  # a surrogate written in UTF-8: not UTF-8
        b'{"a": "\xff"}',
        b"\xff\xfe{\x00}\x00",  # UTF-16
    ],
)
def test_text_that_is_not_unicode_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json_object(raw)


def test_a_surrogate_pair_is_one_character() -> None:
    assert parse_json_object(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    assert parse_json_object(b'{"a": "\\\\udcff"}') == {"a": "\\udcff"}  # not an escape


def test_too_many_values_are_refused_before_parsing() -> None:
    with pytest.raises(BadRequest, match="values"):
        parse_json_object(b'{"a": [' + b"0," * MAX_ITEMS + b"0]}")


def test_the_largest_manifest_that_fits_a_body_is_within_the_limits() -> None:
    """About 11,500 entries fit in 1 MiB: well under MAX_ITEMS."""
    files = [{"path": f"{i}", "hash": "a" * 64} for i in range(11_500)]
    raw = json.dumps({"name": "all.zip", "files": files}, separators=(",", ":")).encode()
    assert len(raw) <= 1 << 20
    assert len(parse_json_object(raw)["files"]) == 11_500


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"s"', b"null", b""])
def test_only_an_object_is_a_body(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json_object(raw)
