"""The upload's multipart reader (filecask.http.multipart): framing, limits, accounting, and the
closing boundary, over bodies cut into arbitrary reads."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from filecask.errors import BadRequest, FilecaskError, FormTooLarge, PayloadTooLarge
from filecask.http.multipart import FormLimits, FormReader, boundary_of

B = "XyZ"
LIMITS = FormLimits(max_parts=100, max_form_size=64 << 10, max_line=8190)
FILE_HEAD = 'Content-Disposition: form-data; name="file"; filename="a.bin"'


def part(headers: str, content: bytes, boundary: str = B) -> bytes:
    return f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"


def field(name: str, content: bytes) -> bytes:
    return part(f'Content-Disposition: form-data; name="{name}"', content)


def closing(boundary: str = B) -> bytes:
    return f"--{boundary}--\r\n".encode()


def reader_of(pieces: Sequence[bytes]) -> Callable[[], Awaitable[bytes]]:
    queue = list(pieces)

    async def read() -> bytes:
        return queue.pop(0) if queue else b""

    return read


def split(body: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    return [body[a:b] for a, b in itertools.pairwise(points) if b > a]


async def read_upload(
    pieces: Sequence[bytes], *, limits: FormLimits = LIMITS, budget: int = 1 << 40
) -> tuple[str | None, bytes, FormReader]:
    form = FormReader(reader_of(pieces), B, limits, budget=budget)
    filename = await form.open_file()
    content = b"".join([chunk async for chunk in form.file_content()])
    return filename, content, form


def run(pieces: Sequence[bytes], **kwargs: object) -> tuple[str | None, bytes, FormReader]:
    return asyncio.run(read_upload(pieces, **kwargs))  # type: ignore[arg-type]


# Content made of pieces of the framing, so boundaries almost-appear inside it.
_TRICKY = st.lists(
    st.sampled_from([b"\r", b"\n", b"-", b"--", B.encode(), b"X", b"Xy", b"a", b"\r\n--XyZ!"]),
    max_size=40,
).map(b"".join)
_CONTENT = (_TRICKY | st.binary(max_size=300)).filter(lambda c: b"\r\n--XyZ" not in c)
"""Content never holds a boundary (RFC 2046 §5.1.1: the sender picks one that it lacks)."""
_CUTS = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)


@given(
    content=_CONTENT,
    before=st.lists(st.tuples(st.text("abc", min_size=1, max_size=5), _CONTENT), max_size=4),
    after=st.lists(st.tuples(st.text("abc", min_size=1, max_size=5), _CONTENT), max_size=3),
    preamble=st.sampled_from([b"", b"preamble\r\n", b"\r\n"]),
    cuts=_CUTS,
)
@hsettings(max_examples=300, deadline=None)
def test_the_file_comes_out_whole_whatever_the_reads(
    content: bytes,
    before: list[tuple[str, bytes]],
    after: list[tuple[str, bytes]],
    preamble: bytes,
    cuts: list[int],
) -> None:
    fields_before = b"".join(field(n, c) for n, c in before)
    fields_after = b"".join(field(n, c) for n, c in after)
    body = preamble + fields_before + part(FILE_HEAD, content) + fields_after + closing()
    filename, got, form = run(split(body, cuts))
    assert (filename, got) == ("a.bin", content)
    assert form.parts == 1 + len(before) + len(after)
    # Everything counts as upload bytes but the file's content, its own framing (the CRLF
    # and boundary line before it, its headers) and the closing boundary (and the CRLF
    # after it, epilogue, unread).
    file_framing = len(f"\r\n--{B}\r\n{FILE_HEAD}\r\n\r\n")
    if not preamble and not before:
        file_framing -= 2  # the body starts with the file's boundary line: no CRLF before
    uncounted = len(content) + file_framing + len(f"\r\n--{B}--\r\n")
    assert form.field_bytes == len(body) - uncounted
    # Everything else up to the closing boundary; the CRLF after it is epilogue, unread.
    assert form.form_bytes == len(body) - len(content) - len(b"\r\n")


@given(
    content=_CONTENT,
    after=st.lists(st.tuples(st.text("abc", min_size=1, max_size=5), _CONTENT), max_size=2),
    data=st.data(),
)
@hsettings(max_examples=200, deadline=None)
def test_a_body_cut_before_its_closing_boundary_is_refused(
    content: bytes, after: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    """Any prefix that lacks the closing `--XyZ--` is a 400, never a file."""
    body = part(FILE_HEAD, content) + b"".join(field(n, c) for n, c in after) + closing()
    end = data.draw(st.integers(min_value=0, max_value=len(body) - len(b"\r\n")))
    cut = body[:end]
    if cut.endswith(b"--XyZ--") or b"\r\n--XyZ--" in cut:
        return  # the closing boundary is whole (its CRLF is optional)
    with pytest.raises(BadRequest):
        run(split(cut, data.draw(_CUTS)))


def test_the_reported_body_without_closing_boundary_is_refused() -> None:
    """Issue 14 §5: the file part and then the end of the body."""
    with pytest.raises(BadRequest, match="closing boundary"):
        run([part(FILE_HEAD, b"hello")[:-2]])
    with pytest.raises(BadRequest, match="closing boundary"):
        run([part(FILE_HEAD, b"hello")])
    with pytest.raises(BadRequest, match="closing boundary"):
        run([part(FILE_HEAD, b"hello") + b"--XyZ\r\n"])


def test_the_first_boundary_may_start_the_body_or_follow_a_preamble() -> None:
    assert run([part(FILE_HEAD, b"x") + closing()])[1] == b"x"
    assert run([b"junk" + b"\r\n" + part(FILE_HEAD, b"x") + closing()])[1] == b"x"


def test_padding_after_a_boundary_is_allowed_anything_else_is_not() -> None:
    padded = f"--{B} \t\r\n{FILE_HEAD}\r\n\r\nx\r\n".encode() + closing()
    assert run([padded])[1] == b"x"
    other = f"--{B}abc\r\n{FILE_HEAD}\r\n\r\nx\r\n".encode() + closing()
    with pytest.raises(BadRequest):
        run([other])


def test_no_file_part_is_400() -> None:
    with pytest.raises(BadRequest, match="'file'"):
        run([field("other", b"x") + closing()])
    with pytest.raises(BadRequest, match="no boundary"):
        run([b"no boundary in here at all"])
    with pytest.raises(BadRequest):
        run([b""])


@pytest.mark.parametrize(
    "header",
    [
        'Content-Disposition: form-data; name="a\x0eb"',  # a control character
        "X-Pad: " + "p" * 10_000,  # longer than max_line
        "no colon here",
        ": no name",
        "Bad Name: x",
    ],
)
def test_malformed_part_headers_are_400(header: str) -> None:
    body = part(header, b"v") + part(FILE_HEAD, b"x") + closing()
    with pytest.raises(BadRequest):
        run([body])


def test_part_headers_are_utf8_and_the_filename_keeps_it() -> None:
    """Bytes that are not UTF-8 come out as lone surrogates, for the name rules to refuse
    with the code point (tests/e2e/test_hostile_names_e2e.py)."""
    head = 'Content-Disposition: form-data; name="file"; filename="été.txt"'
    assert run([part(head, b"x") + closing()])[0] == "été.txt"
    latin = part(FILE_HEAD, b"x").replace(b"a.bin", "é.bin".encode("latin-1")) + closing()
    assert run([latin])[0] == "\udce9.bin"


def test_too_many_header_lines_is_400() -> None:
    head = "\r\n".join([FILE_HEAD, *[f"X-{i}: y" for i in range(40)]])
    with pytest.raises(BadRequest, match="header lines"):
        run([part(head, b"x") + closing()])


def test_the_part_count_is_capped_before_and_after_the_file() -> None:
    limits = FormLimits(max_parts=5, max_form_size=1 << 20, max_line=8190)
    four = b"".join(field(f"f{i}", b"x") for i in range(4))
    assert run([four + part(FILE_HEAD, b"x") + closing()], limits=limits)[1] == b"x"
    with pytest.raises(FormTooLarge) as caught:
        run([four + field("f5", b"x") + part(FILE_HEAD, b"x") + closing()], limits=limits)
    assert caught.value.extensions == {"limit": 5}
    with pytest.raises(FormTooLarge):
        run([four + part(FILE_HEAD, b"x") + field("late", b"x") + closing()], limits=limits)


def test_the_bytes_besides_the_file_are_capped() -> None:
    limits = FormLimits(max_parts=100, max_form_size=1000, max_line=8190)
    assert run([field("c", b"c" * 700) + part(FILE_HEAD, b"f" * 5000) + closing()], limits=limits)
    with pytest.raises(FormTooLarge):
        run([field("c", b"c" * 1000) + part(FILE_HEAD, b"x") + closing()], limits=limits)
    with pytest.raises(FormTooLarge):
        run([b"p" * 2000 + b"\r\n" + part(FILE_HEAD, b"x") + closing()], limits=limits)


def test_an_endless_field_is_cut_at_the_cap_not_read_to_its_end() -> None:
    """A chunked body of one field that never ends: refused once past the cap."""
    limits = FormLimits(max_parts=100, max_form_size=10_000, max_line=8190)
    served = 0

    async def read() -> bytes:
        nonlocal served
        served += 1
        if served == 1:
            return f'--{B}\r\nContent-Disposition: form-data; name="x"\r\n\r\n'.encode()
        return b"z" * 4096

    async def go() -> None:
        await FormReader(read, B, limits, budget=1 << 40).open_file()

    with pytest.raises(FormTooLarge):
        asyncio.run(go())
    assert served < 10


def test_fields_count_with_the_file_against_the_budget() -> None:
    """Other parts and the preamble are upload bytes; the file's own framing is not."""
    body = field("c", b"c" * 100)
    budget = len(body) - 2 + 50  # its last CRLF starts the next boundary line: the file's
    assert run([body + part(FILE_HEAD, b"f" * 50) + closing()], budget=budget)[1] == b"f" * 50
    with pytest.raises(PayloadTooLarge) as caught:
        run([body + part(FILE_HEAD, b"f" * 51) + closing()], budget=budget)
    assert not isinstance(caught.value, FormTooLarge)
    assert caught.value.extensions == {"limit": budget}
    with pytest.raises(PayloadTooLarge):  # after the file too
        run([part(FILE_HEAD, b"f" * 50) + body + field("d", b"") + closing()], budget=budget)
    # Only the file: exactly its size.
    assert run([part(FILE_HEAD, b"f" * 10) + closing()], budget=10)[1] == b"f" * 10


