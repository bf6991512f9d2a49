"""Path tricks against every route that takes a path component, sent byte for byte.

An in-process client (yarl) normalises `..`, percent-escapes and doubled slashes before a
request leaves it, so these rows go over a raw socket to a real `filecask serve`: exactly
the request line an attacker would type. Each row names the status it must get (400 or
404: refused, never 200 with content from outside, never 5xx), and every response body is
searched for a secret planted OUTSIDE the data directory and the archive root, next to
them, where a traversal would land.

The archive root holds the symlinks `archives.py` must refuse to follow out of the root: a
folder symlink and a file symlink inside a sub-folder of an archive (skipped from the ZIP),
and a top-level symlink used as an archive id (404); plus a folder whose name has a
Unicode look-alike that must not resolve to it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import secrets
import socket
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher

SECRET = b"FILECASK-PATH-SECRET-" + secrets.token_hex(16).encode()
"""Written outside the archive root and the data dir; no response may ever contain it."""
PHOTO = b"\xff\xd8\xff photo bytes of the real folder"
CONTENT = b"the one stored file\n" * 10
HASH = hashlib.sha256(CONTENT).hexdigest()
ADMIN = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()

LONG_300 = "a" * 300
LONG_5000 = "a" * 5000
FULLWIDTH_DOTS = "%EF%BC%8E%EF%BC%8E%EF%BC%8F"  # U+FF0E U+FF0E U+FF0F, percent-encoded
DIVISION_SLASH = "%E2%88%95"  # U+2215 DIVISION SLASH
FRACTION_SLASH = "%E2%81%84"  # U+2044 FRACTION SLASH


@dataclass(frozen=True)
class Raw:
    """An HTTP response as bytes on the wire."""

    status: int
    head: bytes
    body: bytes


def raw_request(port: int, method: str, target: bytes, *, auth: bool = False) -> Raw:
    """Sends `target` exactly as given in the request line: no normalisation, no quoting."""
    lines = [
        method.encode() + b" " + target + b" HTTP/1.1",
        f"Host: {HOST}:{port}".encode(),
        b"Connection: close",
        b"Content-Length: 0",
        b"Accept: */*",
    ]
    if auth:
        lines.append(b"Authorization: " + ADMIN.encode())
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(b"\r\n".join(lines) + b"\r\n\r\n")
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    return Raw(int(head.split(b" ", 2)[1]), head, body)


@dataclass(frozen=True)
class Tree:
    server: Server
    root: Path
    outside: Path


@pytest.fixture(scope="module")
def tree(module_launcher: ServerLauncher, tmp_path_factory: pytest.TempPathFactory) -> Tree:
    base = tmp_path_factory.mktemp("paths")
    outside = base / "secret"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    root = base / "root"
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "1.jpg").write_bytes(PHOTO)
    # Inside an archive: a folder symlink and (in a sub-folder) a file symlink leading out.
    (root / "escape" / "inner").mkdir(parents=True)
    (root / "escape" / "ok.txt").write_bytes(b"inside")
    (root / "escape" / "outdir").symlink_to(outside, target_is_directory=True)
    (root / "escape" / "inner" / "leak.txt").symlink_to(outside / "secret.txt")
    # A top-level symlink used as an archive id, and one to a file.
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "linkfile").symlink_to(outside / "secret.txt")
    # The secret also sits next to the data dir, where `../secret.txt` from it would land.
    server = module_launcher("--archive-root", str(root))
    (server.data_dir.parent / "secret.txt").write_bytes(SECRET)
    (server.data_dir / "secret.txt").write_bytes(SECRET)
    stored = raw_upload(server.port)
    assert stored == 201, stored
    return Tree(server, root, outside)


def raw_upload(port: int) -> int:
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(
            b"POST /files?name=one.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            + b"Authorization: "
            + ADMIN.encode()
            + b"\r\nContent-Length: "
            + str(len(CONTENT)).encode()
            + b"\r\n\r\n"
            + CONTENT
        )
        reply = b""
        while chunk := sock.recv(1 << 16):
            reply += chunk
    return int(reply.split(b" ", 2)[1])


# Tricks put in place of one path component; `{}` in a route stands for it.
TRICKS: list[tuple[str, str]] = [
    ("dotdot", ".."),
    ("dotdot-secret", "../secret.txt"),
    ("dotdot-deep", "../../../../../../etc/passwd"),
    ("pct-dotdot", "%2e%2e"),
    ("pct-dotdot-slash", "%2E%2E%2F"),
    ("pct-dotdot-slash-secret", "%2E%2E%2F%2E%2E%2Fsecret%2Fsecret.txt"),
    ("pct-slash", "%2F"),
    ("pct-backslash", "%5C"),
    ("pct-backslash-dotdot", "..%5C..%5Csecret"),
    ("dotdot-pct-slash", "..%2f"),
    ("dotdot-pct-slash-secret", "..%2fsecret%2fsecret.txt"),
    ("nul", "%00"),
    ("nul-after", "photos%00"),
    ("fullwidth-dots", FULLWIDTH_DOTS),
    ("fullwidth-dots-secret", FULLWIDTH_DOTS + "secret"),
    ("division-slash", ".." + DIVISION_SLASH + "secret"),
    ("fraction-slash", ".." + FRACTION_SLASH + "secret"),
    ("long-300", LONG_300),
    ("long-5000", LONG_5000),
    ("doubled-slash", "/" + "x"),
    ("hash-upper", HASH.upper()),
    ("hash-short", HASH[:63]),
    ("hash-long", HASH + "0"),
    ("hash-nonhex", HASH[:63] + "g"),
    ("hash-dotdot", HASH[:62] + ".."),
]

# (route template, method, needs admin). `{}` is where each trick goes.
ROUTES: list[tuple[str, str, bool]] = [
    ("/files/{}", "GET", False),
    ("/files/{}", "HEAD", False),
    ("/files/{}", "DELETE", True),
    ("/files/{}", "PUT", True),
    ("/archive/{}/", "GET", False),
    ("/archive/{}", "GET", False),
    ("/archives/{}", "DELETE", True),
    ("/users/{}", "DELETE", True),
]

REFUSED = frozenset({400, 404})
"""400 (a malformed id), or 404 (no such thing, or no route once the path is split)."""
EXPECTED: dict[tuple[str, str], frozenset[int]] = {
    # A hash in upper case names the same file: served (GET/HEAD), deleted (DELETE).
    ("/files/{}", "hash-upper"): frozenset({200}),
    # Empty PUT with the right hash: the content does not match it.
    ("/files/{} PUT", "hash-upper"): frozenset({400}),
    ("/files/{} DELETE", "hash-upper"): frozenset({204}),
    # The upper-case id names no bundle, so it is a folder name that does not exist.
    ("/archives/{}", "hash-upper"): frozenset({404}),
    # `/users/` + `/x`: a route split by the doubled slash; no user `x` either way.
    ("/users/{}", "doubled-slash"): frozenset({404}),
}
"""Rows whose expected status is not simply "refused"."""


def _expected(route: str, method: str, trick: str) -> frozenset[int]:
    for key in ((f"{route} {method}", trick), (route, trick)):
        if key in EXPECTED:
            return EXPECTED[key]
    return REFUSED


ROWS = [
    pytest.param(route, method, admin, trick, id=f"{method} {route.format(name)}")
    for route, method, admin in ROUTES
    for name, trick in TRICKS
]


def _no_secret(raw: Raw) -> None:
    assert SECRET not in raw.head + raw.body
    assert b"root:x:0:0" not in raw.body, "/etc/passwd leaked"


@pytest.mark.parametrize(("route", "method", "admin", "trick"), ROWS)
def test_path_trick_is_refused(
    tree: Tree, route: str, method: str, admin: bool, trick: str
) -> None:
    name = next(n for n, t in TRICKS if t == trick)
    target = route.replace("{}", trick).encode()
    if method == "DELETE" and name == "hash-upper" and route == "/files/{}":
        # Deleting the one stored file would change the other rows: re-upload after.
        try:
            raw = raw_request(tree.server.port, method, target, auth=admin)
        finally:
            assert raw_upload(tree.server.port) == 201
    else:
        raw = raw_request(tree.server.port, method, target, auth=admin)
    expected = _expected(route, method, name)
    assert raw.status in expected, (method, target[:120], raw.status, raw.body[:300])
    assert raw.status < 500
    _no_secret(raw)
    if raw.status == 200 and method == "GET":
        assert raw.body.endswith(CONTENT) or CONTENT in raw.body


# Unicode look-alikes sent raw (UTF-8 bytes, not percent-encoded) in the request line.
RAW_UNICODE = [
    pytest.param("\uff0e\uff0e\uff0fsecret/", id="fullwidth-dots"),
    pytest.param("..\u2215secret/", id="division-slash"),
    pytest.param("..\u2044secret/", id="fraction-slash"),
    pytest.param("\uff50\uff48\uff4f\uff54\uff4f\uff53/", id="fullwidth-lookalike-of-photos"),
    pytest.param("ph\u043etos/", id="cyrillic-o-lookalike-of-photos"),
]


@pytest.mark.parametrize("segment", RAW_UNICODE)
def test_unicode_lookalikes_sent_raw_are_refused(tree: Tree, segment: str) -> None:
    raw = raw_request(tree.server.port, "GET", f"/archive/{segment}".encode())
    assert raw.status in REFUSED, (segment, raw.status, raw.body[:300])
    _no_secret(raw)


@pytest.mark.parametrize(
    "segment",
    [
        pytest.param("%EF%BD%90%EF%BD%88%EF%BD%8F%EF%BD%94%EF%BD%8F%EF%BD%93", id="fullwidth"),
        pytest.param("ph%D0%BEtos", id="cyrillic-o"),
        pytest.param("PHOTOS", id="upper-case"),
    ],
)
def test_lookalike_of_an_existing_folder_is_not_that_folder(tree: Tree, segment: str) -> None:
    raw = raw_request(tree.server.port, "GET", f"/archive/{segment}/".encode())
    assert raw.status == 404, raw.body[:300]
    assert PHOTO not in raw.body


def test_the_real_folder_is_served(tree: Tree) -> None:
    """The control row: the folder the look-alikes imitate is there and is served."""
    raw = raw_request(tree.server.port, "GET", b"/archive/photos/")
    assert raw.status == 200
    assert PHOTO in raw.body


def _zip_members(raw: Raw) -> dict[str, bytes]:
    assert raw.status == 200, raw.body[:300]
    with zipfile.ZipFile(io.BytesIO(raw.body)) as archive:
        return {i.filename: archive.read(i) for i in archive.infolist() if not i.is_dir()}


def test_symlinks_inside_an_archive_leading_out_are_skipped(tree: Tree) -> None:
    raw = raw_request(tree.server.port, "GET", b"/archive/escape/")
    _no_secret(raw)
    members = _zip_members(raw)
    assert members == {"ok.txt": b"inside"}, sorted(members)


@pytest.mark.parametrize("folder", ["linked", "linkfile"])
def test_top_level_symlink_leading_out_is_not_an_archive(tree: Tree, folder: str) -> None:
    raw = raw_request(tree.server.port, "GET", f"/archive/{folder}/".encode())
    assert raw.status == 404, raw.body[:300]
    _no_secret(raw)
