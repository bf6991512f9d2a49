"""Fuzzing a real `filecask serve` with hostile requests: no answer is a 5xx, and nothing a
client sends puts an ERROR, a traceback or "Unhandled exception" in the server's log.

hypothesis builds requests byte by byte over raw sockets (tests/e2e/rawhttp.py), in four
families: header fields of every kind on every route (bytes that are not ASCII, not
UTF-8, lone surrogates written in UTF-8, digits of other scripts, very long values,
lying `Content-Encoding`s), JSON bodies (valid, deep, long numbers, lone surrogates,
mangled texts), multipart framing (boundaries, part headers, missing or broken closing
delimiters, many parts) and tus headers (creation, offsets, checksums, metadata). Each
example is one request on its own connection, read to its end, and checked against the
log lines it caused.

Bounded and reproducible: one server for the module, a fixed number of examples per
family, no deadline (the machine is shared), derandomized generation and no example
database. To hunt for bugs, run more and new ones:
`FILECASK_FUZZ_EXAMPLES=2000 FILECASK_FUZZ_EXPLORE=1 pytest tests/e2e/test_fuzz_e2e.py`.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from tests.e2e.conftest import ADMIN_PASSWORD, Server, ServerLauncher
from tests.e2e.rawhttp import Answer, build, exchange

EXAMPLES = int(os.environ.get("FILECASK_FUZZ_EXAMPLES", "60"))
EXPLORE = bool(os.environ.get("FILECASK_FUZZ_EXPLORE"))
"""Set, the examples are new on every run (to look for bugs); unset, the same every run."""
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)
CHEAP_ARGON2 = ("--argon2-time-cost", "1", "--argon2-memory", "64K", "--argon2-parallelism", "1")
NO_THROTTLE = ("--auth-max-failures", "1000000")
"""Wrong credentials are generated all the time; a throttled address would answer 429 to
every later request and fuzz nothing behind the sign-in."""
USER = ("fuzzer", "fuzzer-password")
ADMIN = ("admin", ADMIN_PASSWORD)
METRICS_TOKEN = "fuzz-metrics-token-0123456789"
CONTENT = b"fuzzed content\n" * 40
CONTENT_HASH = hashlib.sha256(CONTENT).hexdigest()


def basic(credentials: tuple[str, str]) -> bytes:
    return b"Basic " + base64.b64encode(":".join(credentials).encode())


@pytest.fixture(scope="module")
def fuzzed(module_launcher: ServerLauncher, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A server with a user, a stored file, a bundle, an archive folder and an open tus
    upload, so generated requests meet real data as well as missing ids."""
    root: Path = tmp_path_factory.mktemp("fuzz-archives")
    (root / "photos").mkdir()
    (root / "photos" / "1.jpg").write_bytes(b"\xff\xd8\xff" + b"x" * 1000)
    server = module_launcher(
        "--archive-root",
        str(root),
        *CHEAP_ARGON2,
        *NO_THROTTLE,
        # JSON log lines: the formatter meets every hostile path, name and header too.
        *("--log-format", "json"),
        env={"FILECASK_METRICS_TOKEN": METRICS_TOKEN},
    )
    json_type = (b"Content-Type", b"application/json")
    user = json.dumps({"name": USER[0], "password": USER[1]}).encode()
    setup = [
        (b"POST", b"/users", [(b"Authorization", basic(ADMIN)), json_type], user),
        (b"POST", b"/files?name=f.txt", [(b"Authorization", basic(USER))], CONTENT),
        (
            b"POST",
            b"/archives",
            [(b"Authorization", basic(USER)), json_type],
            json.dumps(
                {"name": "b.zip", "files": [{"hash": CONTENT_HASH, "path": "a/f"}]}
            ).encode(),
        ),
    ]
    for method, target, headers, body in setup:
        answer = send(server, method, target, headers, body)
        assert answer.status in (200, 201), answer.body
    return server


