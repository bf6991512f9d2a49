"""Byte ranges and conditional headers (RFC 9110 §13.1, §14), tested without a server."""

from __future__ import annotations

import contextlib
import email.parser
import itertools
from email.message import Message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filecask.errors import RangeNotSatisfiable
from filecask.http.ranges import (
    ByteRange,
    MultipartPlan,
    if_none_match_matches,
    if_range_matches,
    parse_range,
    plan_multipart,
)

R = ByteRange
HUGE = "9" * 40
ETAG = '"abc123"'


# --- ByteRange ----------------------------------------------------------------------------


def test_byte_range_length_is_inclusive() -> None:
    assert R(0, 0).length == 1
    assert R(10, 19).length == 10


def test_byte_range_content_range() -> None:
    assert R(0, 99).content_range(1000) == "bytes 0-99/1000"


@pytest.mark.parametrize(("start", "end"), [(5, 4), (-1, 3), (-3, -1)])
def test_byte_range_rejects_empty_or_negative(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="not a byte range"):
        R(start, end)


# --- parse_range: headers to ignore ------------------------------------------------------


def test_parse_range_none_header_means_full() -> None:
    assert parse_range(None, 1000) is None


@pytest.mark.parametrize(
    "header",
    [
        "",
        "bytes",
        "bytes=",
        "bytes=,",
        "bytes= , ,",
        "items=0-1",
        "bites=0-1",
        "bytes 0-1",
        "bytes:0-1",
        "bytes =0-1",
        "garbage",
        "=0-1",
        "0-99",
    ],
)
def test_parse_range_other_unit_or_garbage_is_ignored(header: str) -> None:
    assert parse_range(header, 1000) is None


def test_parse_range_empty_set_is_ignored() -> None:
    assert parse_range("bytes=", 1000) is None
    assert parse_range("bytes=,,", 1000) is None


def test_parse_range_last_before_first_invalidates_the_whole_header() -> None:
    assert parse_range("bytes=5-2", 1000) is None
    assert parse_range("bytes=0-1,5-2", 1000) is None


def test_parse_range_invalid_wins_over_unsatisfiable() -> None:
    assert parse_range("bytes=5000-6000,5-2", 1000) is None


@pytest.mark.parametrize(
    "header",
    [
        "bytes=a-b",
        "bytes=0-x",
        "bytes=0x10-",
        "bytes=1.5-2",
        "bytes=+1-2",
        "bytes=1_0-20",
        "bytes=\u0661-\u0662",  # Arabic-Indic digits, which int() would accept
        "bytes=\uff11-\uff12",  # full-width digits
        "bytes=-",
        "bytes=--5",
        "bytes=1-2-3",
        "bytes=0-1;2-3",
    ],
)
def test_parse_range_non_digits_are_ignored(header: str) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize("header", ["bytes=-1-5", "bytes=-5-", "bytes=1--5", "bytes=-0-1"])
def test_parse_range_negative_positions_are_ignored(header: str) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0 -1",
        "bytes=0- 1",
        "bytes=- 5",
        "bytes= 0-1",  # OWS only next to commas (§5.6.1)
        "bytes=0-1 2-3",
        "bytes=0-1\n,2-3",
        "bytes=0-1\u00a0,2-3",  # a no-break space is not OWS
    ],
)
def test_parse_range_whitespace_outside_the_list_rule_is_ignored(header: str) -> None:
    assert parse_range(header, 1000) is None


@pytest.mark.parametrize(
    "header",
    ["bytes=0-1 , 5-6", "bytes=0-1\t,\t5-6", "bytes=0-1,5-6", "  bytes=0-1, 5-6\t"],
)
def test_parse_range_ows_around_commas_is_allowed(header: str) -> None:
    assert parse_range(header, 1000) == [R(0, 1), R(5, 6)]


@pytest.mark.parametrize("header", ["bytes=0-1,,5-6", "bytes=,0-1, ,5-6,", "bytes=, ,0-1,5-6"])
def test_parse_range_empty_list_elements_are_skipped(header: str) -> None:
    assert parse_range(header, 1000) == [R(0, 1), R(5, 6)]


