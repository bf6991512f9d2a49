"""Content ids: strict SHA-256 hex parsing, the fan-out path, and the streaming hasher."""

from __future__ import annotations

import hashlib
import itertools
import re
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filecask.errors import BadRequest, InvalidHash
from filecask.hashes import StreamHasher, fanout, parse_hash

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
HEX64 = re.compile(r"[0-9a-f]{64}")

hex_ids = st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64)


# --- parse_hash ---------------------------------------------------------------------------


def test_parse_hash_accepts_a_sha256() -> None:
    assert parse_hash(EMPTY_SHA256) == EMPTY_SHA256


def test_parse_hash_normalises_upper_case() -> None:
    assert parse_hash(EMPTY_SHA256.upper()) == EMPTY_SHA256
    mixed = "".join(c.upper() if i % 2 else c for i, c in enumerate(EMPTY_SHA256))
    assert parse_hash(mixed) == EMPTY_SHA256


@given(hex_ids)
def test_parse_hash_accepts_any_64_hex(text: str) -> None:
    assert parse_hash(text) == text.lower()
    assert parse_hash(parse_hash(text)) == text.lower()


@pytest.mark.parametrize(
    "text",
    [
        "",
        EMPTY_SHA256[:63],
        EMPTY_SHA256 + "0",
        EMPTY_SHA256[:63] + "g",
        EMPTY_SHA256[:63] + "G",
        "z" * 64,
        "..",
        "../" + EMPTY_SHA256,
        EMPTY_SHA256[:62] + "..",
        "%2F" + EMPTY_SHA256[3:],
        EMPTY_SHA256[:61] + "%2F",
        EMPTY_SHA256[:63] + "\x00",
        EMPTY_SHA256 + "\x00",
        EMPTY_SHA256 + "\n",
        "\n" + EMPTY_SHA256,
        " " + EMPTY_SHA256[1:],
        EMPTY_SHA256[:63] + "/",
        "0x" + EMPTY_SHA256[2:],
        # Unicode look-alikes: full-width digits and letters, Arabic-Indic and
        # mathematical digits, all of which some "isdigit"/"\d" checks accept.
        "\uff10" * 64,
        "\uff41" * 64,
        EMPTY_SHA256[:63] + "\uff10",
        "\u0660" * 64,
        "\U0001d7ce" * 64,
        EMPTY_SHA256[:63] + "\u00e9",
    ],
)
def test_parse_hash_rejects(text: str) -> None:
    with pytest.raises(InvalidHash) as raised:
        parse_hash(text)
    assert raised.value.status == 400
    assert raised.value.slug == "invalid-hash"


def test_invalid_hash_is_a_bad_request_that_echoes_a_bounded_prefix() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_hash("x" * 10_000)
    assert isinstance(raised.value, InvalidHash)
    assert raised.value.extensions["hash"] == "x" * 100


@given(st.text(max_size=80))
def test_parse_hash_accepts_exactly_ascii_hex_of_length_64(text: str) -> None:
    valid = len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)
    try:
        parsed = parse_hash(text)
    except InvalidHash:
        assert not valid
    else:
        assert valid
        assert HEX64.fullmatch(parsed)
        assert parsed == text.lower()


# --- fanout -------------------------------------------------------------------------------


def test_fanout() -> None:
    assert fanout(EMPTY_SHA256) == "e3/" + EMPTY_SHA256


@given(hex_ids.map(str.lower))
def test_fanout_is_two_levels_named_by_the_prefix(h: str) -> None:
    directory, _, name = fanout(h).partition("/")
    assert directory == h[:2]
    assert name == h
    assert "/" not in name


# --- StreamHasher -------------------------------------------------------------------------


def test_stream_hasher_of_nothing() -> None:
    hasher = StreamHasher()
    assert hasher.hexdigest == EMPTY_SHA256
    assert hasher.crc32 == 0
    assert hasher.size == 0


def test_stream_hasher_known_value() -> None:
    hasher = StreamHasher()
    hasher.update(b"hello ")
    hasher.update(memoryview(b"world"))
    assert hasher.hexdigest == hashlib.sha256(b"hello world").hexdigest()
    assert hasher.crc32 == 0x0D4A1185
    assert hasher.size == 11


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0, max_value=4096), max_size=20))
def test_stream_hasher_matches_hashlib_and_zlib_for_any_chunking(
    data: bytes, cuts: list[int]
) -> None:
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    hasher = StreamHasher()
    for start, end in itertools.pairwise(bounds):
        chunk = data[start:end]
        hasher.update(memoryview(chunk) if start % 2 else chunk)
    assert hasher.hexdigest == hashlib.sha256(data).hexdigest()
    assert hasher.crc32 == zlib.crc32(data)
    assert hasher.size == len(data)
    assert HEX64.fullmatch(hasher.hexdigest)


@given(st.binary(max_size=1024))
def test_stream_hasher_digest_can_be_read_midway(data: bytes) -> None:
    """Reading the digest does not finalise the hasher."""
    hasher = StreamHasher()
    hasher.update(data)
    first = hasher.hexdigest
    assert hasher.hexdigest == first
    hasher.update(data)
    assert hasher.hexdigest == hashlib.sha256(data + data).hexdigest()
    assert hasher.crc32 == zlib.crc32(data + data)