def send(
    server: Server,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    chunks: list[bytes] | None = None,
) -> Answer:
    request = build(method, target, headers, body, chunks=chunks)
    return exchange(server, request, method=method.decode("latin-1"))


def assert_sound(answer: Answer, what: object) -> None:
    """No 5xx, an answer at all, nothing alarming logged."""
    assert answer.alarms() == [], f"{what!r}\n{answer.log}"
    assert answer.status != 0, f"no answer to {what!r}\n{answer.log}"
    assert answer.status < 500, f"{answer.status} for {what!r}: {answer.body[:500]!r}"


# -- building blocks -----------------------------------------------------------------------

NASTY_BYTES = st.sampled_from(
    [
        b"",
        b" ",
        b"\xff",
        b"\xfe\xff",
        b"\xc3\xa9",  # é in UTF-8
        b"\xe9",  # é in Latin-1
        b"\xed\xb3\xbf",  # a lone surrogate written in UTF-8
        b"\xf4\x90\x80\x80",  # past U+10FFFF
        b"\xd9\xa1",  # ARABIC-INDIC DIGIT ONE
        b"\xef\xbc\x91",  # FULLWIDTH DIGIT ONE
        b"\xe2\x80\xae",  # RIGHT-TO-LEFT OVERRIDE
        b"\x00",
        b"\x7f",
        b"\t",
        b"%",
        b"%ED%B3%BF",
        b"=?utf-8?b?w6k=?=",
        b'"',
        b"\\",
        b",",
        b";",
        b"-1",
        b"99999999999999999999999999",
        b"1e999",
        b"bytes=",
        b"*",
    ]
)
"""Pieces that have broken parsers before: not ASCII, not UTF-8, not digits."""
FIELD_BYTES = bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)) + b"\t"
"""What the parser lets through in a field value (obs-text included): most values keep to
these, so they reach the handlers instead of the parser's 400."""
HEADER_VALUE = st.one_of(
    st.binary(max_size=40).map(lambda b: bytes(FIELD_BYTES[c % len(FIELD_BYTES)] for c in b)),
    st.lists(st.one_of(NASTY_BYTES, st.binary(max_size=4)), max_size=6).map(b"".join),
    st.integers(min_value=1, max_value=12_000).map(lambda n: b"a" * n),  # header size caps
).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
HEADER_NAMES = [
    b"Accept",
    b"Accept-Encoding",
    b"Authorization",
    b"Content-Disposition",
    b"Content-Encoding",
    b"Content-Type",
    b"Cookie",
    b"Expect",
    b"If-Match",
    b"If-None-Match",
    b"If-Range",
    b"Origin",
    b"Range",
    b"Referer",
    b"Tus-Resumable",
    b"Upload-Checksum",
    b"Upload-Defer-Length",
    b"Upload-Length",
    b"Upload-Metadata",
    b"Upload-Offset",
    b"User-Agent",
    b"X-Forwarded-For",
    b"X-Forwarded-Proto",
    b"X-HTTP-Method-Override",
]
HEADER_NAME = st.one_of(
    st.sampled_from(HEADER_NAMES),
    st.from_regex(rb"\A[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}\Z").filter(
        lambda n: n.lower() not in (b"connection", b"content-length", b"transfer-encoding", b"host")
    ),
)
GOOD_AUTH = st.sampled_from(
    [basic(USER), basic(ADMIN), b"Bearer " + METRICS_TOKEN.encode(), basic(("nobody", "x"))]
)
TARGETS = st.sampled_from(
    [
        b"/",
        b"/healthz",
        b"/readyz",
        b"/metrics",
        b"/openapi.json",
        b"/docs",
        b"/me",
        b"/users",
        b"/users/fuzzer",
        b"/files",
        b"/files?limit=1",
        b"/files?name=x.txt",
        b"/files/" + CONTENT_HASH.encode(),
        b"/files/" + CONTENT_HASH.encode() + b"?name=",
        b"/files/" + b"0" * 64,
        b"/archives",
        b"/archives/" + b"0" * 64,
        b"/archive/photos/",
        b"/archive/photos",
        b"/archive/",
        b"/uploads/",
        b"/uploads/" + b"0" * 32,
        b"/app.js",
        b"/no/such/route",
    ]
)
TARGET = st.one_of(
    TARGETS,
    st.tuples(TARGETS, st.lists(NASTY_BYTES, max_size=3).map(b"".join)).map(
        lambda t: t[0] + (b"&" if b"?" in t[0] else b"?") + b"name=" + t[1]
    ),
    st.tuples(TARGETS, st.lists(NASTY_BYTES, max_size=3).map(b"".join)).map(
        lambda t: t[0].rstrip(b"/") + b"/" + t[1].replace(b" ", b"%20")
    ),
).map(lambda t: t.replace(b" ", b"%20").replace(b"\t", b"%09"))
METHOD = st.sampled_from(
    [b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"PROPFIND"]
)