@pytest.mark.parametrize("unit", ["Bytes", "BYTES", "bYtEs"])
def test_parse_range_unit_is_case_insensitive(unit: str) -> None:
    assert parse_range(f"{unit}=0-9", 1000) == [R(0, 9)]


def test_parse_range_unit_lookalikes_are_not_bytes() -> None:
    assert parse_range("byte\u017f=0-9", 1000) is None  # LATIN SMALL LETTER LONG S


# --- parse_range: the three forms ---------------------------------------------------------


def test_parse_range_closed() -> None:
    assert parse_range("bytes=0-99", 1000) == [R(0, 99)]


def test_parse_range_single_byte() -> None:
    assert parse_range("bytes=999-999", 1000) == [R(999, 999)]


def test_parse_range_open_ended() -> None:
    assert parse_range("bytes=900-", 1000) == [R(900, 999)]


def test_parse_range_end_clipped_to_size() -> None:
    assert parse_range("bytes=500-5000", 1000) == [R(500, 999)]


def test_parse_range_suffix() -> None:
    assert parse_range("bytes=-100", 1000) == [R(900, 999)]


def test_parse_range_suffix_larger_than_size() -> None:
    assert parse_range("bytes=-5000", 1000) == [R(0, 999)]


def test_parse_range_suffix_equal_to_size() -> None:
    assert parse_range("bytes=-1000", 1000) == [R(0, 999)]


def test_parse_range_leading_zeros() -> None:
    assert parse_range("bytes=0010-0019", 1000) == [R(10, 19)]


# --- parse_range: unsatisfiable -----------------------------------------------------------


def _assert_416(header: str, size: int) -> None:
    with pytest.raises(RangeNotSatisfiable) as caught:
        parse_range(header, size)
    assert caught.value.status == 416
    assert caught.value.headers == {"Content-Range": f"bytes */{size}"}


def test_parse_range_first_at_size_is_unsatisfiable() -> None:
    _assert_416("bytes=1000-", 1000)
    _assert_416("bytes=1000-1000", 1000)


def test_parse_range_first_beyond_size_is_unsatisfiable() -> None:
    _assert_416("bytes=5000-6000", 1000)


def test_parse_range_suffix_zero_is_unsatisfiable() -> None:
    _assert_416("bytes=-0", 1000)
    _assert_416("bytes=-000", 1000)


def test_parse_range_all_unsatisfiable_raises() -> None:
    _assert_416("bytes=1000-, 2000-3000, -0", 1000)


def test_parse_range_unsatisfiable_ranges_are_dropped() -> None:
    assert parse_range("bytes=2000-3000, 0-9, -0, 1000-", 1000) == [R(0, 9)]


@pytest.mark.parametrize("header", ["bytes=0-0", "bytes=0-", "bytes=-1", "bytes=-0", "bytes=5-9"])
def test_parse_range_size_zero_is_always_unsatisfiable(header: str) -> None:
    _assert_416(header, 0)


def test_parse_range_size_zero_invalid_is_still_ignored() -> None:
    assert parse_range("bytes=5-2", 0) is None


# --- parse_range: big numbers -------------------------------------------------------------


def test_parse_range_huge_first_is_unsatisfiable() -> None:
    _assert_416(f"bytes={HUGE}-", 1000)
    _assert_416(f"bytes={HUGE}-{HUGE}", 1000)


def test_parse_range_huge_last_is_clipped() -> None:
    assert parse_range(f"bytes=10-{HUGE}", 1000) == [R(10, 999)]


def test_parse_range_huge_suffix_is_whole() -> None:
    assert parse_range(f"bytes=-{HUGE}", 1000) == [R(0, 999)]


def test_parse_range_huge_last_before_huge_first_is_invalid() -> None:
    assert parse_range(f"bytes={HUGE}1-{HUGE}0", 1000) is None


def test_parse_range_beyond_int_conversion_limit() -> None:
    # Python's int() refuses strings longer than 4300 digits.
    digits = "7" * 10_000
    assert parse_range(f"bytes=0-{digits}", 1000) == [R(0, 999)]
    assert parse_range(f"bytes=-{digits}", 1000) == [R(0, 999)]
    _assert_416(f"bytes={digits}-", 1000)
    _assert_416(f"bytes={digits}-{digits}", 1000)
    assert parse_range(f"bytes={digits}8-{digits}", 1000) is None


