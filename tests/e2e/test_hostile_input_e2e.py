"""Issue 14, bad input: each request of the issue against a real `filecask serve` gets a
clear 4xx (problem+json), never a 500, and the server logs no error or traceback for it.
And /metrics, public before, needs the metrics token or an administrator.

Each test here failed on the code before the fix (a 500, an ERROR traceback in the log,
or /metrics answering anyone).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import threading
import time
import zlib
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, Server, ServerLauncher
from tests.e2e.lag import HealthProbe
from tests.e2e.rawhttp import Answer, build, exchange

ADMIN = b"Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode())
USER_NAME, USER_PASSWORD = "mallory", "mallory-password"
USER = b"Basic " + base64.b64encode(f"{USER_NAME}:{USER_PASSWORD}".encode())
METRICS_TOKEN = "e2e-metrics-token-0123456789abcdef"
CHEAP_ARGON2 = ("--argon2-time-cost", "1", "--argon2-memory", "64K", "--argon2-parallelism", "1")
JSON = (b"Content-Type", b"application/json")


@pytest.fixture(scope="module")
def server(module_launcher: ServerLauncher) -> Server:
    """A server with one ordinary user (the attacker) and the metrics token set."""
    started = module_launcher(*CHEAP_ARGON2, env={"FILECASK_METRICS_TOKEN": METRICS_TOKEN})
    body = json.dumps({"name": USER_NAME, "password": USER_PASSWORD}).encode()
    created = send(started, b"POST", b"/users", [(b"Authorization", ADMIN), JSON], body)
    assert created.status == 201, created.body
    return started


def send(
    server: Server,
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
) -> Answer:
    return exchange(server, build(method, target, headers, body), method=method.decode())


def assert_clean_4xx(answer: Answer, status: int | None = None) -> dict[str, object]:
    """A 4xx problem+json answer (the status given, if any) and no error in the log."""
    assert answer.alarms() == [], answer.log
    assert 400 <= answer.status < 500, (answer.status, answer.body[:300])
    if status is not None:
        assert answer.status == status, answer.body[:300]
    assert answer.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = json.loads(answer.body.decode("utf-8"))  # valid UTF-8
    assert problem["status"] == answer.status
    return problem


# -- JSON bodies: depth and number size --------------------------------------------------


@pytest.mark.parametrize(
    ("target", "auth"), [(b"/archives", USER), (b"/users", ADMIN), (b"/users/mallory", ADMIN)]
)
def test_a_json_body_nested_50000_deep_is_a_400(server: Server, target: bytes, auth: bytes) -> None:
    method = b"PATCH" if target.startswith(b"/users/") else b"POST"
    for deep in (b"[" * 50_000 + b"]" * 50_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
        answer = send(server, method, target, [(b"Authorization", auth), JSON], deep)
        problem = assert_clean_4xx(answer, 400)
        assert "deep" in str(problem["detail"])


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "bob", "quota": ' + b"7" * 5000 + b"}",
        b'{"name": "bob", "quota": -' + b"7" * 5000 + b"}",
        b'{"name": "bob", "quota": 1.' + b"5" * 5000 + b"}",
        b'{"name": "bob", "quota": 1' + b"0" * 5000 + b"e-4990}",
    ],
    ids=["5000-digits", "negative", "5000-digit-fraction", "long-float"],
)
def test_a_5000_digit_number_is_a_400(server: Server, body: bytes) -> None:
    for target, auth, method in (
        (b"/users", ADMIN, b"POST"),
        (b"/users/mallory", ADMIN, b"PATCH"),
        (b"/archives", USER, b"POST"),
    ):
        answer = send(server, method, target, [(b"Authorization", auth), JSON], body)
        problem = assert_clean_4xx(answer, 400)
        assert "number" in str(problem["detail"]), problem


@pytest.mark.parametrize(
    "body",
    [b'{"quota": 1e999}', b'{"quota": -1e999}', b'{"quota": NaN}', b'{"quota": Infinity}'],
)
def test_infinite_numbers_and_nan_are_not_json(server: Server, body: bytes) -> None:
    """Python's parser takes `1e999` as inf and `NaN` as a number: neither is JSON."""
    answer = send(server, b"PATCH", b"/users/mallory", [(b"Authorization", ADMIN), JSON], body)
    problem = assert_clean_4xx(answer, 400)
    assert "field" not in problem  # refused as JSON, before any member is looked at


