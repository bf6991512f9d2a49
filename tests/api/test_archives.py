"""/archive/<id>/ and /archives over real HTTP: folder ZIPs, bundles, ranges, hostile ids."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import zipfile
import zlib
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from filecask.app import create_app
from filecask.archives.plans import BundlePlans
from filecask.services import Services
from filecask.settings import Settings, load_settings
from tests.conftest import ADMIN, AppClient, MakeSettings, MakeUser, StoreView, assert_problem

AiohttpClient = Callable[[web.Application], Awaitable[AppClient]]

TREE: dict[str, bytes] = {
    "a.txt": b"alpha\n" * 100,
    "b.bin": bytes(range(256)) * 40,
    "sub/c.txt": b"charlie",
    "sub/deeper/d.txt": b"delta" * 1000,
    "\u043f\u0440\u0438\u0432\u0435\u0442.txt": "привет, мир".encode(),
}


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Plain sync writes: only test code, never inside filecask."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def folder(settings: Settings, name: str = "photos", files: dict[str, bytes] = TREE) -> Path:
    return make_tree(settings.archives_dir / name, files)


async def fetch(
    client: AppClient, path: str, headers: dict[str, str] | None = None
) -> tuple[aiohttp.ClientResponse, bytes]:
    response = await client.get(path, headers=headers)
    return response, await response.read()


async def fetch_raw(client: AppClient, path: str) -> tuple[aiohttp.ClientResponse, bytes]:
    """Send `path` exactly as written: no client-side normalisation or quoting."""
    url = client.make_url("").with_path(path, encoded=True)
    async with client.session.get(url) as response:
        return response, await response.read()


def open_zip(body: bytes) -> zipfile.ZipFile:
    archive = zipfile.ZipFile(io.BytesIO(body))
    assert archive.testzip() is None
    return archive


def file_contents(archive: zipfile.ZipFile) -> dict[str, bytes]:
    return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


# folder archives: the full body


@pytest.mark.parametrize("path", ["/archive/photos/", "/archive/photos"])
async def test_folder_archive_is_a_zip_attachment_with_exact_length(
    client: AppClient, settings: Settings, path: str
) -> None:
    folder(settings)
    response, body = await fetch(client, path)
    assert response.status == 200
    assert response.content_type == "application/zip"
    assert response.headers["Content-Disposition"] == 'attachment; filename="archive.zip"'
    assert int(response.headers["Content-Length"]) == len(body)
    assert response.headers["Accept-Ranges"] == "bytes"
    etag = response.headers["ETag"]
    assert etag.startswith('"')
    assert etag.endswith('"')


async def test_folder_archive_holds_every_file_relative_to_the_folder(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    _, body = await fetch(client, "/archive/photos/")
    archive = open_zip(body)
    assert file_contents(archive) == TREE
    assert {"sub/", "sub/deeper/"} <= set(archive.namelist())
    assert all(not n.startswith(("/", "photos")) for n in archive.namelist())


async def test_folder_archive_stores_utf8_names_with_the_utf8_flag(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    _, body = await fetch(client, "/archive/photos/")
    info = open_zip(body).getinfo("привет.txt")
    assert info.flag_bits & 0x800
    assert info.filename.encode() in body


async def test_head_has_the_headers_of_get_and_no_body(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    got, body = await fetch(client, "/archive/photos/")
    head = await client.head("/archive/photos/")
    assert head.status == 200
    assert await head.read() == b""
    assert head.headers["Content-Length"] == str(len(body))
    assert head.headers["ETag"] == got.headers["ETag"]
    assert head.headers["Content-Type"] == "application/zip"


async def test_empty_folder_gives_a_valid_empty_zip(client: AppClient, settings: Settings) -> None:
    folder(settings, "empty", {})
    response, body = await fetch(client, "/archive/empty/")
    assert response.status == 200
    assert open_zip(body).namelist() == []
    assert int(response.headers["Content-Length"]) == len(body)


# ranges and validators


async def test_single_range_is_206_with_the_same_slice_of_the_full_body(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    _, full = await fetch(client, "/archive/photos/")
    response, part = await fetch(client, "/archive/photos/", {"Range": "bytes=100-4999"})
    assert response.status == 206
    assert part == full[100:5000]
    assert response.headers["Content-Range"] == f"bytes 100-4999/{len(full)}"


async def test_suffix_range_returns_the_tail(client: AppClient, settings: Settings) -> None:
    folder(settings)
    _, full = await fetch(client, "/archive/photos/")
    response, part = await fetch(client, "/archive/photos/", {"Range": "bytes=-22"})
    assert response.status == 206
    assert part == full[-22:]


async def test_multi_range_is_multipart_byteranges_with_each_slice(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    _, full = await fetch(client, "/archive/photos/")
    response, body = await fetch(client, "/archive/photos/", {"Range": "bytes=0-9,200-399"})
    assert response.status == 206
    assert response.content_type == "multipart/byteranges"
    assert int(response.headers["Content-Length"]) == len(body)
    content_type = response.headers["Content-Type"].encode()
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type + b"\r\n\r\n" + body
    )
    parts = [p.get_payload(decode=True) for p in message.iter_parts()]
    assert parts == [full[0:10], full[200:400]]


async def test_if_range_with_current_etag_honours_the_range(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    got, full = await fetch(client, "/archive/photos/")
    headers = {"Range": "bytes=10-19", "If-Range": got.headers["ETag"]}
    response, part = await fetch(client, "/archive/photos/", headers)
    assert response.status == 206
    assert part == full[10:20]


async def test_if_range_with_another_etag_sends_the_whole_archive(
    client: AppClient, settings: Settings
) -> None:
    folder(settings)
    _, full = await fetch(client, "/archive/photos/")
    headers = {"Range": "bytes=10-19", "If-Range": '"not-the-etag"'}
    response, body = await fetch(client, "/archive/photos/", headers)
    assert response.status == 200
    assert body == full


async def test_if_none_match_with_the_etag_is_304(client: AppClient, settings: Settings) -> None:
    folder(settings)
    got, _ = await fetch(client, "/archive/photos/")
    response, body = await fetch(client, "/archive/photos/", {"If-None-Match": got.headers["ETag"]})
    assert response.status == 304
    assert body == b""
    assert response.headers["ETag"] == got.headers["ETag"]


async def test_changed_file_changes_etag_and_refreshes_cached_crc(
    client: AppClient, settings: Settings
) -> None:
    root = folder(settings)
    first, _ = await fetch(client, "/archive/photos/")
    target = root / "sub" / "c.txt"
    target.write_bytes(b"CHARLIE")  # same size, different bytes
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    second, body = await fetch(client, "/archive/photos/")
    assert second.headers["ETag"] != first.headers["ETag"]
    archive = open_zip(body)  # testzip checks the stored CRC against the new bytes
    assert archive.read("sub/c.txt") == b"CHARLIE"
    stored_crc = archive.getinfo("sub/c.txt").CRC
    assert stored_crc == zlib.crc32(b"CHARLIE")


@hsettings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
async def test_any_range_equals_the_same_slice_of_the_full_body(
    client: AppClient, settings: Settings, data: st.DataObject
) -> None:
    if not (settings.archives_dir / "photos").exists():
        folder(settings)
    _, full = await fetch(client, "/archive/photos/")
    start = data.draw(st.integers(0, len(full) - 1), label="start")
    end = data.draw(st.integers(start, len(full) - 1), label="end")
    response, part = await fetch(client, "/archive/photos/", {"Range": f"bytes={start}-{end}"})
    assert response.status == 206
    assert part == full[start : end + 1]


# missing and hostile ids


async def test_missing_folder_is_404_problem_json_for_api_clients(client: AppClient) -> None:
    response = await client.get("/archive/nope/", headers={"Accept": "*/*"})
    assert response.status == 404
    assert response.content_type == "application/problem+json"
    assert_problem(await response.json(), 404)


async def test_missing_folder_is_a_short_html_page_for_browsers(client: AppClient) -> None:
    response = await client.get("/archive/nope/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status == 404
    assert response.content_type == "text/html"
    page = await response.text()
    assert "does not exist or has been deleted" in page
    assert len(page) < 2000


SECRET = b"outside-secret-content"


@pytest.fixture
def outside(tmp_path: Path, settings: Settings) -> Path:
    """A directory outside the archive root, and a folder name that links to it."""
    target = make_tree(tmp_path / "outside", {"secret.txt": SECRET})
    settings.archives_dir.mkdir(parents=True, exist_ok=True)
    (settings.archives_dir / "evil").symlink_to(target, target_is_directory=True)
    (settings.archives_dir / ".hidden").mkdir()
    (settings.archives_dir / ".hidden" / "h.txt").write_bytes(SECRET)
    return target


@pytest.mark.parametrize(
    "path",
    [
        "/archive/../",
        "/archive/%2e%2e/",
        "/archive/..%2F..%2Foutside/",
        "/archive/..%2F../",
        "/archive/.hidden/",
        "/archive/a%00b/",
        "/archive/%2Fetc/",
        "/archive/" + "x" * 300 + "/",
        "/archive/evil/",
        "/archive/evil",
    ],
)
async def test_hostile_ids_are_refused_and_never_reach_outside(
    client: AppClient, outside: Path, path: str
) -> None:
    response, body = await fetch_raw(client, path)
    assert response.status in (400, 404), (response.status, body[:200])
    assert SECRET not in body


async def test_symlink_to_file_outside_root_is_skipped(
    client: AppClient, settings: Settings, outside: Path
) -> None:
    root = folder(settings, "links", {"real.txt": b"real"})
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    _, body = await fetch(client, "/archive/links/")
    archive = open_zip(body)
    assert archive.namelist() == ["real.txt"]
    assert SECRET not in body


async def test_symlink_to_a_file_of_another_folder_is_left_out(
    client: AppClient, settings: Settings
) -> None:
    """An archive holds only what lies under its own folder (issue 14): a link to a file of
    another folder of the root would publish it under this folder's id."""
    other = folder(settings, "other", {"shared.txt": b"shared bytes"})
    root = folder(settings, "links", {"real.txt": b"real"})
    (root / "shared.txt").symlink_to(other / "shared.txt")
    _, body = await fetch(client, "/archive/links/")
    assert file_contents(open_zip(body)) == {"real.txt": b"real"}