def encoded(body: bytes, encoding: bytes) -> bytes:
    """`body` compressed as `encoding` says, or left alone (a lie) for anything else."""
    if encoding == b"gzip":
        return gzip.compress(body)
    if encoding == b"deflate":
        return zlib.compress(body)
    return body


BODY = st.one_of(
    st.just(b""),
    st.binary(max_size=300),
    st.just(CONTENT),
    st.builds(
        lambda v: json.dumps(v).encode(), st.dictionaries(st.text(max_size=5), st.integers())
    ),
)
ENCODING = st.sampled_from([None, b"gzip", b"deflate", b"br", b"zstd", b"identity", b"x-junk"])


# -- 1. header fields on every route ---------------------------------------------------------


@st.composite
def header_requests(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes, Any]:
    method = draw(METHOD)
    target = draw(TARGET)
    headers: list[tuple[bytes, bytes]] = []
    if draw(st.booleans()):
        headers.append((b"Authorization", draw(GOOD_AUTH)))
    headers += draw(st.lists(st.tuples(HEADER_NAME, HEADER_VALUE), max_size=6))
    body = draw(BODY) if method in (b"POST", b"PUT", b"PATCH", b"PROPFIND") else b""
    encoding = draw(ENCODING)
    if encoding is not None:
        honest = draw(st.booleans())
        headers.append((b"Content-Encoding", encoding))
        body = encoded(body, encoding) if honest else body
    chunked = bool(body) and draw(st.booleans())
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]] if chunked else None
    return method, target, headers, body, chunks


TUS = [(b"Tus-Resumable", b"1.0.0"), (b"Upload-Length", b"10")]


@FUZZ
@hypothesis.given(request=header_requests())
# The requests: a body that is not what its Content-Encoding says on routes that
# answer without reading it; a non-ASCII Expect; a non-ASCII Upload-Metadata.
@hypothesis.example((b"POST", b"/me", [(b"Content-Encoding", b"gzip")], b"not gzip", None))
@hypothesis.example((b"PUT", b"/healthz", [(b"Content-Encoding", b"deflate")], b"x\x9c?", None))
@hypothesis.example((b"POST", b"/nowhere", [(b"Content-Encoding", b"gzip")], b"", [b"?"]))
@hypothesis.example((b"POST", b"/me", [(b"Expect", b"\xff\xfe")], b"abc", None))
@hypothesis.example(
    (
        b"POST",
        b"/uploads/",
        [(b"Authorization", basic(USER)), *TUS, (b"Upload-Metadata", b"\xff")],
        b"",
        None,
    )
)
def test_fuzz_headers(fuzzed: Server, request: Any) -> None:
    method, target, headers, body, chunks = request
    assert_sound(send(fuzzed, method, target, headers, body, chunks), request)


