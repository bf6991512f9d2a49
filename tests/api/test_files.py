"""/files over a real loopback socket: every row of the API table and its error cases."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator
from email.parser import BytesParser
from email.policy import HTTP

import aiohttp
import pytest

from filecask.services import Services
from filecask.settings import Settings
from tests.conftest import ADMIN, AppClient, MakeSettings, MakeUser, StoreView, assert_problem

BODY = os.urandom(50_000)
SHA = hashlib.sha256(BODY).hexdigest()


@pytest.fixture(params=["memory-cache", "no-cache"])
def settings(request: pytest.FixtureRequest, make_settings: MakeSettings) -> Settings:
    """Every test here runs twice: small downloads served from the in-memory cache, and
    every download sent from the file (`--cache-size 0`), as large files always are."""
    return make_settings() if request.param == "memory-cache" else make_settings(cache_size=0)


async def upload(
    client: AppClient,
    body: bytes = BODY,
    *,
    name: str | None = None,
    headers: dict[str, str] = ADMIN,
) -> aiohttp.ClientResponse:
    url = "/files" if name is None else f"/files?name={name}"
    return await client.post(url, data=body, headers=headers)


def is_stored(settings: Settings, hex_hash: str) -> bool:
    """The blob is in the store (the data directory or the bucket)."""
    return StoreView(settings).exists(hex_hash)


def scratch_files(settings: Settings) -> list[str]:
    return StoreView(settings).scratch()


# upload


async def test_upload_raw_body_returns_201_with_location(client: AppClient) -> None:
    response = await upload(client, name="photo.bin")
    assert response.status == 201
    body = await response.json()
    assert body["hash"] == SHA
    assert body["size"] == len(BODY)
    assert body["name"] == "photo.bin"
    assert body["url"].endswith(f"/files/{SHA}")
    assert response.headers["Location"] == body["url"]


async def test_upload_stores_blob_under_fanout_path(client: AppClient, settings: Settings) -> None:
    await upload(client)
    assert StoreView(settings).read(SHA) == BODY
    assert scratch_files(settings) == []


async def test_reupload_of_owned_content_is_200_with_same_body(client: AppClient) -> None:
    first = await (await upload(client, name="a.bin")).json()
    again = await upload(client, name="other-name.bin")
    assert again.status == 200
    assert await again.json() == first


async def test_upload_put_without_hash_behaves_like_post(client: AppClient) -> None:
    response = await client.put("/files?name=x.bin", data=BODY, headers=ADMIN)
    assert response.status == 201
    assert (await response.json())["hash"] == SHA


async def test_upload_multipart_field_file_takes_its_filename(client: AppClient) -> None:
    form = aiohttp.FormData()
    form.add_field("comment", "ignored")
    form.add_field("file", BODY, filename="holiday.jpg", content_type="image/jpeg")
    response = await client.post("/files", data=form, headers=ADMIN)
    assert response.status == 201
    body = await response.json()
    assert (body["hash"], body["name"], body["content_type"]) == (SHA, "holiday.jpg", "image/jpeg")


async def test_upload_multipart_without_file_field_is_400(client: AppClient) -> None:
    form = aiohttp.FormData()
    form.add_field("other", b"x", filename="x.bin")
    response = await client.post("/files", data=form, headers=ADMIN)
    assert response.status == 400
    assert_problem(await response.json(), 400, "bad-request")


async def test_upload_without_name_is_named_by_its_hash(client: AppClient) -> None:
    assert (await (await upload(client)).json())["name"] == SHA


@pytest.mark.parametrize("name", ["a/b", "..", "a\\b", "nul\x00", "x" * 256, "é" * 128])
async def test_upload_with_bad_name_is_400_and_stores_nothing(
    client: AppClient, settings: Settings, name: str
) -> None:
    response = await client.post("/files", params={"name": name}, data=BODY, headers=ADMIN)
    assert response.status == 400
    assert_problem(await response.json(), 400, "invalid-name")
    assert not is_stored(settings, SHA)


async def test_upload_anonymous_is_401_with_basic_challenge(client: AppClient) -> None:
    response = await upload(client, headers={})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="filecask", charset="UTF-8"'
    assert response.content_type == "application/problem+json"
    assert_problem(await response.json(), 401, "unauthorized")


async def test_upload_of_empty_body_is_stored(client: AppClient) -> None:
    body = await (await upload(client, b"")).json()
    assert body["hash"] == hashlib.sha256(b"").hexdigest()
    assert body["size"] == 0
    download = await client.get(f"/files/{body['hash']}")
    assert download.status == 200
    assert await download.read() == b""


async def test_put_with_matching_hash_stores(client: AppClient) -> None:
    response = await client.put(f"/files/{SHA}", data=BODY, headers=ADMIN)
    assert response.status == 201
    assert (await response.json())["hash"] == SHA


async def test_put_with_upper_case_hash_is_normalised(client: AppClient) -> None:
    response = await client.put(f"/files/{SHA.upper()}", data=BODY, headers=ADMIN)
    assert response.status == 201
    assert (await response.json())["hash"] == SHA


async def test_put_with_mismatching_hash_is_400_and_stores_nothing(
    client: AppClient, settings: Settings
) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    response = await client.put(f"/files/{wrong}", data=BODY, headers=ADMIN)
    assert response.status == 400
    problem = await response.json()
    assert_problem(problem, 400, "hash-mismatch")
    assert (problem["expected"], problem["actual"]) == (wrong, SHA)
    assert (await client.get(f"/files/{SHA}")).status == 404
    assert (await client.get(f"/files/{wrong}")).status == 404
    assert not is_stored(settings, SHA)
    assert scratch_files(settings) == []


async def test_upload_larger_than_limit_with_content_length_is_413(
    aiohttp_client: object, make_settings: MakeSettings
) -> None:
    settings = make_settings(max_upload_size=1000)
    client = await _client(aiohttp_client, settings)
    response = await upload(client, b"x" * 1001)
    assert response.status == 413
    assert_problem(await response.json(), 413, "payload-too-large")
    assert scratch_files(settings) == []


async def test_upload_larger_than_limit_without_content_length_is_413_while_streaming(
    aiohttp_client: object, make_settings: MakeSettings
) -> None:
    settings = make_settings(max_upload_size=100_000)

    async def chunks() -> object:
        for _ in range(10):
            yield b"y" * 20_000

    client = await _client(aiohttp_client, settings)
    response = await client.post("/files", data=chunks(), headers=ADMIN)
    assert response.status == 413
    assert_problem(await response.json(), 413, "payload-too-large")
    assert scratch_files(settings) == []
    assert StoreView(settings).top() == []


async def test_upload_exactly_at_limit_is_accepted(
    aiohttp_client: object, make_settings: MakeSettings
) -> None:
    client = await _client(aiohttp_client, make_settings(max_upload_size=1000))
    assert (await upload(client, b"z" * 1000)).status == 201


async def test_expect_continue_for_oversized_upload_is_refused_before_body(
    aiohttp_client: object, make_settings: MakeSettings
) -> None:
    client = await _client(aiohttp_client, make_settings(max_upload_size=10))
    response = await client.post(
        "/files", data=b"0123456789abc", headers={**ADMIN, "Expect": "100-continue"}
    )
    assert response.status == 413
    assert response.content_type == "application/problem+json"


async def test_expect_continue_for_acceptable_upload_stores(client: AppClient) -> None:
    response = await client.post("/files", data=BODY, headers={**ADMIN, "Expect": "100-continue"})
    assert response.status == 201


# download


async def test_download_headers(client: AppClient) -> None:
    await upload(client, name="secret-name.bin")
    response = await client.get(f"/files/{SHA}")
    assert response.status == 200
    assert await response.read() == BODY
    headers = response.headers
    assert headers["ETag"] == f'"{SHA}"'
    assert headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox"
    assert headers["Content-Length"] == str(len(BODY))
    assert headers["Content-Type"] == "application/octet-stream"


async def test_download_without_name_never_reveals_the_uploaders_name(client: AppClient) -> None:
    await upload(client, name="secret-name.bin")
    response = await client.get(f"/files/{SHA}")
    disposition = response.headers["Content-Disposition"]
    assert disposition == f'inline; filename="{SHA}"'
    assert "secret" not in str(response.headers)


async def test_download_with_ascii_name(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", params={"name": "report.bin"})
    assert response.headers["Content-Disposition"] == 'inline; filename="report.bin"'


async def test_download_with_non_ascii_name_uses_rfc5987(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", params={"name": "отчёт 2026.bin"})
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('inline; filename="')
    assert "filename*=UTF-8''%D0%BE%D1%82%D1%87%D1%91%D1%82%202026.bin" in disposition


async def test_download_with_bad_name_is_400(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", params={"name": "../etc/passwd"})
    assert response.status == 400


@pytest.mark.parametrize(
    ("name", "body", "content_type"),
    [
        ("page.html", b"<script>alert(1)</script>", "text/html"),
        ("image.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml"),
        ("app.js", b"alert(1)", "text/javascript"),
        ("feed.xml", b"<?xml version='1.0'?><a/>", "application/xml"),
    ],
)
async def test_active_content_is_sent_as_sandboxed_attachment(
    client: AppClient, name: str, body: bytes, content_type: str
) -> None:
    hex_hash = (await (await upload(client, body, name=name)).json())["hash"]
    response = await client.get(f"/files/{hex_hash}")
    assert response.headers["Content-Type"].startswith(content_type)
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert response.headers["Content-Security-Policy"] == "sandbox"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_png_is_inline_with_its_type(client: AppClient) -> None:
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(100)
    hex_hash = (await (await upload(client, png)).json())["hash"]
    response = await client.get(f"/files/{hex_hash}")
    assert response.headers["Content-Type"] == "image/png"
    assert response.headers["Content-Disposition"].startswith("inline;")


async def test_head_has_headers_and_no_body(client: AppClient) -> None:
    await upload(client)
    response = await client.head(f"/files/{SHA}")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(BODY))
    assert response.headers["ETag"] == f'"{SHA}"'
    assert await response.read() == b""


async def test_download_single_range_is_206(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", headers={"Range": "bytes=100-199"})
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 100-199/{len(BODY)}"
    assert await response.read() == BODY[100:200]


async def test_download_suffix_range(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", headers={"Range": "bytes=-10"})
    assert response.status == 206
    assert await response.read() == BODY[-10:]


async def test_download_multiple_ranges_is_multipart_byteranges(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", headers={"Range": "bytes=0-9,1000-1099,-5"})
    assert response.status == 206
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/byteranges; boundary=")
    raw = await response.read()
    assert len(raw) == int(response.headers["Content-Length"])
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    parts = list(message.iter_parts())
    expected = [(0, 9), (1000, 1099), (len(BODY) - 5, len(BODY) - 1)]
    assert len(parts) == len(expected)
    for part, (start, end) in zip(parts, expected, strict=True):
        assert part["Content-Range"] == f"bytes {start}-{end}/{len(BODY)}"
        assert part.get_payload(decode=True) == BODY[start : end + 1]


async def test_download_unsatisfiable_range_is_416(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", headers={"Range": f"bytes={len(BODY)}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{len(BODY)}"
    assert_problem(await response.json(), 416, "range-not-satisfiable")


async def test_download_malformed_range_is_ignored(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", headers={"Range": "bytes=oops"})
    assert response.status == 200
    assert await response.read() == BODY


async def test_if_none_match_is_304(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA}", headers={"If-None-Match": f'W/"{SHA}"'})
    assert response.status == 304
    assert response.headers["ETag"] == f'"{SHA}"'
    assert await response.read() == b""


async def test_if_range_matching_etag_gives_range(client: AppClient) -> None:
    await upload(client)
    headers = {"Range": "bytes=0-9", "If-Range": f'"{SHA}"'}
    response = await client.get(f"/files/{SHA}", headers=headers)
    assert response.status == 206
    assert await response.read() == BODY[:10]


async def test_if_range_other_etag_gives_whole_file(client: AppClient) -> None:
    await upload(client)
    headers = {"Range": "bytes=0-9", "If-Range": '"something-else"'}
    response = await client.get(f"/files/{SHA}", headers=headers)
    assert response.status == 200
    assert await response.read() == BODY


async def test_download_upper_case_hash(client: AppClient) -> None:
    await upload(client)
    response = await client.get(f"/files/{SHA.upper()}")
    assert response.status == 200
    assert await response.read() == BODY


async def test_download_unknown_hash_is_404(client: AppClient) -> None:
    response = await client.get(f"/files/{'0' * 64}")
    assert response.status == 404
    assert_problem(await response.json(), 404, "not-found")


@pytest.mark.parametrize(
    "path",
    [
        "/files/abc",
        "/files/" + "a" * 65,
        "/files/" + "g" * 64,
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/%2e%2e",
        "/files/" + "a" * 63 + "%00",
        "/files/" + "%EF%BC%90" * 64,  # full-width digit zero, percent-encoded
        "/files/" + "a" * 5000,
    ],
)
async def test_download_with_invalid_hash_is_400(client: AppClient, path: str) -> None:
    # encoded=True sends the path as written: no client-side dot-segment normalisation.
    response = await client.session.get(client.make_url("").with_path(path, encoded=True))
    assert response.status == 400, path
    assert_problem(await response.json(), 400, "invalid-hash")


# delete


async def test_delete_by_owner_is_204_and_removes_blob(
    client: AppClient, settings: Settings
) -> None:
    await upload(client)
    response = await client.delete(f"/files/{SHA}", headers=ADMIN)
    assert response.status == 204
    assert (await client.get(f"/files/{SHA}")).status == 404
    assert not is_stored(settings, SHA)


async def test_delete_unknown_is_404(client: AppClient) -> None:
    response = await client.delete(f"/files/{'1' * 64}", headers=ADMIN)
    assert response.status == 404


async def test_delete_by_non_owner_is_403_and_keeps_file(
    client: AppClient, make_user: MakeUser
) -> None:
    await upload(client)
    bob = await make_user("bob")
    response = await client.delete(f"/files/{SHA}", headers=bob)
    assert response.status == 403
    assert_problem(await response.json(), 403, "forbidden")
    assert (await client.get(f"/files/{SHA}")).status == 200


async def test_delete_anonymous_is_401(client: AppClient) -> None:
    await upload(client)
    assert (await client.delete(f"/files/{SHA}")).status == 401


async def test_shared_content_is_stored_once_and_leaves_with_last_reference(
    client: AppClient, settings: Settings, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    assert (await upload(client, name="mine.bin")).status == 201
    assert (await upload(client, name="bobs.bin", headers=bob)).status == 201
    assert len([k for k in StoreView(settings).listing() if k.startswith(SHA[:2] + "/")]) == 1

    assert (await client.delete(f"/files/{SHA}", headers=ADMIN)).status == 204
    assert is_stored(settings, SHA)
    assert (await client.get(f"/files/{SHA}")).status == 200
    bob_files = await (await client.get("/files", headers=bob)).json()
    assert [f["name"] for f in bob_files["files"]] == ["bobs.bin"]

    assert (await client.delete(f"/files/{SHA}", headers=bob)).status == 204
    assert not is_stored(settings, SHA)
    assert (await client.get(f"/files/{SHA}")).status == 404


# list


async def test_list_is_the_callers_files_newest_first(
    client: AppClient, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    hashes = [(await (await upload(client, f"{i}".encode())).json())["hash"] for i in range(3)]
    await upload(client, b"bob's", headers=bob)
    listing = await (await client.get("/files", headers=ADMIN)).json()
    assert [f["hash"] for f in listing["files"]] == hashes[::-1]
    assert listing["next_cursor"] is None
    first = listing["files"][0]
    assert set(first) == {"hash", "size", "name", "content_type", "uploaded_at", "url"}


async def test_list_paginates_with_cursor_and_link(client: AppClient) -> None:
    hashes = [(await (await upload(client, f"n{i}".encode())).json())["hash"] for i in range(5)]
    seen: list[str] = []
    url = "/files?limit=2"
    pages = 0
    while url:
        response = await client.get(url, headers=ADMIN)
        page = await response.json()
        seen += [f["hash"] for f in page["files"]]
        pages += 1
        link = response.headers.get("Link")
        if page["next_cursor"] is None:
            assert link is None
            break
        assert link is not None
        assert link.endswith('>; rel="next"')
        url = f"/files?limit=2&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == hashes[::-1]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=1001",
        "limit=x",
        "cursor=-1",
        "cursor=a",
        "limit=%C2%B2",  # '²': str.isdigit() says yes, int() says no (found by schemathesis)
        "cursor=%D9%A3",  # an Arabic-Indic digit
        "cursor=9223372036854775808",  # one past a 64-bit database integer
        "cursor=" + "9" * 5000,
    ],
)
async def test_list_with_bad_paging_is_400(client: AppClient, query: str) -> None:
    response = await client.get(f"/files?{query}", headers=ADMIN)
    assert response.status == 400


async def test_list_anonymous_is_401(client: AppClient) -> None:
    assert (await client.get("/files")).status == 401


async def _client(aiohttp_client: object, settings: Settings) -> AppClient:
    from filecask.app import create_app

    make = aiohttp_client
    assert callable(make)
    client: AppClient = await make(create_app(settings))
    return client


# the caches, with a second process on the same data directory


async def test_repeated_downloads_are_identical(client: AppClient) -> None:
    await upload(client, name="a.bin")
    first = await client.get(f"/files/{SHA}")
    second = await client.get(f"/files/{SHA}")
    assert await first.read() == await second.read() == BODY
    for name in ("Content-Type", "Content-Length", "ETag", "Content-Disposition"):
        assert first.headers[name] == second.headers[name]


async def test_delete_by_another_process_is_seen_at_once(
    client: AppClient, other_process: Services
) -> None:
    await upload(client)
    for _ in range(2):
        assert (await client.get(f"/files/{SHA}")).status == 200
    admin = await other_process.meta.get_user("admin")
    assert admin is not None
    await other_process.files.delete(admin, SHA)
    assert (await client.get(f"/files/{SHA}")).status == 404
    assert (await client.head(f"/files/{SHA}")).status == 404


async def test_content_stored_again_after_deletion_takes_its_new_type(
    client: AppClient, other_process: Services
) -> None:
    text = b'{"a": 1}'
    digest = hashlib.sha256(text).hexdigest()
    await upload(client, text, name="a.bin")
    assert (await client.get(f"/files/{digest}")).content_type == "application/octet-stream"
    admin = await other_process.meta.get_user("admin")
    assert admin is not None
    await other_process.files.delete(admin, digest)
    assert (await upload(client, text, name="a.json")).status == 201
    response = await client.get(f"/files/{digest}")
    assert response.content_type == "application/json"
    assert await response.read() == text


async def test_upload_by_another_process_shows_in_usage_at_once(
    client: AppClient, other_process: Services
) -> None:
    assert (await (await client.get("/me", headers=ADMIN)).json())["files"] == 0
    admin = await other_process.meta.get_user("admin")
    assert admin is not None

    async def chunks() -> AsyncIterator[bytes]:
        yield BODY

    await other_process.files.upload(admin, chunks(), name=None, max_size=1 << 20)
    me = await (await client.get("/me", headers=ADMIN)).json()
    assert (me["files"], me["bytes"]) == (1, len(BODY))


async def test_a_miss_is_forgotten_when_another_process_stores_the_content(
    client: AppClient, other_process: Services
) -> None:
    for _ in range(2):  # the second miss is answered from memory
        assert (await client.get(f"/files/{SHA}")).status == 404
    admin = await other_process.meta.get_user("admin")
    assert admin is not None

    async def chunks() -> AsyncIterator[bytes]:
        yield BODY

    await other_process.files.upload(admin, chunks(), name=None, max_size=1 << 20)
    response = await client.get(f"/files/{SHA}")
    assert response.status == 200
    assert await response.read() == BODY


# quotas: a refused upload stores nothing; what the user already holds costs nothing


async def set_quota(client: AppClient, name: str, quota: int | str | None) -> None:
    response = await client.patch(f"/users/{name}", json={"quota": quota}, headers=ADMIN)
    assert response.status == 200, await response.text()


async def me(client: AppClient, auth: dict[str, str]) -> dict[str, object]:
    body = await (await client.get("/me", headers=auth)).json()
    assert isinstance(body, dict)
    return body


async def streamed(content: bytes) -> AsyncIterator[bytes]:
    """A body without Content-Length (chunked): only the check after streaming sees it."""
    yield content[: len(content) // 2]
    yield content[len(content) // 2 :]


async def assert_quota_problem(
    response: aiohttp.ClientResponse, *, quota: int, used: int, size: int
) -> None:
    assert response.status == 413, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json(content_type=None)
    assert_problem(problem, 413, "quota-exceeded")
    assert problem["title"] == "Quota exceeded"
    assert (problem["quota"], problem["used"], problem["size"]) == (quota, used, size)


def assert_nothing_stored(settings: Settings, *hashes: str) -> None:
    for hex_hash in hashes:
        assert not is_stored(settings, hex_hash)
    assert scratch_files(settings) == []


async def test_quota_is_shown_in_me(client: AppClient, make_user: MakeUser) -> None:
    bob = await make_user("bob")
    assert (await me(client, bob))["quota"] is None
    await set_quota(client, "bob", "10G")
    assert await me(client, bob) == {
        "name": "bob",
        "is_admin": False,
        "files": 0,
        "bytes": 0,
        "bundles": 0,
        "reserved": 0,
        "quota": 10 << 30,
    }


async def test_upload_past_quota_is_413_and_stores_nothing(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    bob = await make_user("bob")
    await set_quota(client, "bob", "2M")
    first = io.BytesIO(os.urandom(3 << 19))
    assert (await client.post("/files", data=first, headers=bob)).status == 201
    second = os.urandom(1 << 20)
    digest = hashlib.sha256(second).hexdigest()

    response = await client.post("/files", data=streamed(second), headers=bob)
    await assert_quota_problem(response, quota=2 << 20, used=3 << 19, size=1 << 20)
    detail = (await response.json(content_type=None))["detail"]
    assert detail == "The upload of 1.0 MiB would exceed your quota of 2.0 MiB (1.5 MiB used)."
    assert_nothing_stored(settings, digest)
    assert (await client.get(f"/files/{digest}")).status == 404
    assert (await me(client, bob))["bytes"] == 3 << 19
    listing = await (await client.get("/files", headers=bob)).json()
    assert [f["size"] for f in listing["files"]] == [3 << 19]


async def test_multipart_upload_past_quota_is_413_and_stores_nothing(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    bob = await make_user("bob")
    await set_quota(client, "bob", 1000)
    form = aiohttp.FormData()
    form.add_field("file", b"m" * 1001, filename="big.bin")
    response = await client.post("/files", data=form, headers=bob)
    await assert_quota_problem(response, quota=1000, used=0, size=1001)
    assert_nothing_stored(settings, hashlib.sha256(b"m" * 1001).hexdigest())
    # The other fields count as upload bytes (issue 14): a file that fits alone, sent with
    # a 2,000-byte comment, is past the room left (cut once it passes it)...
    form = aiohttp.FormData()
    form.add_field("comment", "c" * 2000)
    form.add_field("file", b"m" * 1000, filename="fits.bin")
    response = await client.post("/files", data=form, headers=bob)
    await assert_quota_problem(response, quota=1000, used=0, size=1001)
    assert_nothing_stored(settings, hashlib.sha256(b"m" * 1000).hexdigest())
    # ...while a body longer than the room left only by its framing is not refused early.
    form = aiohttp.FormData()
    form.add_field("comment", "c" * 100)
    form.add_field("file", b"m" * 600, filename="fits.bin")
    assert (await client.post("/files", data=form, headers=bob)).status == 201


async def test_put_with_hash_past_quota_is_413_and_stores_nothing(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    bob = await make_user("bob")
    await set_quota(client, "bob", 1000)
    content = b"p" * 1001
    digest = hashlib.sha256(content).hexdigest()
    for body in (content, streamed(content)):  # refused early, and after streaming
        response = await client.put(f"/files/{digest}", data=body, headers=bob)
        await assert_quota_problem(response, quota=1000, used=0, size=1001)
        assert_nothing_stored(settings, digest)


async def test_a_refused_upload_of_content_another_user_holds_keeps_theirs(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    """The blob existed before the refused upload: it stays, for its holder."""
    bob = await make_user("bob")
    await set_quota(client, "bob", 10)
    assert (await upload(client)).status == 201  # admin holds BODY
    response = await client.post("/files", data=streamed(BODY), headers=bob)
    # A stream of unknown length is cut once it passes the quota: `size` is where.
    await assert_quota_problem(response, quota=10, used=0, size=11)
    assert "at least 11 bytes" in (await response.json(content_type=None))["detail"]
    assert is_stored(settings, SHA)
    assert await (await client.get(f"/files/{SHA}")).read() == BODY
    assert (await me(client, bob))["files"] == 0
    assert scratch_files(settings) == []


async def test_reupload_at_quota_succeeds_every_way(client: AppClient, make_user: MakeUser) -> None:
    """Content the user already holds costs nothing: at (and over) the quota, raw, streamed,
    multipart, PUT with its hash and with 100-continue, it is 200, not 413."""
    bob = await make_user("bob")
    await set_quota(client, "bob", len(BODY))
    assert (await upload(client, headers=bob)).status == 201
    form = aiohttp.FormData()
    form.add_field("file", BODY, filename="again.bin")
    continued = {**bob, "Expect": "100-continue"}
    for quota in (len(BODY), len(BODY) - 1, 0):
        await set_quota(client, "bob", quota)
        assert (await upload(client, headers=bob)).status == 200
        assert (await client.put("/files", data=BODY, headers=bob)).status == 200
        assert (await client.post("/files", data=streamed(BODY), headers=bob)).status == 200
        assert (await client.post("/files", data=form, headers=bob)).status == 200
        assert (await client.put(f"/files/{SHA}", data=BODY, headers=bob)).status == 200
        assert (await client.put(f"/files/{SHA}", data=BODY, headers=continued)).status == 200
        assert (await client.post("/files", data=BODY, headers=continued)).status == 200
    assert (await me(client, bob))["bytes"] == len(BODY)


async def test_new_content_of_a_held_size_passes_the_early_check_then_is_refused(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    """The early check cannot tell it from a re-upload; the check in the commit can."""
    bob = await make_user("bob")
    await set_quota(client, "bob", len(BODY))
    assert (await upload(client, headers=bob)).status == 201
    other = os.urandom(len(BODY))
    response = await client.post("/files", data=other, headers=bob)
    await assert_quota_problem(response, quota=len(BODY), used=len(BODY), size=len(BODY))
    assert_nothing_stored(settings, hashlib.sha256(other).hexdigest())


async def raw_request(client: AppClient, head: str) -> tuple[int, dict[str, object]]:
    """Send only a request's head (no body) and read the answer: a server that waited for
    the declared body would never answer, and the wait_for would fail the test."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    try:
        writer.write(head.replace("\n", "\r\n").encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        status = int(raw.split()[1])
        length = next(
            int(line.split(b":")[1])
            for line in raw.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), timeout=5))
        assert isinstance(body, dict)
        return status, body
    finally:
        writer.close()