def test_parse_range_huge_size() -> None:
    size = 10**30
    _assert_416(f"bytes={HUGE}-", size)
    assert parse_range("bytes=-10", size) == [R(size - 10, size - 1)]


# --- parse_range: coalescing --------------------------------------------------------------


def test_parse_range_out_of_order_is_sorted() -> None:
    assert parse_range("bytes=500-599,0-99", 1000) == [R(0, 99), R(500, 599)]


def test_parse_range_overlapping_are_merged() -> None:
    assert parse_range("bytes=0-499,100-199,400-700", 1000) == [R(0, 700)]


def test_parse_range_adjacent_are_merged() -> None:
    assert parse_range("bytes=0-9,10-19", 1000) == [R(0, 19)]


def test_parse_range_one_byte_gap_is_kept() -> None:
    assert parse_range("bytes=0-9,11-19", 1000) == [R(0, 9), R(11, 19)]


def test_parse_range_suffix_merges_with_int_range() -> None:
    assert parse_range("bytes=-100,850-949", 1000) == [R(850, 999)]


def test_parse_range_duplicates_are_merged() -> None:
    assert parse_range(",".join(["bytes=0-0"] + ["0-0"] * 500), 1000) == [R(0, 0)]


def test_parse_range_too_many_ranges_is_ignored() -> None:
    header = "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(65))
    assert parse_range(header, 1000) is None


def test_parse_range_max_ranges_exactly_is_served() -> None:
    header = "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(64))
    ranges = parse_range(header, 1000)
    assert ranges is not None
    assert len(ranges) == 64


def test_parse_range_many_ranges_that_coalesce_are_served() -> None:
    header = "bytes=" + ",".join(f"{i}-{i}" for i in reversed(range(500)))
    assert parse_range(header, 1000) == [R(0, 499)]


def test_parse_range_max_ranges_is_configurable() -> None:
    assert parse_range("bytes=0-0,2-2", 1000, max_ranges=1) is None
    assert parse_range("bytes=0-0,1-1", 1000, max_ranges=1) == [R(0, 1)]


# --- parse_range: properties --------------------------------------------------------------

_POSITION = st.integers(0, 1200)
_SPEC = st.one_of(
    st.tuples(_POSITION, _POSITION).map(lambda p: f"{min(p)}-{max(p)}"),
    _POSITION.map(lambda first: f"{first}-"),
    _POSITION.map(lambda count: f"-{count}"),
)


def _covered(specs: list[str], size: int) -> set[int]:
    """The bytes a list of valid range-specs selects, computed the obvious, slow way."""
    covered: set[int] = set()
    for spec in specs:
        first, _, last = spec.partition("-")
        if not first:
            covered.update(range(max(0, size - int(last)), size))
        else:
            covered.update(range(int(first), min(int(last) + 1, size) if last else size))
    return covered


def _run_count(covered: set[int]) -> int:
    return sum(1 for i in covered if i - 1 not in covered)


def _assert_well_formed(ranges: list[ByteRange], size: int) -> None:
    assert ranges
    for r in ranges:
        assert 0 <= r.start <= r.end < size
    for prev, nxt in itertools.pairwise(ranges):
        assert nxt.start > prev.end + 1  # sorted, disjoint and not adjacent


@given(size=st.integers(0, 1000), specs=st.lists(_SPEC, min_size=1, max_size=80))
def test_parse_range_result_is_sorted_disjoint_and_in_bounds(size: int, specs: list[str]) -> None:
    covered = _covered(specs, size)
    header = "bytes=" + ",".join(specs)
    if not covered:
        with pytest.raises(RangeNotSatisfiable):
            parse_range(header, size)
        return
    ranges = parse_range(header, size)
    if ranges is None:
        assert _run_count(covered) > 64
        return
    _assert_well_formed(ranges, size)
    assert {i for r in ranges for i in range(r.start, r.end + 1)} == covered


_HEADER_TEXT = st.one_of(
    st.text(),
    st.text().map("bytes=".__add__),
    st.text(alphabet="0123456789-, \t").map("bytes=".__add__),
    st.text(alphabet="0123456789-, \t=bytesBYTES\u0661\u017f"),
)