# Non-ASCII bytes after `Authorization: Basic` (issue 14 §5), generated on their own as the
# issue found them, so the header fuzz above reaches every other header.
@FUZZ
@hypothesis.given(
    target=st.sampled_from([b"/me", b"/files", b"/metrics", b"/users"]),
    scheme=st.sampled_from([b"Basic", b"basic", b"BASIC", b"Bearer"]),
    token=st.one_of(
        HEADER_VALUE,
        st.binary(max_size=30).map(lambda b: base64.b64encode(b)),
        st.lists(st.one_of(NASTY_BYTES, st.just(b"YWRtaW46")), max_size=4).map(b"".join),
    ),
)
@hypothesis.example(target=b"/me", scheme=b"Basic", token=b"\xff\xfe")  # the issue's
def test_fuzz_authorization(fuzzed: Server, target: bytes, scheme: bytes, token: bytes) -> None:
    header = scheme + b" " + token.replace(b"\r", b"").replace(b"\n", b"")
    answer = send(fuzzed, b"GET", target, [(b"Authorization", header)])
    assert_sound(answer, header)


# -- 2. JSON bodies --------------------------------------------------------------------------

SURROGATE_TEXT = st.lists(
    st.one_of(st.characters(), st.sampled_from(["\udcff", "\ud800", "\udfff", "\u202e"])),
    max_size=10,
).map("".join)
"""Any code point, lone surrogates included (json.dumps writes them as \\udXXX escapes)."""
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(),
        SURROGATE_TEXT,
        st.sampled_from(["10G", "\u0661M", "\uff11G", "-1", "1e3", CONTENT_HASH, "a/b", "../x"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(SURROGATE_TEXT, inner, max_size=4)
    ),
    max_leaves=20,
)
MEMBERS = st.sampled_from(["name", "password", "is_admin", "quota", "files", "path", "hash"])


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    shape = draw(st.integers(min_value=0, max_value=5))
    if shape == 0:  # an object with our members, values of any kind
        value = draw(st.dictionaries(MEMBERS, JSON_VALUES, max_size=4))
    elif shape == 1:  # a manifest-like body
        entry = st.fixed_dictionaries(
            {"path": st.one_of(SURROGATE_TEXT, st.just("a/f")), "hash": st.just(CONTENT_HASH)}
        )
        value = {"name": draw(SURROGATE_TEXT), "files": draw(st.lists(entry, max_size=4))}
    elif shape == 2:  # anything at all
        value = draw(JSON_VALUES)
    else:
        value = None
    if value is not None:
        text = json.dumps(value, ensure_ascii=draw(st.booleans()))
        return text.encode("utf-8", "surrogatepass")
    # Texts json.dumps would never write.
    deep = draw(st.one_of(st.sampled_from([32, 33, 1000, 50_000]), st.integers(1, 60_000)))
    digits = draw(st.one_of(st.sampled_from([32, 33, 4300, 4301, 5000]), st.integers(1, 6000)))
    pieces = [
        b"[" * deep + b"]" * deep,
        b'{"a":' * deep + b"1" + b"}" * deep,
        b'{"quota": ' + b"9" * digits + b"}",
        b'{"quota": 1' + draw(st.sampled_from([b"e999", b"e-999", b".5e308", b"e308"])) + b"}",
        b'{"quota": ' + draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity"])) + b"}",
        b'{"name": "' + draw(NASTY_BYTES) + b'"}',
        b'{"name": "\\u'
        + draw(st.sampled_from([b"d800", b"DCFF", b"dfff", b"zzzz", b"12"]))
        + b'"}',
        b"\xef\xbb\xbf{}",
        b"\xff\xfe{\x00}\x00",
        b'{"files": [' + b"0," * draw(st.sampled_from([10, 65_535, 65_536, 80_000])) + b"0]}",
    ]
    raw = draw(st.sampled_from(pieces))
    if draw(st.booleans()):  # cut or spliced somewhere
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"", b'"', b"\\", b"]", b"\xff"])) + raw[at:]
    return raw