async def test_symlink_to_a_file_of_its_own_folder_is_included(
    client: AppClient, settings: Settings
) -> None:
    root = folder(settings, "links", {"real.txt": b"real", "sub/deep.txt": b"deep"})
    (root / "alias.txt").symlink_to(root / "sub" / "deep.txt")
    _, body = await fetch(client, "/archive/links/")
    assert file_contents(open_zip(body)) == {
        "alias.txt": b"deep",
        "real.txt": b"real",
        "sub/deep.txt": b"deep",
    }


# settings: file API off, legacy environment, delay


async def test_without_file_api_folder_archives_work_and_file_routes_are_404(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    settings = make_settings(file_api=False)
    folder(settings)
    client = await aiohttp_client(create_app(settings))
    response, body = await fetch(client, "/archive/photos/")
    assert response.status == 200
    assert file_contents(open_zip(body)) == TREE
    for path in ("/files", "/archives"):
        missing = await client.get(path, headers=ADMIN)
        assert missing.status == 404, path
    posted = await client.post("/archives", json={"files": []}, headers=ADMIN)
    assert posted.status in (404, 405)


def test_legacy_environment_names_configure_archives(tmp_path: Path) -> None:
    loaded = load_settings(
        environ={
            "BASE_ARCHIVE_PATH": str(tmp_path),
            "PROCESS_DELAY": "0.01",
            "ACTIVATE_LOGS": "False",
        },
        env_file=None,
    )
    assert loaded.archives_dir == tmp_path
    assert loaded.archive_delay == 0.01
    assert loaded.access_log is False


async def test_archive_with_delay_is_byte_identical(
    client: AppClient,
    aiohttp_client: AiohttpClient,
    settings: Settings,
    make_settings: MakeSettings,
) -> None:
    folder(settings)
    _, plain = await fetch(client, "/archive/photos/")
    slow = await aiohttp_client(create_app(make_settings(archive_delay=0.01)))
    response, delayed = await fetch(slow, "/archive/photos/")
    assert response.status == 200
    assert delayed == plain


# bundles


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ONE, TWO = b"first file " * 500, b"second file"


async def upload(client: AppClient, data: bytes, auth: dict[str, str]) -> str:
    response = await client.post("/files?name=f.bin", data=data, headers=auth)
    assert response.status in (200, 201), await response.text()
    body: dict[str, Any] = await response.json()
    return str(body["hash"])


async def post_bundle(
    client: AppClient, body: Any, auth: dict[str, str] = ADMIN
) -> aiohttp.ClientResponse:
    return await client.post("/archives", json=body, headers=auth)


async def uploaded_bundle(client: AppClient, auth: dict[str, str] = ADMIN) -> dict[str, Any]:
    return {
        "name": "holiday.zip",
        "files": [
            {"hash": await upload(client, ONE, auth), "path": "day1/one.bin"},
            {"hash": await upload(client, TWO, auth), "path": "two.bin"},
        ],
    }


def manifest_id(body: dict[str, Any]) -> str:
    entries = sorted((f["path"], f["hash"]) for f in body["files"])
    canonical = json.dumps(
        {"name": body["name"], "files": [{"path": p, "hash": h} for p, h in entries]},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return sha(canonical.encode())


async def test_create_bundle_is_201_with_content_derived_id_and_location(
    client: AppClient,
) -> None:
    body = await uploaded_bundle(client)
    response = await post_bundle(client, body)
    assert response.status == 201
    created = await response.json()
    assert created["id"] == manifest_id(body)
    assert created["url"].endswith(f"/archive/{created['id']}/")
    assert response.headers["Location"] == created["url"]


async def test_same_bundle_again_is_200_with_same_id_in_any_order(client: AppClient) -> None:
    body = await uploaded_bundle(client)
    first = await (await post_bundle(client, body)).json()
    again = await post_bundle(client, {**body, "files": body["files"][::-1]})
    assert again.status == 200
    assert (await again.json())["id"] == first["id"]


async def test_bundle_archive_holds_the_given_paths_under_the_bundle_name(
    client: AppClient,
) -> None:
    body = await uploaded_bundle(client)
    bundle_id = (await (await post_bundle(client, body)).json())["id"]
    response, zipped = await fetch(client, f"/archive/{bundle_id}/")
    assert response.status == 200
    assert response.headers["Content-Disposition"] == 'attachment; filename="holiday.zip"'
    assert int(response.headers["Content-Length"]) == len(zipped)
    assert file_contents(open_zip(zipped)) == {"day1/one.bin": ONE, "two.bin": TWO}
    ranged, part = await fetch(client, f"/archive/{bundle_id}/", {"Range": "bytes=30-3000"})
    assert ranged.status == 206
    assert part == zipped[30:3001]


async def test_list_bundles_shows_only_the_callers(client: AppClient, make_user: MakeUser) -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    mine = await (await post_bundle(client, await uploaded_bundle(client, alice), alice)).json()
    theirs = {"name": "bob.zip", "files": [{"hash": await upload(client, TWO, bob), "path": "x"}]}
    assert (await post_bundle(client, theirs, bob)).status == 201
    listed = await (await client.get("/archives", headers=alice)).json()
    assert [b["id"] for b in listed["archives"]] == [mine["id"]]
    assert listed["archives"][0]["files"] == 2
    assert listed["archives"][0]["bytes"] == len(ONE) + len(TWO)


async def test_delete_bundle_by_creator_is_204_then_archive_is_404(client: AppClient) -> None:
    bundle_id = (await (await post_bundle(client, await uploaded_bundle(client))).json())["id"]
    deleted = await client.delete(f"/archives/{bundle_id}", headers=ADMIN)
    assert deleted.status == 204
    response = await client.get(f"/archive/{bundle_id}/")
    assert response.status == 404
    assert_problem(await response.json(), 404)


async def test_delete_bundle_by_another_user_is_403(client: AppClient, make_user: MakeUser) -> None:
    bundle_id = (await (await post_bundle(client, await uploaded_bundle(client))).json())["id"]
    mallory = await make_user("mallory")
    response = await client.delete(f"/archives/{bundle_id}", headers=mallory)
    assert response.status == 403
    assert_problem(await response.json(), 403)
    assert (await client.get(f"/archive/{bundle_id}/")).status == 200


async def test_delete_missing_bundle_is_404(client: AppClient) -> None:
    response = await client.delete(f"/archives/{'0' * 64}", headers=ADMIN)
    assert response.status == 404
    assert_problem(await response.json(), 404)


async def test_bundle_routes_need_sign_in(client: AppClient) -> None:
    body = await uploaded_bundle(client)
    bundle_id = (await (await post_bundle(client, body)).json())["id"]
    for method, path in [
        ("POST", "/archives"),
        ("GET", "/archives"),
        ("DELETE", f"/archives/{bundle_id}"),
    ]:
        response = await client.request(method, path, json=body if method == "POST" else None)
        assert response.status == 401, (method, path)
        assert_problem(await response.json(), 401)


@pytest.mark.parametrize(
    ("files", "named"),
    [
        ([{"hash": "zz", "path": "a"}], "files[0]"),
        ([{"hash": "KNOWN", "path": ""}], "files[0]"),
        ([{"hash": "KNOWN", "path": "/abs"}], "'/abs'"),
        ([{"hash": "KNOWN", "path": "a/../b"}], "'a/../b'"),
        ([{"hash": "KNOWN", "path": "ok"}, {"hash": "KNOWN", "path": "a//b"}], "files[1]"),
        ([{"hash": "KNOWN", "path": "d"}, {"hash": "KNOWN", "path": "d"}], "'d'"),
        ([{"hash": "KNOWN", "path": "a"}, {"hash": "KNOWN", "path": "a/b"}], "'a'"),
        ("not a list", "'files'"),
        ([], "'files'"),
        (["not an object"], "files[0]"),
    ],
)
async def test_invalid_bundle_is_400_naming_the_bad_entry(
    client: AppClient, files: Any, named: str
) -> None:
    known = await upload(client, ONE, ADMIN)
    if isinstance(files, list):
        files = [
            {**f, "hash": known} if isinstance(f, dict) and f["hash"] == "KNOWN" else f
            for f in files
        ]
    response = await post_bundle(client, {"name": "x.zip", "files": files})
    assert response.status == 400
    problem = await response.json()
    assert_problem(problem, 400)
    assert named in problem["detail"], problem
    assert (await client.get("/archives", headers=ADMIN)).status == 200
    assert (await (await client.get("/archives", headers=ADMIN)).json())["archives"] == []


@pytest.mark.parametrize("name", ["", "a/b.zip", 42, "x\x00.zip"])
async def test_bundle_with_bad_name_is_400(client: AppClient, name: Any) -> None:
    known = await upload(client, ONE, ADMIN)
    response = await post_bundle(client, {"name": name, "files": [{"hash": known, "path": "a"}]})
    assert response.status == 400
    assert_problem(await response.json(), 400)


async def test_bundled_file_outlives_its_reference_until_the_bundle_goes(
    client: AppClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    body = await uploaded_bundle(client, alice)
    bundle_id = (await (await post_bundle(client, body, alice)).json())["id"]
    one = body["files"][0]["hash"]
    view = StoreView(settings)
    deleted = await client.delete(f"/files/{one}", headers=alice)
    assert deleted.status == 200  # her bundle keeps it: the answer says so (issue 14)
    assert (await deleted.json())["held_by_bundles"][0]["id"] == bundle_id
    still, data = await fetch(client, f"/files/{one}")
    assert still.status == 200
    assert data == ONE
    _, zipped = await fetch(client, f"/archive/{bundle_id}/")
    assert file_contents(open_zip(zipped))["day1/one.bin"] == ONE
    assert view.exists(one)
    assert (await client.delete(f"/archives/{bundle_id}", headers=alice)).status == 204
    assert not view.exists(one)
    assert (await client.get(f"/files/{one}")).status == 404


async def test_removing_a_user_releases_their_bundles(
    client: AppClient, settings: Settings, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    body = await uploaded_bundle(client, alice)
    bundle_id = (await (await post_bundle(client, body, alice)).json())["id"]
    hashes = [f["hash"] for f in body["files"]]
    view = StoreView(settings)
    assert [view.exists(h) for h in hashes] == [True, True]
    assert (await client.delete("/users/alice", headers=ADMIN)).status == 204
    assert (await client.get(f"/archive/{bundle_id}/")).status == 404
    assert [view.exists(h) for h in hashes] == [False, False]


async def test_archive_range_beyond_end_is_416(
    aiohttp_client: Callable[[web.Application], Awaitable[AppClient]],
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    folder = settings.archives_dir / "unsatisfiable"
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(b"a" * 1000)
    client = await aiohttp_client(create_app(settings))
    size = len(await (await client.get("/archive/unsatisfiable/")).read())
    response = await client.get("/archive/unsatisfiable/", headers={"Range": f"bytes={size}-"})
    assert response.status == 416
    assert response.headers["Content-Range"] == f"bytes */{size}"


async def test_file_changed_while_sending_cuts_the_transfer(
    aiohttp_client: Callable[[web.Application], Awaitable[AppClient]],
    make_settings: MakeSettings,
) -> None:
    """A file rewritten after the archive was planned must never be sent as if it were the
    planned one: the connection is cut, so the client knows its copy is incomplete."""
    settings = make_settings(archive_delay=0.01)
    folder = settings.archives_dir / "changing"
    folder.mkdir(parents=True)
    (folder / "a.bin").write_bytes(os.urandom(200_000))
    (folder / "b.bin").write_bytes(os.urandom(200_000))
    client = await aiohttp_client(create_app(settings))
    response = await client.get("/archive/changing/")
    assert response.status == 200
    first = await response.content.readexactly(1000)
    assert first.startswith(b"PK\x03\x04")
    (folder / "b.bin").write_bytes(os.urandom(100))  # size and mtime change mid-flight
    with pytest.raises(aiohttp.ClientPayloadError):
        await response.read()


# bundle plans: made once per process, off the loop, and never outliving the bundle


async def test_a_bundle_is_planned_once_and_the_plan_reused(
    client: AppClient, services: Services
) -> None:
    bundle_id = (await (await post_bundle(client, await uploaded_bundle(client))).json())["id"]
    first, zipped = await fetch(client, f"/archive/{bundle_id}/")
    assert (await client.head(f"/archive/{bundle_id}/")).status == 200
    planned = await services.bundle_plans.get(services.meta, bundle_id)
    assert planned is not None
    assert await services.bundle_plans.get(services.meta, bundle_id) is planned
    assert planned.plan.size == len(zipped) == int(first.headers["Content-Length"])
    again, same = await fetch(client, f"/archive/{bundle_id}/")
    assert (same, again.headers["ETag"]) == (zipped, first.headers["ETag"])


async def test_requests_for_a_bundle_at_once_share_one_planning(
    client: AppClient, services: Services
) -> None:
    bundle_id = (await (await post_bundle(client, await uploaded_bundle(client))).json())["id"]
    plans = BundlePlans()
    archives = await asyncio.gather(*(plans.get(services.meta, bundle_id) for _ in range(10)))
    assert archives[0] is not None
    assert all(a is archives[0] for a in archives)
    assert await plans.get(services.meta, "0" * 64) is None


async def test_a_bundle_deleted_by_another_process_is_404_at_once_and_remade_anew(
    client: AppClient, services: Services, other_process: Services
) -> None:
    """Each worker or instance keeps its own plans; the bundle's row, which they share,
    decides: gone is 404 at the next request, made again is planned again (its entries'
    mtime is the new creation time)."""
    body = await uploaded_bundle(client)
    bundle_id = (await (await post_bundle(client, body)).json())["id"]
    old = await services.bundle_plans.get(services.meta, bundle_id)
    assert old is not None
    admin = await other_process.meta.get_user("admin")
    assert admin is not None
    await other_process.files.delete_bundle(admin, bundle_id)
    assert (await client.head(f"/archive/{bundle_id}/")).status == 404
    assert (await post_bundle(client, body)).status == 201
    new = await services.bundle_plans.get(services.meta, bundle_id)
    assert new is not None
    assert new is not old
    made = await services.meta.bundle_created_at(bundle_id)
    assert made is not None
    assert new.last_modified == made.timestamp()


async def test_bundle_plans_keep_a_bounded_number_of_entries(
    client: AppClient, services: Services
) -> None:
    """Least recently used out first; a bundle larger than the whole bound is planned for
    each request, never kept."""
    first = await uploaded_bundle(client)  # two entries each
    second = {**first, "name": "second.zip"}
    ids = [(await (await post_bundle(client, b)).json())["id"] for b in (first, second)]
    plans = BundlePlans(max_members=3)
    kept = await plans.get(services.meta, ids[0])
    assert await plans.get(services.meta, ids[0]) is kept
    await plans.get(services.meta, ids[1])
    assert len(plans) == 1
    assert await plans.get(services.meta, ids[0]) is not kept  # it had to go
    tiny = BundlePlans(max_members=1)
    assert await tiny.get(services.meta, ids[0]) is not None
    assert len(tiny) == 0


async def test_bundle_of_small_and_large_blobs_named_many_times_is_byte_exact(
    client: AppClient,
) -> None:
    """Small blobs are read in batches in a worker thread (one open per run of the same
    blob), large ones sent by sendfile: the archive and any range of it are exact."""
    big = os.urandom(100_000)
    small = b"tiny"
    big_hash, small_hash = await upload(client, big, ADMIN), await upload(client, small, ADMIN)
    paths = {f"s/{i:03d}": small_hash for i in range(300)}
    paths |= {"b/1.bin": big_hash, "b/2.bin": big_hash, "c.txt": small_hash}
    body = {"name": "mixed.zip", "files": [{"hash": h, "path": p} for p, h in paths.items()]}
    bundle_id = (await (await post_bundle(client, body)).json())["id"]
    response, zipped = await fetch(client, f"/archive/{bundle_id}/")
    assert response.status == 200
    contents = file_contents(open_zip(zipped))
    assert contents == {p: (big if h == big_hash else small) for p, h in paths.items()}
    for start, end in ((0, 200), (1000, 60_000), (len(zipped) - 5000, len(zipped) - 1)):
        ranged, part = await fetch(
            client, f"/archive/{bundle_id}/", {"Range": f"bytes={start}-{end}"}
        )
        assert ranged.status == 206
        assert part == zipped[start : end + 1]


# issue 14: a bundle keeps only what its maker holds, and says so when it keeps a file


@pytest.mark.parametrize("whose", ["nobody", "another user"])
async def test_a_bundle_naming_content_the_caller_does_not_hold_is_403(
    client: AppClient, make_user: MakeUser, whose: str
) -> None:
    """Content stored by someone else and content stored by nobody get the same answer:
    a bundle is no oracle for what others store."""
    mallory = await make_user("mallory")
    mine = await upload(client, TWO, mallory)
    theirs = await upload(client, ONE, ADMIN) if whose == "another user" else "0" * 64
    files = [{"hash": mine, "path": "mine"}, {"hash": theirs, "path": "theirs"}]
    response = await post_bundle(client, {"name": "x.zip", "files": files}, mallory)
    assert response.status == 403
    problem = await response.json()
    assert_problem(problem, 403, "not-held")
    assert (problem["hashes"], problem["count"], problem["path"]) == ([theirs], 1, "theirs")
    assert "'theirs'" in problem["detail"]
    assert (await (await client.get("/archives", headers=mallory)).json())["archives"] == []


async def test_deleting_a_file_says_which_of_the_callers_bundles_still_hold_it(
    client: AppClient, make_user: MakeUser
) -> None:
    alice = await make_user("alice")
    body = await uploaded_bundle(client, alice)
    bundle = await (await post_bundle(client, body, alice)).json()
    one, two = (f["hash"] for f in body["files"])
    listed = await client.get(f"/archives?hash={one.upper()}", headers=alice)
    assert [b["id"] for b in (await listed.json())["archives"]] == [bundle["id"]]
    deleted = await client.delete(f"/files/{one}", headers=alice)
    assert deleted.status == 200
    assert await deleted.json() == {
        "hash": one,
        "held_by_bundles": [{"id": bundle["id"], "name": "holiday.zip", "url": bundle["url"]}],
    }
    me = await (await client.get("/me", headers=alice)).json()
    assert (me["files"], me["bytes"], me["bundles"]) == (1, len(ONE) + len(TWO), 1)
    assert (await client.delete(f"/archives/{bundle['id']}", headers=alice)).status == 204
    assert (await client.get(f"/archives?hash={one}", headers=alice)).status == 200
    assert (await client.get(f"/files/{one}")).status == 404
    # Nothing of hers keeps the other one: the plain 204.
    assert (await client.delete(f"/files/{two}", headers=alice)).status == 204
    me = await (await client.get("/me", headers=alice)).json()
    assert (me["files"], me["bytes"], me["bundles"]) == (0, 0, 0)


async def test_archives_hash_filter_is_checked(client: AppClient) -> None:
    response = await client.get("/archives?hash=nope", headers=ADMIN)
    assert response.status == 400
    assert_problem(await response.json(), 400, "invalid-hash")


async def test_bundle_limits_are_clear_4xx(
    aiohttp_client: AiohttpClient, make_settings: MakeSettings
) -> None:
    settings = make_settings(max_bundle_entries=3, max_bundle_size=600, max_bundles_per_user=2)
    client = await aiohttp_client(create_app(settings))
    known = await upload(client, ONE, ADMIN)

    def files(n: int, path: str = "f") -> list[dict[str, str]]:
        return [{"hash": known, "path": f"{path}{i}"} for i in range(n)]

    too_many = await post_bundle(client, {"name": "x.zip", "files": files(4)})
    assert too_many.status == 413
    problem = await too_many.json()
    assert_problem(problem, 413)
    assert problem["max_entries"] == 3
    too_big = await post_bundle(client, {"name": "x.zip", "files": files(3, "p" * 150)})
    assert too_big.status == 413
    assert (await too_big.json())["limit"] == 600
    padded = json.dumps({"name": "x.zip", "files": files(1)}) + " " * 600
    body_too_big = await client.post(
        "/archives", data=padded, headers={**ADMIN, "Content-Type": "application/json"}
    )
    assert body_too_big.status == 413
    for name in ("a.zip", "b.zip"):
        assert (await post_bundle(client, {"name": name, "files": files(1)})).status == 201
    assert (await post_bundle(client, {"name": "a.zip", "files": files(1)})).status == 200
    third = await post_bundle(client, {"name": "c.zip", "files": files(1)})
    assert third.status == 409
    problem = await third.json()
    assert_problem(problem, 409, "too-many-bundles")
    assert problem["limit"] == 2