def test_skipped_parts_give_the_event_loop_a_turn_each() -> None:
    """The whole body is buffered (every read returns at once): another task still runs
    between the parts."""
    body = b"".join(field(f"f{i}", b"x") for i in range(50)) + part(FILE_HEAD, b"x") + closing()

    async def go() -> int:
        turns = 0
        stop = False

        async def other() -> None:
            nonlocal turns
            while not stop:
                turns += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        before = turns
        await read_upload([body])
        stop = True
        await task
        return turns - before

    assert asyncio.run(go()) >= 50


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("multipart/form-data; boundary=XyZ", "XyZ"),
        ('multipart/form-data; boundary="a b:c"', "a b:c"),
        ("multipart/form-data; boundary=" + "b" * 70, "b" * 70),
    ],
)
def test_boundary_of(content_type: str, expected: str) -> None:
    assert boundary_of(content_type) == expected


@pytest.mark.parametrize(
    "content_type",
    [
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=" + "b" * 71,
        'multipart/form-data; boundary="é"',
        'multipart/form-data; boundary="a\x01b"',
    ],
)
def test_bad_boundaries_are_400(content_type: str) -> None:
    with pytest.raises(BadRequest):
        boundary_of(content_type)


def test_errors_are_client_errors() -> None:
    for error in (BadRequest, FormTooLarge, PayloadTooLarge):
        assert issubclass(error, FilecaskError)
        assert 400 <= error.status < 500


_FRAMING = st.lists(
    st.sampled_from(
        [
            b"--XyZ",
            b"--XyZ--",
            b"\r\n",
            b"\r\n\r\n",
            b'Content-Disposition: form-data; name="file"; filename="f"',
            b"Content-Disposition: form-data; name=file; filename*=UTF-8''%ED%B3%BF",
            b'Content-Disposition: form-data; name="x"',
            b"Content-Disposition: \xff\xfe",
            b"Content-Type: text/plain",
            b" \t",
            b":",
            b"data",
            b"\x00\x0e",
        ]
    ),
    max_size=30,
).map(b"".join)


@given(body=_FRAMING | st.binary(max_size=200), cuts=_CUTS)
@hsettings(max_examples=400, deadline=None)
def test_any_body_is_a_file_or_a_client_error(body: bytes, cuts: list[int]) -> None:
    """Whatever the framing: a file, or a 4xx error; never anything else."""
    limits = FormLimits(max_parts=5, max_form_size=300, max_line=100)
    status = 200
    try:
        run(split(body, cuts), limits=limits, budget=150)
    except FilecaskError as error:
        status = error.status
    assert 200 <= status < 500