@FUZZ
@hypothesis.given(
    route=st.sampled_from(
        [
            (b"POST", b"/archives", USER),
            (b"POST", b"/users", ADMIN),
            (b"PATCH", b"/users/fuzzer", ADMIN),
            (b"PATCH", b"/users/nobody", ADMIN),
        ]
    ),
    body=json_bodies(),
    content_type=st.sampled_from(
        [b"application/json", b"application/json; charset=latin-1", b"text/plain", b"\xff"]
    ),
    encoding=ENCODING,
)
@hypothesis.example(  # the issue's: nested 50,000 deep
    route=(b"POST", b"/archives", USER),
    body=b"[" * 50_000 + b"]" * 50_000,
    content_type=b"application/json",
    encoding=None,
)
@hypothesis.example(  # a 5,000-digit number
    route=(b"POST", b"/users", ADMIN),
    body=b'{"name": "bob", "quota": ' + b"9" * 5000 + b"}",
    content_type=b"application/json",
    encoding=None,
)
@hypothesis.example(  # a lone surrogate in a bundle path
    route=(b"POST", b"/archives", USER),
    body=b'{"name": "a.zip", "files": [{"path": "\\udcff", "hash": "%s"}]}' % CONTENT_HASH.encode(),
    content_type=b"application/json",
    encoding=None,
)
@hypothesis.example(  # ... in a bundle name, compressed
    route=(b"POST", b"/archives", USER),
    body=b'{"name": "\\udcff", "files": []}',
    content_type=b"application/json",
    encoding=b"gzip",
)
@hypothesis.example(  # ... in a user name
    route=(b"POST", b"/users", ADMIN),
    body=b'{"name": "\\udcff"}',
    content_type=b"application/json",
    encoding=None,
)
@hypothesis.example(  # ... in a password
    route=(b"POST", b"/users", ADMIN),
    body=b'{"name": "eve", "password": "\\udcffpassword"}',
    content_type=b"application/json",
    encoding=None,
)
def test_fuzz_json_bodies(
    fuzzed: Server,
    route: tuple[bytes, bytes, tuple[str, str]],
    body: bytes,
    content_type: bytes,
    encoding: bytes | None,
) -> None:
    method, target, credentials = route
    headers = [(b"Authorization", basic(credentials)), (b"Content-Type", content_type)]
    if encoding is not None:
        headers.append((b"Content-Encoding", encoding))
        body = encoded(body, encoding)
    answer = send(fuzzed, method, target, headers, body)
    assert_sound(answer, (route, body[:300]))
    if answer.status == 400:
        problem = json.loads(answer.body)  # valid UTF-8 and JSON, whatever the input held
        assert problem["status"] == 400


# -- 3. multipart framing --------------------------------------------------------------------