@given(header=_HEADER_TEXT, size=st.one_of(st.integers(0, 2000), st.integers(0, 2**64)))
def test_parse_range_only_raises_range_not_satisfiable(header: str, size: int) -> None:
    with contextlib.suppress(RangeNotSatisfiable):
        ranges = parse_range(header, size)
        if ranges is not None:
            _assert_well_formed(ranges, size)
            assert len(ranges) <= 64


# --- if_range_matches ---------------------------------------------------------------------


def test_if_range_absent_matches() -> None:
    assert if_range_matches(None, ETAG)


def test_if_range_same_strong_etag_matches() -> None:
    assert if_range_matches(ETAG, ETAG)
    assert if_range_matches(f" {ETAG}\t", ETAG)


def test_if_range_other_etag_does_not_match() -> None:
    assert not if_range_matches('"other"', ETAG)
    assert not if_range_matches('"ABC123"', ETAG)
    assert not if_range_matches("abc123", ETAG)
    assert not if_range_matches("", ETAG)


def test_if_range_weak_etag_never_matches() -> None:
    assert not if_range_matches(f"W/{ETAG}", ETAG)
    assert not if_range_matches(f"W/{ETAG}", f"W/{ETAG}")


def test_if_range_date_never_matches() -> None:
    assert not if_range_matches("Sun, 06 Nov 1994 08:49:37 GMT", ETAG)


def test_if_range_list_does_not_match() -> None:
    assert not if_range_matches(f"{ETAG}, {ETAG}", ETAG)


# --- if_none_match_matches ----------------------------------------------------------------


def test_if_none_match_absent_does_not_match() -> None:
    assert not if_none_match_matches(None, ETAG)


def test_if_none_match_star_matches() -> None:
    assert if_none_match_matches("*", ETAG)
    assert if_none_match_matches(" * ", ETAG)


def test_if_none_match_same_etag_matches() -> None:
    assert if_none_match_matches(ETAG, ETAG)


def test_if_none_match_comparison_is_weak() -> None:
    assert if_none_match_matches(f"W/{ETAG}", ETAG)
    assert if_none_match_matches(ETAG, f"W/{ETAG}")
    assert if_none_match_matches(f"W/{ETAG}", f"W/{ETAG}")


def test_if_none_match_lowercase_weak_prefix_is_malformed() -> None:
    assert not if_none_match_matches(f"w/{ETAG}", ETAG)


def test_if_none_match_list() -> None:
    assert if_none_match_matches(f'"x", W/"y" ,{ETAG}', ETAG)
    assert if_none_match_matches(f',"x",,\t{ETAG},', ETAG)
    assert not if_none_match_matches('"x", W/"y"', ETAG)


def test_if_none_match_comma_inside_a_tag() -> None:
    assert if_none_match_matches('"a,b", "c"', '"a,b"')
    assert not if_none_match_matches('"a,b"', '"a"')
    assert not if_none_match_matches('"a,b"', '"b"')


@pytest.mark.parametrize(
    "header",
    ["abc123", f"{ETAG} x", f"*, {ETAG}", f'"x" {ETAG}', '"unterminated', "", f"W/ {ETAG}"],
)
def test_if_none_match_malformed_does_not_match(header: str) -> None:
    assert not if_none_match_matches(header, ETAG)


# --- plan_multipart -----------------------------------------------------------------------

BOUNDARY = "3d6f0e2a9b1c4f58"


def _body(plan: MultipartPlan, data: bytes) -> bytes:
    """What the handler would write: each part header, its slice, then the trailer."""
    chunks = [b for head, r in plan.parts for b in (head, data[r.start : r.end + 1])]
    return b"".join([*chunks, plan.trailer])


def test_plan_multipart_exact_bytes() -> None:
    data = bytes(range(10))
    plan = plan_multipart([R(0, 1), R(8, 9)], 10, "application/octet-stream", BOUNDARY)
    expected = (
        b"\r\n--3d6f0e2a9b1c4f58\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Range: bytes 0-1/10\r\n\r\n"
        b"\x00\x01"
        b"\r\n--3d6f0e2a9b1c4f58\r\n"
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Range: bytes 8-9/10\r\n\r\n"
        b"\x08\x09"
        b"\r\n--3d6f0e2a9b1c4f58--\r\n"
    )
    assert _body(plan, data) == expected
    assert plan.content_length == len(expected)
    assert plan.content_type == "multipart/byteranges; boundary=3d6f0e2a9b1c4f58"
    assert plan.boundary == BOUNDARY
    assert plan.trailer == b"\r\n--3d6f0e2a9b1c4f58--\r\n"
    assert [r for _, r in plan.parts] == [R(0, 1), R(8, 9)]


