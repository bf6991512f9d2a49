"""Parsing a JSON request body that anyone may have written: a 400, never a 500.

Python's `json.loads` is safe for data we wrote, not for a hostile body of up to
`JSON_BODY_MAX` bytes. Left alone it gives:

- a `RecursionError` for arrays or objects nested a few thousand deep (one 1 MiB body
  can nest half a million deep);
- a `ValueError` for an integer of more than 4,300 digits (CPython's guard against
  quadratic int parsing), and a float such as `1e999` silently becomes `inf`;
- `NaN` and `Infinity`, which are not JSON;
- strings holding lone surrogates (`"\\udcff"`, or a surrogate encoded in UTF-8), which
  are not Unicode text: they cannot be stored, logged as UTF-8 or sent back in a reply.

`parse_json_object` refuses each of these with `BadRequest`:

- nesting is measured on the raw bytes first (C-speed byte operations, never more than
  `MAX_DEPTH` passes), so the parser is never let recurse into a deep text;
- a number is at most `MAX_NUMBER_CHARS` characters (every 64-bit integer and every
  double in its shortest form fits) and must be finite;
- at most `MAX_ITEMS` values, so no parse holds the event loop (or, in a worker thread,
  the GIL: `json.loads` is one C call) for more than about 15 ms, what the largest
  manifest costs anyway;
- the body must be UTF-8 (RFC 8259 §8.1), and no string may hold a lone surrogate.

Every filecask JSON body is a small object (a manifest, a user): these limits are far
beyond any of them.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from filecask.errors import BadRequest

__all__ = ["MAX_DEPTH", "MAX_ITEMS", "MAX_NUMBER_CHARS", "parse_json_object"]

MAX_DEPTH = 32
"""Arrays and objects nested deeper than this are refused (a manifest needs 3)."""
MAX_NUMBER_CHARS = 32
"""Longest number token: `-9223372036854775808` is 20, `-2.2250738585072014e-308` 24."""
MAX_ITEMS = 65_536
"""Most commas, `[` and `{` (counted anywhere, strings included: a cheap upper bound on the
values). The largest manifest that fits in a JSON body (about 11,500 entries) has about
35,000; half a million tiny values would hold the event loop for ~50 ms of parsing."""

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OBJECTS_AS_ARRAYS = bytes.maketrans(b"{}", b"[]")


def _table(mapping: dict[str, str]) -> bytes:
    """A `bytes.translate` table: the characters named map as given, all others to ' '."""
    return bytes(ord(mapping.get(chr(b), " ")) for b in range(256))


_NUMBER_CHARS = _table(dict.fromkeys("0123456789eE+-.", "0"))
_LONG_NUMBER = b"0" * (MAX_NUMBER_CHARS + 1)
"""Outside strings, only a number token is such a run (`true` and `false` hold one `e`)."""
_EXPONENTS = _table({"e": "e", "E": "e", "+": "+", "0": "0", **dict.fromkeys("123456789", "1")})
_BIG_EXPONENT = re.compile(rb"e\+?0*1[01]{2}")
"""An exponent of 100 or more (in `_EXPONENTS` form): with at most 32 characters, nothing
smaller can overflow a double."""
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _Refused(Exception):
    """Raised from a parser hook; becomes the BadRequest it carries."""

    def __init__(self, error: BadRequest) -> None:
        super().__init__(error.detail)
        self.error = error


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object, or BadRequest saying what is wrong with it."""
    try:
        text = raw.decode("utf-8-sig")  # a BOM may be ignored (RFC 8259 §8.1)
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"The body is not valid JSON: it is not UTF-8 text (byte {exc.start})."
        ) from None
    items = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if items > MAX_ITEMS:
        raise BadRequest(
            f"The JSON body has more than {MAX_ITEMS} values (commas, arrays and objects)."
        )
    outside = outside_strings(raw)
    depth_ok = nesting_at_most(outside, MAX_DEPTH)
    big_exponent = _BIG_EXPONENT.search(outside.translate(_EXPONENTS)) is not None
    try:
        body = json.loads(
            text,
            # Only when an exponent could overflow: a hook per number costs 5x the parse.
            parse_float=_parse_float if big_exponent else float,
            parse_constant=_refuse_constant,
        )
    except _Refused as refused:
        raise refused.error from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The body is not valid JSON: {exc}.") from None
    except RecursionError:  # only for a malformed text the nesting check could not read
        _too_deep()
    except ValueError:  # over int's 4,300-digit limit
        _number_too_long()
    # Parsed, so well formed: these two checks of the text are exact now.
    if not depth_ok:
        _too_deep()
    if _LONG_NUMBER in outside.translate(_NUMBER_CHARS):
        _number_too_long()
    lone = _lone_surrogate(body) if _SURROGATE_ESCAPE.search(text) else None
    if lone is not None:
        point = f"U+{ord(lone[0]):04X}"
        raise BadRequest(
            f"The body is not valid JSON text: a string holds a lone UTF-16 surrogate, {point}"
            " (a \\uD800-\\uDFFF escape without its pair), which is not a character.",
            code_point=point,
            pointer=lone[1],
        )
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object.")
    return body