BOUNDARY = st.one_of(
    st.just(b"fuzzboundary"),
    st.from_regex(rb"\A[0-9A-Za-z'()+_,./:=? -]{1,70}\Z"),
    st.binary(min_size=1, max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
TEXT_BYTES = NASTY_BYTES.filter(lambda b: _utf8_text(b) and _utf8_text(unquote_to_bytes(b)))
"""The nasty pieces that are UTF-8 text, also once percent-decoded."""


def _utf8_text(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def dispositions(name_bytes: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Content-Disposition values of a part, with file names made of `name_bytes`."""
    names = st.lists(name_bytes, max_size=4).map(b"".join)
    return st.one_of(
        st.just(b'form-data; name="file"; filename="a.txt"'),
        st.builds(
            lambda name, filename: b'form-data; name="' + name + b'"; filename="' + filename + b'"',
            st.sampled_from([b"file", b"other", b"", b"fil\xc3\xa9"]),
            names,
        ),
        st.builds(lambda filename: b"form-data; name=file; filename*=UTF-8''" + filename, names),
        HEADER_VALUE.filter(lambda v: b"filename" not in v.lower()),
    )


@st.composite
def multipart_bodies(draw: st.DrawFn, disposition: st.SearchStrategy[bytes]) -> tuple[bytes, bytes]:
    boundary = draw(BOUNDARY)
    declared = draw(st.one_of(st.just(boundary), BOUNDARY))  # the header may lie
    quoted = draw(st.booleans())
    content_type = b"multipart/form-data; boundary=" + (
        b'"' + declared + b'"' if quoted else declared
    )
    parts = []
    for _ in range(draw(st.integers(min_value=0, max_value=40))):
        part_headers = [b"Content-Disposition: " + draw(disposition)]
        if draw(st.booleans()):
            part_headers.append(b"Content-Type: " + draw(HEADER_VALUE))
        if draw(st.booleans()):
            part_headers.append(draw(HEADER_NAME) + b": " + draw(HEADER_VALUE))
        data = draw(st.one_of(st.binary(max_size=50), st.just(b"--" + boundary)))
        parts.append(b"\r\n".join(part_headers) + b"\r\n\r\n" + data)
    delimiter = b"--" + boundary
    body = b"".join(delimiter + b"\r\n" + part + b"\r\n" for part in parts)
    body += draw(
        st.sampled_from(
            [delimiter + b"--\r\n", delimiter + b"--", b"", delimiter, delimiter + b"-", b"--"]
        )
    )
    if draw(st.booleans()):  # damage the framing somewhere
        at = draw(st.integers(min_value=0, max_value=len(body)))
        cut = draw(st.integers(min_value=0, max_value=10))
        body = (
            body[:at]
            + draw(st.sampled_from([b"", b"\r\n", b"\n", b"--", b"\r"]))
            + body[at + cut :]
        )
    return content_type, body


MULTIPART_TARGETS = st.sampled_from([b"/files", b"/files?name=m.bin", b"/files/" + b"0" * 64])


def post_form(fuzzed: Server, form: tuple[bytes, bytes], target: bytes, chunked: bool) -> None:
    content_type, body = form
    headers = [(b"Authorization", basic(USER)), (b"Content-Type", content_type)]
    chunks = [body[: len(body) // 3], body[len(body) // 3 :]] if chunked else None
    answer = send(fuzzed, b"POST", target, headers, body, chunks)
    assert_sound(answer, (content_type, body[:300]))


@FUZZ
@hypothesis.given(
    form=multipart_bodies(dispositions(TEXT_BYTES)),
    target=MULTIPART_TARGETS,
    chunked=st.booleans(),
)
@hypothesis.example(  # the issue's: no closing delimiter
    form=(
        b"multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="cut.bin"\r\n\r\ndata',
    ),
    target=b"/files",
    chunked=False,
)
def test_fuzz_multipart_framing(
    fuzzed: Server, form: tuple[bytes, bytes], target: bytes, chunked: bool
) -> None:
    post_form(fuzzed, form, target, chunked)


# A lone surrogate in a file name (issue 14 §5): here the bytes of a multipart file name
# that are not UTF-8, which the parser keeps as surrogates, generated on their own.
@FUZZ
@hypothesis.given(
    form=multipart_bodies(dispositions(NASTY_BYTES)),
    target=MULTIPART_TARGETS,
    chunked=st.booleans(),
)
@hypothesis.example(  # a file name that is not UTF-8
    form=(
        b"multipart/form-data; boundary=b",
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="\xff"\r\n\r\n'
        b"x\r\n--b--\r\n",
    ),
    target=b"/files",
    chunked=False,
)
def test_fuzz_multipart_file_names(
    fuzzed: Server, form: tuple[bytes, bytes], target: bytes, chunked: bool
) -> None:
    post_form(fuzzed, form, target, chunked)


# -- 4. tus headers --------------------------------------------------------------------------

DIGITS = st.one_of(
    st.integers(min_value=0, max_value=2000).map(lambda n: str(n).encode()),
    st.sampled_from([b"", b"-1", b"+5", b" 5", b"5 ", b"0x10", b"1e3", b"9" * 30, b"\xd9\xa1"]),
    HEADER_VALUE,
)
METADATA = st.one_of(
    st.lists(
        st.tuples(
            st.one_of(st.sampled_from([b"filename", b"filetype", b""]), HEADER_VALUE),
            st.one_of(
                st.binary(max_size=30).map(base64.b64encode),
                st.lists(NASTY_BYTES, max_size=3).map(lambda p: base64.b64encode(b"".join(p))),
                HEADER_VALUE,
            ),
        ),
        max_size=4,
    ).map(lambda pairs: b",".join(k + b" " + v for k, v in pairs)),
    HEADER_VALUE,
)


@st.composite
def tus_requests(draw: st.DrawFn) -> list[tuple[bytes, list[tuple[bytes, bytes]], bytes]]:
    """A creation, then a few requests on the created upload (or on a made-up id)."""
    auth = (b"Authorization", basic(USER))
    # Mostly right where a wrong value ends the exchange at once (412, 400).
    version = draw(HEADER_VALUE) if draw(st.integers(0, 9)) == 0 else b"1.0.0"
    length = draw(DIGITS) if draw(st.integers(0, 3)) == 0 else b"%d" % draw(st.integers(0, 64))
    create = [auth, (b"Tus-Resumable", version), (b"Upload-Length", length)]
    if draw(st.booleans()):
        create.append((b"Upload-Metadata", draw(METADATA)))
    if draw(st.booleans()):
        create.append((b"Upload-Defer-Length", draw(DIGITS)))
    steps: list[tuple[bytes, list[tuple[bytes, bytes]], bytes]] = [(b"POST", create, b"")]
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        method = draw(st.sampled_from([b"PATCH", b"PATCH", b"HEAD", b"DELETE", b"OPTIONS"]))
        headers = [auth, (b"Tus-Resumable", version)]
        body = b""
        if method == b"PATCH":
            offset = draw(st.one_of(DIGITS, st.integers(0, 64).map(lambda n: b"%d" % n)))
            headers.append((b"Upload-Offset", offset))
            headers.append(
                (
                    b"Content-Type",
                    draw(st.sampled_from([b"application/offset+octet-stream", b"text/plain"])),
                )
            )
            if draw(st.booleans()):
                algorithm = draw(st.sampled_from([b"sha1", b"sha256", b"md5", b"SHA1"]))
                digest = draw(st.one_of(st.binary(max_size=32).map(base64.b64encode), HEADER_VALUE))
                headers.append((b"Upload-Checksum", algorithm + b" " + digest))
            body = draw(st.binary(max_size=64))
        steps.append((method, headers, body))
    return steps


@FUZZ
@hypothesis.given(steps=tus_requests())
@hypothesis.example(  # the issue's: a non-ASCII Upload-Metadata
    [
        (
            b"POST",
            [(b"Authorization", basic(USER)), *TUS, (b"Upload-Metadata", b"filename \xff")],
            b"",
        )
    ]
)
def test_fuzz_tus_headers(fuzzed: Server, steps: list[Any]) -> None:
    location = b"/uploads/" + b"0" * 32
    for method, headers, body in steps:
        target = b"/uploads/" if method in (b"POST", b"OPTIONS") else location
        answer = send(fuzzed, method, target, headers, body)
        assert_sound(answer, (method, headers))
        if method == b"POST" and answer.status == 201:
            location = b"/" + answer.headers["location"].split("/", 3)[3].encode()


# -- the fuzzer can fail --------------------------------------------------------------------


def test_the_log_check_sees_an_error(fuzzed: Server) -> None:
    """`assert_sound` would catch a traceback: the server's own log lines are read."""
    answer = send(fuzzed, b"GET", b"/healthz", [])
    assert answer.status == 200
    assert "GET /healthz" in answer.log  # the access line of this very request
    fake = Answer(200, {}, b"", "2025 ERROR filecask.errors unhandled error\nTraceback (...)")
    check: Callable[[Answer, object], None] = assert_sound
    with pytest.raises(AssertionError):
        check(fake, "a fake answer")