@pytest.mark.parametrize(
    ("target", "auth", "body"),
    [
        (b"/users", ADMIN, b'{"name": "\\udcff"}'),
        (b"/users", ADMIN, b'{"name": "eve", "password": "\\udcffpassword-long"}'),
        (b"/archives", USER, b'{"name": "\\udcff.zip", "files": []}'),
        (b"/archives", USER, b'{"files": [{"path": "a\\ud800", "hash": "' + b"a" * 64 + b'"}]}'),
        (b"/archives", USER, b'{"\\udcff": 1}'),
        (b"/users", ADMIN, b'{"name": "\xed\xb3\xbf"}'),  # a surrogate written in UTF-8
    ],
    ids=["user-name", "password", "bundle-name", "bundle-path", "key", "utf8-surrogate"],
)
def test_a_lone_surrogate_in_a_json_body_is_a_400_that_can_be_sent(
    server: Server, target: bytes, auth: bytes, body: bytes
) -> None:
    """Not text: refused as JSON, whatever member holds it (before, the 400 about the
    name could not itself be encoded and became a 500 with a traceback)."""
    answer = send(server, b"POST", target, [(b"Authorization", auth), JSON], body)
    assert_clean_4xx(answer, 400)


def test_a_valid_surrogate_pair_is_a_character(server: Server) -> None:
    """`\\ud83d\\ude00` is one character (😀), not a lone surrogate: accepted."""
    content = os.urandom(64)
    stored = send(server, b"POST", b"/files", [(b"Authorization", USER)], content)
    assert stored.status == 201, stored.body
    digest = hashlib.sha256(content).hexdigest()
    body = b'{"name": "\\ud83d\\ude00.zip", "files": [{"path": "a", "hash": "%s"}]}' % (
        digest.encode()
    )
    answer = send(server, b"POST", b"/archives", [(b"Authorization", USER), JSON], body)
    assert answer.status == 201, answer.body
    assert json.loads(answer.body)["name"] == "\U0001f600.zip"
    assert answer.alarms() == []


@pytest.mark.alone  # HealthProbe: p99 < 50 ms
def test_hostile_json_bodies_do_not_stall_other_clients(server: Server) -> None:
    """For 1.5 s two clients send the issue's bodies (nested 50,000 deep, a 5,000-digit
    number) and a body of 100,000 values: each is refused before the parser builds
    anything, and /healthz answers others in time meanwhile."""
    bodies = [
        b"[" * 50_000 + b"]" * 50_000,
        b'{"name": "bob", "quota": ' + b"9" * 5000 + b"}",
        b'{"files": [' + b"0," * 100_000 + b"0]}",
    ]
    failures: list[Answer] = []
    deadline = time.monotonic() + 1.5

    def attack() -> None:
        while time.monotonic() < deadline:
            for body in bodies:
                headers = [(b"Authorization", USER), JSON]
                answer = send(server, b"POST", b"/archives", headers, body)
                if answer.status != 400 or answer.alarms():
                    failures.append(answer)

    with HealthProbe(server.port) as probe:
        threads = [threading.Thread(target=attack) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not failures, failures[0]
    probe.assert_responsive()


# -- Content-Encoding ----------------------------------------------------------------------


NOT_GZIP = b"this is not gzip at all"
NOT_DEFLATE = b"\x78\x9cthis is not deflate either"


@pytest.mark.parametrize(
    ("method", "target", "auth"),
    [
        (b"POST", b"/me", USER),  # 405, the body never read
        (b"PUT", b"/healthz", b""),  # 405, anonymous
        (b"POST", b"/no/such/route", b""),  # 404
        (b"DELETE", b"/files/" + b"0" * 64, b""),  # 401
        (b"POST", b"/archives", USER),  # the body is read: 400
        (b"POST", b"/files", USER),  # an upload: 400, nothing stored
        (b"PATCH", b"/users/mallory", ADMIN),
    ],
)
@pytest.mark.parametrize(
    ("encoding", "body"), [(b"gzip", NOT_GZIP), (b"deflate", NOT_DEFLATE)], ids=["gzip", "deflate"]
)
def test_a_body_that_is_not_what_its_content_encoding_says_is_a_4xx_without_traceback(
    server: Server, method: bytes, target: bytes, auth: bytes, encoding: bytes, body: bytes
) -> None:
    headers = [(b"Content-Encoding", encoding), JSON]
    if auth:
        headers.append((b"Authorization", auth))
    answer = send(server, method, target, headers, body)
    assert_clean_4xx(answer)


def test_a_gzip_body_that_is_gzip_is_decoded(server: Server) -> None:
    """Compressed request bodies stay supported: the stored file is what was compressed."""
    content = b"compressed upload " * 1000
    packed = gzip.compress(content)
    answer = send(
        server,
        b"POST",
        b"/files?name=z.txt",
        [(b"Authorization", USER), (b"Content-Encoding", b"gzip")],
        packed,
    )
    assert answer.status == 201, answer.body
    assert json.loads(answer.body)["hash"] == hashlib.sha256(content).hexdigest()
    deflated = zlib.compress(b'{"quota": "1G"}')
    answer = send(
        server,
        b"PATCH",
        b"/users/mallory",
        [(b"Authorization", ADMIN), JSON, (b"Content-Encoding", b"deflate")],
        deflated,
    )
    assert answer.status == 200, answer.body
    assert json.loads(answer.body)["quota"] == 1 << 30
    assert answer.alarms() == []


# -- tus: Upload-Metadata ------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        b"filename \xff",  # not UTF-8
        b"filename " + base64.b64encode(b"a.txt") + b",note \xc3\xa9",  # UTF-8, not ASCII
        b"\xff\xfe " + base64.b64encode(b"a.txt"),  # a key that is not ASCII
        b"filename \xed\xb3\xbf",  # a UTF-8-encoded surrogate
    ],
    ids=["latin-1", "utf-8", "key", "surrogate"],
)
def test_a_non_ascii_upload_metadata_is_a_400(server: Server, metadata: bytes) -> None:
    headers = [
        (b"Authorization", USER),
        (b"Tus-Resumable", b"1.0.0"),
        (b"Upload-Length", b"10"),
        (b"Upload-Metadata", metadata),
    ]
    answer = send(server, b"POST", b"/uploads/", headers)
    problem = assert_clean_4xx(answer, 400)
    assert "ASCII" in str(problem["detail"]) or "base64" in str(problem["detail"])
    assert answer.headers["tus-resumable"] == "1.0.0"


