"""Content types: by name, else by magic bytes, else text or octet-stream; which are active."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from filecask.mediatypes import OCTET_STREAM, guess_type, is_active

TEXT = "text/plain; charset=utf-8"

PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"
GIF87 = b"GIF87a\x01\x00\x01\x00"
GIF89 = b"GIF89a\x01\x00\x01\x00"
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
ZIP = b"PK\x03\x04\x14\x00\x00\x00"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 "
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00"


# --- by name ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("photo.png", "image/png"),
        ("PHOTO.PNG", "image/png"),
        ("photo.jpg", "image/jpeg"),
        ("doc.pdf", "application/pdf"),
        ("page.html", "text/html"),
        ("notes.txt", "text/plain"),
        ("archive.zip", "application/zip"),
        ("drawing.svg", "image/svg+xml"),
    ],
)
def test_type_by_name(name: str, expected: str) -> None:
    assert guess_type(name, b"") == expected


def test_name_wins_over_content() -> None:
    assert guess_type("picture.png", PDF) == "image/png"
    assert guess_type("page.html", b"plain words") == "text/html"


@pytest.mark.parametrize("name", [None, "", "no-extension", "weird.qqqzzz"])
def test_unknown_name_falls_back_to_content(name: str | None) -> None:
    assert guess_type(name, PNG) == "image/png"
    assert guess_type(name, b"just words\n") == TEXT


# --- by magic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (PNG, "image/png"),
        (JPEG, "image/jpeg"),
        (GIF87, "image/gif"),
        (GIF89, "image/gif"),
        (PDF, "application/pdf"),
        (ZIP, "application/zip"),
        (WEBP, "image/webp"),
        (MP4, "video/mp4"),
        (b"\x1f\x8b\x08\x00\x00\x00", "application/gzip"),
        (b"OggS\x00\x02", "audio/ogg"),
        (b"fLaC\x00\x00\x00\x22", "audio/flac"),
        (b"ID3\x04\x00\x00", "audio/mpeg"),
        (b"\x1aE\xdf\xa3\x9fB\x86\x81", "video/webm"),
    ],
)
def test_type_by_magic_bytes(head: bytes, expected: str) -> None:
    assert guess_type(None, head) == expected
    assert guess_type(None, head + bytes(range(256)) * 4) == expected


def test_riff_that_is_not_webp_is_not_webp() -> None:
    assert guess_type(None, b"RIFF\x24\x00\x00\x00WAVEfmt \x00\x01\x02\xff") != "image/webp"


# --- text or binary -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"hello world\n",
        "grüße, 世界, \U0001f600\n".encode(),
        b'{"json": true}',
        b"\t\r\n",
    ],
)
def test_utf8_text_is_text_plain(head: bytes) -> None:
    assert guess_type(None, head) == TEXT


def test_multibyte_character_cut_at_the_sniff_window_is_still_text() -> None:
    text = ("a" * 8190 + "\u20ac").encode()  # the euro sign is 3 bytes of UTF-8
    for cut in (8191, 8192):
        assert guess_type(None, text[:cut]) == TEXT


@pytest.mark.parametrize(
    "head",
    [
        b"",
        b"\x00\x01\x02\x03",
        b"text with a NUL\x00 inside",
        b"\xff\xfe\xfd\xfc",
        b"\x80abc",
        "caf\u00e9".encode("latin-1") + b" au lait",
        bytes(range(256)),
    ],
)
def test_binary_is_octet_stream(head: bytes) -> None:
    assert guess_type(None, head) == OCTET_STREAM


@given(st.binary(max_size=512))
def test_guess_type_always_answers_a_media_type(head: bytes) -> None:
    media_type = guess_type(None, head)
    essence, _, _ = media_type.partition(";")
    kind, slash, subtype = essence.partition("/")
    assert slash
    assert kind
    assert subtype
    if b"\x00" in head and media_type.startswith("text/"):
        pytest.fail(f"NUL bytes sniffed as text: {head!r}")


@given(st.text(min_size=1, max_size=200).filter(lambda t: "\x00" not in t))
def test_nul_free_utf8_text_without_magic_is_text(text: str) -> None:
    """Text is never called binary (it may still match a magic number, e.g. `GIF89a...`)."""
    result = guess_type(None, text.encode())
    assert result != OCTET_STREAM
    assert result == TEXT or not result.startswith("text/")


# --- active types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "media_type",
    [
        "text/html",
        "text/html; charset=utf-8",
        "TEXT/HTML",
        "application/xhtml+xml",
        "image/svg+xml",
        "text/xml",
        "application/xml",
        "application/atom+xml",
        "application/rss+xml",
        "text/javascript",
        "application/javascript",
        "application/x-javascript",
        "text/css",
        "application/pdf",
        " image/svg+xml ; charset=utf-8",
    ],
)
def test_active_types(media_type: str) -> None:
    assert is_active(media_type)


@pytest.mark.parametrize(
    "media_type",
    [
        "image/png",
        "image/jpeg",
        "text/plain",
        TEXT,
        "application/octet-stream",
        "application/json",
        "video/mp4",
        "application/zip",
    ],
)
def test_passive_types(media_type: str) -> None:
    assert not is_active(media_type)


@pytest.mark.parametrize(
    ("name", "active"),
    [
        ("index.html", True),
        ("image.svg", True),
        ("script.js", True),
        ("feed.xml", True),
        ("photo.png", False),
        ("notes.txt", False),
    ],
)
def test_types_guessed_by_name_are_classified(name: str, active: bool) -> None:
    assert is_active(guess_type(name, b"")) is active