async def test_declared_length_past_quota_is_refused_before_the_body_is_read(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    bob = await make_user("bob")
    await set_quota(client, "bob", 1 << 20)
    assert (await upload(client, headers=bob)).status == 201  # 50,000 bytes used
    auth = bob["Authorization"]
    for path in ("/files", f"/files/{'a' * 64}"):
        for method in ("POST", "PUT") if path == "/files" else ("PUT",):
            status, problem = await raw_request(
                client,
                f"{method} {path} HTTP/1.1\nHost: x\nAuthorization: {auth}\n"
                f"Content-Length: {1 << 20}\n\n",
            )
            assert status == 413
            assert_problem(problem, 413, "quota-exceeded")
            assert (problem["quota"], problem["used"], problem["size"]) == (
                1 << 20,
                len(BODY),
                1 << 20,
            )
    # With Expect: 100-continue, refused before 100 Continue is sent.
    status, problem = await raw_request(
        client,
        f"POST /files HTTP/1.1\nHost: x\nAuthorization: {auth}\nExpect: 100-continue\n"
        f"Content-Length: {1 << 20}\n\n",
    )
    assert (status, problem["type"]) == (413, "https://filecask.dev/problems/quota-exceeded")
    # What fits is not refused early: the server waits for (and stores) the body.
    room = (1 << 20) - len(BODY)
    response = await client.post("/files", data=io.BytesIO(os.urandom(room)), headers=bob)
    assert response.status == 201
    assert (await me(client, bob))["bytes"] == 1 << 20
    assert scratch_files(settings) == []


async def test_expect_continue_with_bad_credentials_is_still_401(client: AppClient) -> None:
    """Signing in early (for the quota) does not change how a wrong password is answered."""
    headers = {
        "Authorization": aiohttp.encode_basic_auth("admin", "wrong-password"),
        "Expect": "100-continue",
    }
    response = await client.post("/files", data=BODY, headers=headers)
    assert response.status == 401
    assert_problem(await response.json(content_type=None), 401, "unauthorized")


async def test_space_freed_by_a_delete_can_be_used_again(
    client: AppClient, make_user: MakeUser
) -> None:
    bob = await make_user("bob")
    await set_quota(client, "bob", len(BODY) + 10)
    assert (await upload(client, headers=bob)).status == 201
    other = os.urandom(len(BODY))
    assert (await upload(client, other, headers=bob)).status == 413
    assert (await client.delete(f"/files/{SHA}", headers=bob)).status == 204
    assert (await upload(client, other, headers=bob)).status == 201
    assert (await me(client, bob))["bytes"] == len(BODY)


async def test_concurrent_uploads_that_together_exceed_the_quota(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    """Ten uploads at once, each of which fits alone, under a quota that takes five of them:
    exactly five are stored (the ones answered 201), the five others are 413 and leave no
    trace. A check outside the inserting transaction would let all ten in."""
    bob = await make_user("bob")
    await set_quota(client, "bob", 5 * 1000 + 999)
    contents = [bytes([i]) * 1000 for i in range(10)]
    responses = await asyncio.gather(
        *(client.post("/files", data=content, headers=bob) for content in contents)
    )
    statuses = [r.status for r in responses]
    assert sorted(statuses) == [201] * 5 + [413] * 5, statuses
    for response in responses:
        if response.status == 413:
            assert_problem(await response.json(content_type=None), 413, "quota-exceeded")
    accepted = {
        hashlib.sha256(c).hexdigest() for c, s in zip(contents, statuses, strict=True) if s == 201
    }
    listing = await (await client.get("/files", headers=bob)).json()
    assert {f["hash"] for f in listing["files"]} == accepted
    assert (await me(client, bob))["bytes"] == 5000
    hashes = [hashlib.sha256(c).hexdigest() for c in contents]
    assert {h for h in hashes if is_stored(settings, h)} == accepted
    assert scratch_files(settings) == []


async def test_a_quota_set_by_another_process_binds_at_once(
    client: AppClient, make_user: MakeUser, other_process: Services
) -> None:
    bob = await make_user("bob")
    assert (await upload(client, b"x" * 100, headers=bob)).status == 201
    assert (await me(client, bob))["quota"] is None
    await other_process.meta.set_quota("bob", 150)
    assert (await me(client, bob))["quota"] == 150
    response = await upload(client, b"y" * 51, headers=bob)
    await assert_quota_problem(response, quota=150, used=100, size=51)
    await other_process.meta.set_quota("bob", None)
    assert (await upload(client, b"y" * 51, headers=bob)).status == 201


async def test_a_stream_over_quota_is_cut_as_soon_as_it_passes_it(
    client: AppClient, make_user: MakeUser, settings: Settings
) -> None:
    """A chunked upload cannot fill the disk's scratch space on its way to the refusal:
    it is cut once it passes what the user may still store."""
    bob = await make_user("bob")
    await set_quota(client, "bob", 100_000)
    sent: list[int] = []
    piece = b"q" * (64 << 10)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(400):  # 25 MiB if read to the end
            sent.append(len(piece))
            yield piece

    response = await client.post("/files", data=endless(), headers=bob)
    await assert_quota_problem(response, quota=100_000, used=0, size=100_001)
    assert sum(sent) < 8 << 20  # far from all of it (socket buffers hold some)
    assert_nothing_stored(settings)