def test_an_ascii_upload_metadata_still_names_the_file(server: Server) -> None:
    name = "résumé.txt".encode()
    headers = [
        (b"Authorization", USER),
        (b"Tus-Resumable", b"1.0.0"),
        (b"Upload-Length", b"3"),
        (b"Upload-Metadata", b"filename " + base64.b64encode(name)),
    ]
    created = send(server, b"POST", b"/uploads/", headers)
    assert created.status == 201, created.body
    path = created.headers["location"].split("/", 3)[3].encode()
    patch = [
        (b"Authorization", USER),
        (b"Tus-Resumable", b"1.0.0"),
        (b"Upload-Offset", b"0"),
        (b"Content-Type", b"application/offset+octet-stream"),
    ]
    done = send(server, b"PATCH", b"/" + path, patch, b"abc")
    assert done.status == 204, done.body
    listed = send(server, b"GET", b"/files", [(b"Authorization", USER)])
    assert "résumé.txt" in [f["name"] for f in json.loads(listed.body)["files"]]


# -- /metrics ------------------------------------------------------------------------------


def test_metrics_are_not_public_by_default(server: Server) -> None:
    for method in (b"GET", b"HEAD"):
        answer = send(server, method, b"/metrics", [])
        assert answer.status == 401
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith("Bearer ")
        assert "Basic " in challenge
        assert b"filecask_http_requests_total" not in answer.body
    # An ordinary user is no administrator.
    answer = send(server, b"GET", b"/metrics", [(b"Authorization", USER)])
    assert answer.status == 403
    # A wrong token (or a bearer token of a different length, or not ASCII) is refused.
    for token in (b"wrong", METRICS_TOKEN.encode() + b"x", b"\xff" * 40, b""):
        answer = send(server, b"GET", b"/metrics", [(b"Authorization", b"Bearer " + token)])
        assert answer.status == 401, token
        assert "invalid_token" in answer.headers["www-authenticate"]
        assert answer.alarms() == []


def test_metrics_answer_the_token_and_an_administrator(server: Server) -> None:
    bearer = (b"Authorization", b"Bearer " + METRICS_TOKEN.encode())
    for headers in ([bearer], [(b"Authorization", ADMIN)]):
        answer = send(server, b"GET", b"/metrics", headers)
        assert answer.status == 200, answer.body
        assert answer.headers["content-type"].startswith("text/plain")
        assert b"filecask_http_requests_total" in answer.body
    assert send(server, b"HEAD", b"/metrics", [bearer]).status == 200


def test_metrics_token_from_a_file_and_metrics_public(
    module_launcher: ServerLauncher, tmp_path: Path
) -> None:
    token_file = tmp_path / "metrics-token"
    token_file.write_text("from-a-file-0123456789abcdef\n")
    server = module_launcher("--metrics-token-file", str(token_file))
    ok = send(
        server, b"GET", b"/metrics", [(b"Authorization", b"Bearer from-a-file-0123456789abcdef")]
    )
    assert ok.status == 200
    assert send(server, b"GET", b"/metrics", []).status == 401
    public = module_launcher("--metrics-public", "true")
    assert send(public, b"GET", b"/metrics", []).status == 200