def outside_strings(raw: bytes) -> bytes:
    """What a well-formed JSON text holds outside its strings (brackets, numbers,
    literals, separators), each string left as `""`. Escaped backslashes, then escaped
    quotes are removed, so every quote left delimits a string; a split on quotes then
    alternates outside and inside (linear, and a stray quote cannot make it backtrack)."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b'""'.join(unescaped.split(b'"')[::2])


def nesting_at_most(outside: bytes, limit: int) -> bool:
    """Whether the arrays and objects of a well-formed JSON text (`outside_strings` of it)
    nest at most `limit` deep. False for some malformed texts too (unbalanced brackets);
    the parser, whose recursion this check bounds, then says what is wrong.

    Only the brackets are kept, and each pass removes every innermost pair: a tree of
    height h is gone after exactly h passes, each a C-speed `bytes.replace`."""
    if outside.count(b"[") + outside.count(b"{") <= limit:
        return True
    brackets = outside.translate(_OBJECTS_AS_ARRAYS, _NOT_BRACKETS)
    too_deep = b"[" * (limit + 1)  # what most deep texts show after a pass or two
    for _ in range(limit):
        if not brackets:
            return True
        if too_deep in brackets:
            return False
        shorter = brackets.replace(b"[]", b"")
        if len(shorter) == len(brackets):
            return False  # unbalanced: not JSON
        brackets = shorter
    return not brackets


def _number_too_long() -> NoReturn:
    raise BadRequest(
        f"A number in the JSON body is longer than {MAX_NUMBER_CHARS} characters"
        " (any 64-bit integer or double fits)."
    )


def _too_deep() -> NoReturn:
    raise BadRequest(f"The JSON body nests arrays and objects more than {MAX_DEPTH} deep.")


def _parse_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(BadRequest(f"The number {token} in the JSON body is out of range."))
    return value


def _refuse_constant(token: str) -> NoReturn:
    raise _Refused(BadRequest(f"{token} is not a JSON value."))


def _lone_surrogate(value: Any) -> tuple[str, str] | None:
    """The first surrogate in any string (key or value) and the JSON pointer (RFC 6901)
    of that string, or None: valid pairs were already combined into one character by the
    parser, so any left is alone. Iterative: no recursion."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        item, pointer = stack.pop()
        if isinstance(item, str):
            if found := _SURROGATE.search(item):
                return found.group(), pointer
        elif isinstance(item, dict):
            for key, member in item.items():
                stack.append((key, pointer))
                stack.append((member, f"{pointer}/{_escape_pointer(key)}"))
        elif isinstance(item, list):
            stack.extend((member, f"{pointer}/{i}") for i, member in enumerate(item))
    return None


def _escape_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")