def test_plan_multipart_without_content_type_omits_the_part_header() -> None:
    plan = plan_multipart([R(0, 0)], 1, "", BOUNDARY)
    assert plan.parts[0][0] == b"\r\n--3d6f0e2a9b1c4f58\r\nContent-Range: bytes 0-0/1\r\n\r\n"


def test_plan_multipart_quotes_a_boundary_that_is_not_a_token() -> None:
    plan = plan_multipart([R(0, 0)], 1, "text/plain", "a b:c")
    assert plan.content_type == 'multipart/byteranges; boundary="a b:c"'


def test_plan_multipart_non_ascii_content_type_counts_encoded_bytes() -> None:
    plan = plan_multipart([R(0, 3)], 4, "text/plain; name=\u00e9t\u00e9", BOUNDARY)
    assert plan.content_length == len(_body(plan, b"abcd"))


@pytest.mark.parametrize(
    "boundary", ["", "x" * 71, "ends with space ", 'quote"', "back\\slash", "new\nline", "é"]
)
def test_plan_multipart_rejects_invalid_boundary(boundary: str) -> None:
    with pytest.raises(ValueError, match="boundary"):
        plan_multipart([R(0, 0)], 1, "text/plain", boundary)


def test_plan_multipart_accepts_longest_boundary() -> None:
    assert plan_multipart([R(0, 0)], 1, "text/plain", "x" * 70).boundary == "x" * 70


@pytest.mark.parametrize("content_type", ["text/plain\r\nX-Evil: 1", "a\nb", "a\rb", "a\x00b"])
def test_plan_multipart_rejects_header_injection(content_type: str) -> None:
    with pytest.raises(ValueError, match="inject"):
        plan_multipart([R(0, 0)], 1, content_type, BOUNDARY)


def test_plan_multipart_rejects_no_ranges() -> None:
    with pytest.raises(ValueError, match="at least one part"):
        plan_multipart([], 10, "text/plain", BOUNDARY)


def test_plan_multipart_rejects_range_past_size() -> None:
    with pytest.raises(ValueError, match="past"):
        plan_multipart([R(0, 10)], 10, "text/plain", BOUNDARY)


@st.composite
def _data_and_ranges(draw: st.DrawFn) -> tuple[bytes, list[ByteRange]]:
    data = draw(st.binary(min_size=1, max_size=600))
    position = st.integers(0, len(data) - 1)
    pairs = draw(st.lists(st.tuples(position, position), min_size=1, max_size=8))
    return data, [R(min(p), max(p)) for p in pairs]


def _parse_multipart(content_type: str, body: bytes) -> Message:
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    return email.parser.BytesParser().parsebytes(head + body)


@given(
    data_and_ranges=_data_and_ranges(),
    content_type=st.sampled_from(["application/octet-stream", "text/plain; charset=utf-8", ""]),
    boundary=st.sampled_from([BOUNDARY, "filecask boundary=7f3a'(x)?"]),
)
def test_plan_multipart_round_trips_through_email_parser(
    data_and_ranges: tuple[bytes, list[ByteRange]], content_type: str, boundary: str
) -> None:
    data, ranges = data_and_ranges
    plan = plan_multipart(ranges, len(data), content_type, boundary)
    body = _body(plan, data)
    assert len(body) == plan.content_length

    message = _parse_multipart(plan.content_type, body)
    assert message.get_content_type() == "multipart/byteranges"
    assert message.get_boundary() == boundary
    assert not message.defects
    parts = message.get_payload()
    assert isinstance(parts, list)
    assert len(parts) == len(ranges)
    for part, r in zip(parts, ranges, strict=True):
        assert isinstance(part, Message)
        assert part.get_payload(decode=True) == data[r.start : r.end + 1]
        assert part["Content-Range"] == r.content_range(len(data))
        assert part["Content-Type"] == (content_type or None)
