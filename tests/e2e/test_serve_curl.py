"""A real `filecask serve` driven by the real `curl`, the way the README tells people to."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import assert_problem
from tests.e2e.conftest import ADMIN_CREDENTIALS, Curl, CurlResult, Server, ServerLauncher

PROBLEM_JSON = "application/problem+json"
UPLOAD_LIMIT = 1024


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def files_under(directory: Path) -> set[Path]:
    return {p for p in directory.rglob("*") if p.is_file()}


def upload(curl: Curl, server: Server, data: bytes, tmp_path: Path, name: str) -> CurlResult:
    source = write(tmp_path / "upload" / name, data)
    result = curl(
        "-u", ADMIN_CREDENTIALS, "--data-binary", f"@{source}", server.url(f"/files?name={name}")
    )
    assert result.status in (200, 201), result.body
    return result


def assert_problem_response(result: CurlResult, status: int, slug: str) -> None:
    assert result.status == status, result.body
    assert result.headers["content-type"].startswith(PROBLEM_JSON)
    assert_problem(result.json(), status, slug)


@pytest.fixture(scope="module")
def small_server(module_launcher: ServerLauncher) -> Server:
    """A server that accepts uploads of at most 1 KiB."""
    return module_launcher("--max-upload-size", "1K")


def test_upload_with_curl_data_binary_returns_201_hash_and_location(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    source = write(tmp_path / "f.bin", data)

    result = curl(
        "-u", ADMIN_CREDENTIALS, "--data-binary", f"@{source}", server.url("/files?name=f.bin")
    )

    assert result.status == 201, result.body
    assert result.headers["content-type"].startswith("application/json")
    body = result.json()
    assert body["hash"] == sha256(data)
    assert body["size"] == len(data)
    assert body["name"] == "f.bin"
    assert body["url"] == server.url(f"/files/{sha256(data)}")
    assert result.headers["location"] == body["url"]
    assert server.blob_path(sha256(data)).read_bytes() == data


def test_reupload_of_same_content_with_curl_returns_200_and_same_hash(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(50_000)
    first = upload(curl, server, data, tmp_path, "again.bin")
    assert first.status == 201

    second = upload(curl, server, data, tmp_path, "again.bin")

    assert second.status == 200, second.body
    assert second.json()["hash"] == first.json()["hash"] == sha256(data)
    assert second.headers["location"] == first.headers["location"]


def test_upload_with_curl_put_upload_file(server: Server, curl: Curl, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)  # > 1 MiB: curl sends `Expect: 100-continue`
    source = write(tmp_path / "put.bin", data)

    result = curl("-u", ADMIN_CREDENTIALS, "-T", str(source), server.url("/files"))

    assert result.status == 201, result.body
    assert result.json()["hash"] == sha256(data)
    assert result.json()["size"] == len(data)
    assert server.blob_path(sha256(data)).read_bytes() == data


def test_download_whole_file_with_curl(server: Server, curl: Curl, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    digest = upload(curl, server, data, tmp_path, "whole.bin").json()["hash"]

    result = curl(server.url(f"/files/{digest}"))

    assert result.status == 200
    assert result.body == data
    assert result.headers["content-length"] == str(len(data))
    assert result.headers["etag"] == f'"{digest}"'
    assert result.headers["accept-ranges"] == "bytes"


def test_small_file_downloads_alike_on_one_kept_alive_connection(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    """The first download of a small file goes through the handler and fills the cache;
    the next ones on the same connection are answered by the fast path
    (filecask.http.fastpath): curl sees the same status, headers (Date aside) and bytes."""
    data = os.urandom(4096)
    digest = upload(curl, server, data, tmp_path, "small.bin").json()["hash"]
    url = server.url(f"/files/{digest}")
    dump, outputs = tmp_path / "small.headers", [tmp_path / f"small-{i}" for i in range(3)]
    command = [curl.executable, "-sS", "-D", str(dump), "-w", "%{num_connects} "]
    for output in outputs:
        command += ["-o", str(output), url]
    done = subprocess.run(command, capture_output=True, check=True, timeout=60)
    assert done.stdout.split() == [b"1", b"0", b"0"]  # one connection, kept alive
    heads = [b for b in dump.read_bytes().split(b"\r\n\r\n") if b]
    assert len(heads) == 3
    assert heads[0].startswith(b"HTTP/1.1 200 OK\r\n")
    blank = [re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", h) for h in heads]
    assert blank[1] == blank[0]
    assert blank[2] == blank[0]
    assert [o.read_bytes() for o in outputs] == [data] * 3


def test_download_range_with_curl(server: Server, curl: Curl, tmp_path: Path) -> None:
    data = os.urandom(10_000)
    digest = upload(curl, server, data, tmp_path, "range.bin").json()["hash"]

    result = curl("-r", "100-199", server.url(f"/files/{digest}"))

    assert result.status == 206
    assert result.body == data[100:200]
    assert result.headers["content-range"] == f"bytes 100-199/{len(data)}"
    assert result.headers["content-length"] == "100"


def test_resume_cut_download_with_curl_continue_at(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(3_000_000)
    digest = upload(curl, server, data, tmp_path, "resume.bin").json()["hash"]
    cut = 1_234_567
    out = write(tmp_path / "download" / "resume.bin", data[:cut])

    result = curl("-C", "-", server.url(f"/files/{digest}"), output=out)

    assert result.status == 206
    assert result.headers["content-range"] == f"bytes {cut}-{len(data) - 1}/{len(data)}"
    assert out.read_bytes() == data


def test_multipart_form_upload_with_curl_names_file_after_its_base_name(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(40_000)
    source = write(tmp_path / "nested" / "dir" / "holiday-photo.raw", data)

    result = curl("-u", ADMIN_CREDENTIALS, "-F", f"file=@{source}", server.url("/files"))

    assert result.status == 201, result.body
    body = result.json()
    assert body["name"] == "holiday-photo.raw"
    assert body["hash"] == sha256(data)
    assert body["size"] == len(data)
    assert server.blob_path(sha256(data)).read_bytes() == data


def test_put_to_own_hash_with_curl_stores_file(server: Server, curl: Curl, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    source = write(tmp_path / "known.bin", data)

    result = curl("-u", ADMIN_CREDENTIALS, "-T", str(source), server.url(f"/files/{sha256(data)}"))

    assert result.status == 201, result.body
    assert result.json()["hash"] == sha256(data)
    assert curl(server.url(f"/files/{sha256(data)}")).body == data


def test_put_with_wrong_content_for_hash_is_400_and_stores_nothing(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    announced, sent = os.urandom(20_000), os.urandom(20_000)
    source = write(tmp_path / "wrong.bin", sent)

    result = curl(
        "-u", ADMIN_CREDENTIALS, "-T", str(source), server.url(f"/files/{sha256(announced)}")
    )

    assert_problem_response(result, 400, "hash-mismatch")
    assert curl(server.url(f"/files/{sha256(announced)}")).status == 404
    assert curl(server.url(f"/files/{sha256(sent)}")).status == 404
    assert not server.blob_path(sha256(announced)).exists()
    assert not server.blob_path(sha256(sent)).exists()
    assert files_under(server.data_dir / "tmp") == set()


def test_delete_with_curl_removes_file_and_its_blob_from_disk(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(30_000)
    digest = upload(curl, server, data, tmp_path, "doomed.bin").json()["hash"]
    blob = server.blob_path(digest)
    assert blob.read_bytes() == data

    deleted = curl("-u", ADMIN_CREDENTIALS, "-X", "DELETE", server.url(f"/files/{digest}"))

    assert deleted.status == 204
    assert deleted.body == b""
    assert_problem_response(curl(server.url(f"/files/{digest}")), 404, "not-found")
    assert not blob.exists()


def test_unauthenticated_upload_with_curl_is_401_with_basic_challenge(
    server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(5_000)
    source = write(tmp_path / "anon.bin", data)

    result = curl("--data-binary", f"@{source}", server.url("/files?name=anon.bin"))

    assert_problem_response(result, 401, "unauthorized")
    assert result.headers["www-authenticate"] == 'Basic realm="filecask", charset="UTF-8"'
    assert curl(server.url(f"/files/{sha256(data)}")).status == 404
    assert not server.blob_path(sha256(data)).exists()


def test_upload_at_the_limit_with_curl_is_accepted(
    small_server: Server, curl: Curl, tmp_path: Path
) -> None:
    data = os.urandom(UPLOAD_LIMIT)

    result = upload(curl, small_server, data, tmp_path, "exact.bin")

    assert result.status == 201
    assert result.json()["size"] == UPLOAD_LIMIT


@pytest.mark.parametrize("size", [UPLOAD_LIMIT + 1, 2048, 3 << 20], ids=["1K+1", "2K", "3M"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversize_upload_with_curl_is_413_and_leaves_nothing_behind(
    small_server: Server, curl: Curl, tmp_path: Path, size: int, framing: str
) -> None:
    data = os.urandom(size)
    store, scratch = small_server.data_dir / "store", small_server.data_dir / "tmp"
    stored_before = files_under(store)
    url = small_server.url("/files?name=big.bin")

    if framing == "content-length":
        source = write(tmp_path / "big.bin", data)
        result = curl("-u", ADMIN_CREDENTIALS, "--data-binary", f"@{source}", url)
    else:
        result = curl(
            "-u",
            ADMIN_CREDENTIALS,
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            "@-",
            url,
            stdin=data,
        )

    assert_problem_response(result, 413, "payload-too-large")
    assert result.json()["limit"] == UPLOAD_LIMIT
    assert files_under(scratch) == set()
    assert files_under(store) == stored_before
    assert not small_server.blob_path(sha256(data)).exists()
    assert curl(small_server.url(f"/files/{sha256(data)}")).status == 404
