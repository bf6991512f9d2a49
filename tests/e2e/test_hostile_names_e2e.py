"""Issue 14 §6, names and archives that are safe on every client, and the lone surrogates
of §5, against a real `filecask serve`.

- A file name (raw upload `?name=`, multipart `filename`, tus `Upload-Metadata`, download
  `?name=`) or a bundle's name or path with a bidi control, a zero-width character, a C1
  control or a lone surrogate is a 400 problem+json naming the code point: nothing is
  stored, no traceback, at most one INFO/WARNING line (the access log's).
- Bundle paths harmful when extracted on Windows or macOS (drive letters, device names,
  `:`, trailing dots and spaces, `?*<>|"`) and entries that collide after NFC + case-fold
  are 400.
- A folder archive holds only what lies under its own folder: links in it to the root, to
  another folder or to a dot-folder publish nothing (the ZIP is extracted with the real
  `unzip`, and `bsdtar` where installed), a top-level link to a dot-folder is 404, and the
  left-out links are logged once, not once per request.
- Names on disk that a client could not extract safely (not UTF-8, `CON.txt`, `a:b`,
  `Readme.txt` next to `README.TXT`) are served renamed instead of failing the archive;
  bundles saved by older versions with such paths are served the same way.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import os
import shutil
import sqlite3
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, ServerLauncher, StartServer

AUTH = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
PROBLEM_JSON = "application/problem+json"
MARKER = b"NAMES-E2E-SECRET-" + os.urandom(8).hex().encode()
"""Planted in folders no archive may publish; no response may contain it."""


@dataclass(frozen=True)
class Answer:
    request: str
    """`METHOD /path?query`, as the access log shows it."""
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    server: Server, method: str, path: str, body: bytes | None = None, **headers: str
) -> Answer:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Authorization": AUTH, **headers})
        response = conn.getresponse()
        return Answer(
            f"{method} {path}",
            response.status,
            {k.lower(): v for k, v in response.getheaders()},
            response.read(),
        )
    finally:
        conn.close()


def usage(server: Server) -> tuple[int, int]:
    me = call(server, "GET", "/me").json()
    return me["files"], len(call(server, "GET", "/archives").json()["archives"])


def upload(server: Server, data: bytes, name: str = "ok.txt") -> str:
    answer = call(server, "PUT", f"/files?name={quote(name)}", data)
    assert answer.status in (200, 201), answer.body
    hex_hash: str = answer.json()["hash"]
    return hex_hash


def multipart(filename: bytes, data: bytes, boundary: str = "NmBoundary") -> tuple[bytes, str]:
    body = (
        f"--{boundary}\r\n".encode()
        + b'Content-Disposition: form-data; name="file"; filename="'
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def assert_refused(
    server: Server, answer: Answer, log_mark: int, *, code_point: str | None = None
) -> dict[str, Any]:
    """A 400 problem+json (naming `code_point`), and a clean log: no traceback, no ERROR,
    at most one INFO/WARNING line for the request (the access log lines of the requests
    before it, written once their answers went out, are not its lines)."""
    assert answer.status == 400, (answer.status, answer.body[:300])
    assert answer.headers["content-type"].startswith(PROBLEM_JSON)
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == 400
    if code_point is not None:
        assert problem["code_point"] == code_point, problem
        assert code_point in problem["detail"]
    log = server.stderr()[log_mark:]
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    lines = [
        line
        for line in log.splitlines()
        if (" INFO " in line or " WARNING " in line)
        and (" filecask.access " not in line or f'"{answer.request} ' in line)
    ]
    assert len(lines) <= 1, lines
    return problem


# -- the server and its archive root ------------------------------------------------------


@pytest.fixture(scope="module")
def archive_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("names") / "root"
    files = {
        "pub/p.txt": b"public",
        "pub/sub/s.txt": b"public sub",
        "private/secret.txt": MARKER,
        ".hidden/secret.txt": MARKER,
        "loglinks/ok.txt": b"ok",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    outside = root.parent / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(MARKER)
    pub = root / "pub"
    (pub / "rootlink").symlink_to(root, target_is_directory=True)
    (pub / "hiddenlink").symlink_to(root / ".hidden", target_is_directory=True)
    (pub / "otherlink").symlink_to(root / "private", target_is_directory=True)
    (pub / "filelink.txt").symlink_to(root / "private" / "secret.txt")
    (pub / "p-again.txt").symlink_to(pub / "p.txt")  # inside its own folder: kept
    (root / "hidden-alias").symlink_to(root / ".hidden", target_is_directory=True)
    (root / "loglinks" / "out").symlink_to(outside, target_is_directory=True)
    (root / "loglinks" / "root").symlink_to(root, target_is_directory=True)
    return root


ODD_FILES = {
    b"a\xffb.txt": b"not utf-8",
    b"CON.txt": b"a device on windows",
    b"notes: v2.txt": b"a stream on windows",
    b"Readme.txt": b"one",
    b"README.TXT": b"two",
    b"trailing.": b"dot",
    b"invoice\xe2\x80\xaefdp.exe": b"bidi",
}
ODD_SERVED = {
    "README.TXT": b"two",
    "Readme (2).txt": b"one",
    "_CON.txt": b"a device on windows",
    "a_b.txt": b"not utf-8",
    "invoice_fdp.exe": b"bidi",
    "notes_ v2.txt": b"a stream on windows",
    "trailing_": b"dot",
}


@pytest.fixture(scope="module")
def names_server(module_launcher: ServerLauncher, archive_root: Path) -> Server:
    return module_launcher("--archive-root", str(archive_root))


@pytest.fixture(scope="module")
def odd_server(module_launcher: ServerLauncher, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """An archive root of its own (the links of `archive_root` reach its whole root)."""
    root = tmp_path_factory.mktemp("odd-names") / "root"
    odd = os.fsencode(root / "odd")
    os.makedirs(odd)
    for name, data in ODD_FILES.items():
        with open(os.path.join(odd, name), "wb") as handle:
            handle.write(data)
    return module_launcher("--archive-root", str(root))


# -- file names ---------------------------------------------------------------------------

DISGUISING = {
    "U+202E": "\u202e",  # RIGHT-TO-LEFT OVERRIDE: invoice<RLO>fdp.exe shows as invoiceexe.pdf
    "U+2066": "\u2066",
    "U+200F": "\u200f",
    "U+061C": "\u061c",
    "U+200B": "\u200b",
    "U+200D": "\u200d",
    "U+FEFF": "\ufeff",
    "U+009B": "\x9b",
}


@pytest.mark.parametrize("route", ["query", "multipart", "tus"])
@pytest.mark.parametrize("point", list(DISGUISING))
def test_file_names_with_disguising_characters_are_refused(
    names_server: Server, route: str, point: str
) -> None:
    name = f"invoice{DISGUISING[point]}fdp.exe"
    data = f"content for {route} {point}".encode()
    before = usage(names_server)
    mark = len(names_server.stderr())
    if route == "query":
        answer = call(names_server, "PUT", f"/files?name={quote(name)}", data)
    elif route == "multipart":
        body, content_type = multipart(name.encode(), data)
        answer = call(names_server, "POST", "/files", body, **{"Content-Type": content_type})
    else:
        metadata = "filename " + base64.b64encode(name.encode()).decode()
        answer = call(
            names_server,
            "POST",
            "/uploads/",
            b"",
            **{
                "Tus-Resumable": "1.0.0",
                "Upload-Length": str(len(data)),
                "Upload-Metadata": metadata,
            },
        )
    assert_refused(names_server, answer, mark, code_point=point)
    assert usage(names_server) == before


def test_a_lone_surrogate_in_a_multipart_file_name_is_a_400(names_server: Server) -> None:
    """Bytes that are not UTF-8 in a part's filename decode to a lone surrogate (U+DCFF)."""
    before = usage(names_server)
    mark = len(names_server.stderr())
    body, content_type = multipart(b"a\xffb.txt", b"surrogate name content")
    answer = call(names_server, "POST", "/files", body, **{"Content-Type": content_type})
    assert_refused(names_server, answer, mark, code_point="U+DCFF")
    assert usage(names_server) == before


def test_a_download_name_with_a_bidi_control_is_refused(names_server: Server) -> None:
    hex_hash = upload(names_server, b"a download with a disguised name")
    mark = len(names_server.stderr())
    disguised = quote("invoice\u202efdp.exe")
    answer = call(names_server, "GET", f"/files/{hex_hash}?name={disguised}")
    assert_refused(names_server, answer, mark, code_point="U+202E")


# -- bundle names and paths ---------------------------------------------------------------

HARMFUL_PATHS = [
    "invoice\u202efdp.exe",
    "a/\u2067b",
    "zero\u200bwidth.txt",
    "c1\x85.txt",
    "bom\ufeff.txt",
    "a\udcffb.txt",
    "C:/Windows/win.ini",
    "C:x",
    "CON",
    "aux.txt",
    "docs/Com1.log",
    "LPT1",
    "COM\u00b9",
    "report.txt:hidden",
    "a/b::$DATA",
    "dir./a.txt",
    "a.txt ",
    "what?.txt",
    "star*.txt",
    'quote".txt',
    "pipe|.txt",
]


def post_bundle(server: Server, manifest: dict[str, Any]) -> Answer:
    # json.dumps escapes a lone surrogate as \udcff, exactly what a hostile client sends.
    return call(
        server,
        "POST",
        "/archives",
        json.dumps(manifest).encode(),
        **{"Content-Type": "application/json"},
    )


@pytest.mark.parametrize("path", HARMFUL_PATHS, ids=[ascii(p) for p in HARMFUL_PATHS])
def test_bundle_paths_harmful_on_some_client_are_refused(names_server: Server, path: str) -> None:
    hex_hash = upload(names_server, b"bundled content")
    before = usage(names_server)
    mark = len(names_server.stderr())
    answer = post_bundle(
        names_server,
        {"files": [{"hash": hex_hash, "path": "ok.txt"}, {"hash": hex_hash, "path": path}]},
    )
    refused = next((c for c in path if c in "\u202e\u2067\u200b\x85\ufeff\udcff"), None)
    problem = assert_refused(
        names_server, answer, mark, code_point=None if refused is None else f"U+{ord(refused):04X}"
    )
    if refused == "\udcff":  # refused by the JSON layer, naming where (RFC 6901)
        assert problem["pointer"] == "/files/1/path"
    else:
        assert problem["entry"] == 1
    assert usage(names_server) == before


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("Readme.txt", "README.TXT"),
        ("caf\u00e9.txt", "cafe\u0301.txt"),  # NFC and NFD
        ("a", "A/b"),
        ("photos/Dog.jpg", "PHOTOS/dog.JPG"),
    ],
)
def test_bundle_entries_that_collide_on_windows_or_macos_are_refused(
    names_server: Server, first: str, second: str
) -> None:
    one = upload(names_server, b"first of a colliding pair")
    two = upload(names_server, b"second of a colliding pair")
    before = usage(names_server)
    mark = len(names_server.stderr())
    answer = post_bundle(
        names_server, {"files": [{"hash": one, "path": first}, {"hash": two, "path": second}]}
    )
    problem = assert_refused(names_server, answer, mark)
    assert "conflicts_with" in problem
    assert usage(names_server) == before


@pytest.mark.parametrize(
    ("name", "point"), [("x\udcff.zip", "U+DCFF"), ("holiday\u202eqiz.exe", "U+202E")]
)
def test_bundle_names_with_disguising_characters_are_refused(
    names_server: Server, name: str, point: str
) -> None:
    hex_hash = upload(names_server, b"bundle name content")
    mark = len(names_server.stderr())
    answer = post_bundle(names_server, {"name": name, "files": [{"hash": hex_hash, "path": "a"}]})
    assert_refused(names_server, answer, mark, code_point=point)


# -- folder archives ----------------------------------------------------------------------


def extract(tool: str, archive: bytes, into: Path) -> dict[str, bytes]:
    """The files a real extractor writes for `archive`, as {relative path: bytes}; every
    one of them must lie inside `into`."""
    into.mkdir()
    source = into.parent / f"{into.name}.zip"
    source.write_bytes(archive)
    command = {
        "unzip": ["unzip", "-qq", "-o", str(source), "-d", str(into)],
        "bsdtar": ["bsdtar", "-xf", str(source), "-C", str(into)],
    }[tool]
    subprocess.run(command, check=True, capture_output=True, timeout=30)
    real = os.path.realpath(into)
    found: dict[str, bytes] = {}
    for path in into.rglob("*"):
        assert os.path.commonpath([real, os.path.realpath(path)]) == real, path
        if path.is_file():
            found[path.relative_to(into).as_posix()] = path.read_bytes()
    return found


def extractors() -> list[str]:
    tools = [tool for tool in ("unzip", "bsdtar") if shutil.which(tool)]
    if not tools:
        pytest.skip("neither `unzip` nor `bsdtar` is installed")
    return tools


def test_links_to_other_folders_the_root_or_a_dot_folder_publish_nothing(
    names_server: Server, tmp_path: Path
) -> None:
    answer = call(names_server, "GET", "/archive/pub/")
    assert answer.status == 200, answer.body[:300]
    assert MARKER not in answer.body
    with zipfile.ZipFile(io.BytesIO(answer.body)) as opened:
        assert sorted(n for n in opened.namelist() if not n.endswith("/")) == [
            "p-again.txt",
            "p.txt",
            "sub/s.txt",
        ]
    for tool in extractors():
        assert extract(tool, answer.body, tmp_path / tool) == {
            "p-again.txt": b"public",
            "p.txt": b"public",
            "sub/s.txt": b"public sub",
        }


def test_a_top_level_link_to_a_dot_folder_is_not_an_archive(names_server: Server) -> None:
    for path in ("/archive/hidden-alias/", "/archive/hidden-alias"):
        answer = call(names_server, "GET", path)
        assert answer.status == 404, (path, answer.status)
        assert MARKER not in answer.body


def test_left_out_links_are_logged_once_not_per_request(names_server: Server) -> None:
    mark = len(names_server.stderr())
    for _ in range(10):
        assert call(names_server, "HEAD", "/archive/loglinks/").status == 200
        assert call(names_server, "GET", "/archive/loglinks/").status == 200
    log = names_server.stderr()[mark:]
    warnings = [line for line in log.splitlines() if " WARNING " in line and "loglinks" in line]
    assert len(warnings) == 1, warnings
    assert "left out 2 symlink(s)" in warnings[0]


def test_names_no_client_could_extract_are_served_renamed(
    odd_server: Server, tmp_path: Path
) -> None:
    mark = len(odd_server.stderr())
    answer = call(odd_server, "GET", "/archive/odd/")
    assert answer.status == 200, answer.body[:300]
    with zipfile.ZipFile(io.BytesIO(answer.body)) as opened:
        assert {n: opened.read(n) for n in opened.namelist()} == ODD_SERVED
    for tool in extractors():
        assert extract(tool, answer.body, tmp_path / tool) == ODD_SERVED
    log = odd_server.stderr()[mark:]
    assert "Traceback" not in log
    assert "\u202e" not in log


# -- bundles saved before these rules -----------------------------------------------------


def test_old_bundles_with_unsafe_paths_are_served_renamed(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A database from an older version can hold bundles whose paths the rules now refuse:
    the link keeps working, and the ZIP's entries get names safe on every client."""
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)
    hashes = [upload(server, f"old bundle file {i}".encode()) for i in range(4)]
    created = post_bundle(
        server,
        {
            "name": "old.zip",
            "files": [{"hash": h, "path": f"f{i}.txt"} for i, h in enumerate(hashes)],
        },
    )
    assert created.status == 201, created.body
    bundle_id = created.json()["id"]
    server.stop()
    old_paths = ["CON.txt", "Readme.txt", "README.TXT", "invoice\u202efdp.exe"]
    with sqlite3.connect(data_dir / "filecask.db") as db:
        for position, path in enumerate(old_paths):
            db.execute(
                "UPDATE bundle_entries SET path = ? WHERE bundle_id = ? AND position = ?",
                (path, bundle_id, position),
            )
        db.execute("UPDATE bundles SET name = ? WHERE id = ?", ("holiday\u202eqiz.exe", bundle_id))
    again = start_server(data_dir=data_dir)
    answer = call(again, "GET", f"/archive/{bundle_id}/")
    assert answer.status == 200, answer.body[:300]
    assert "\u202e" not in answer.headers["content-disposition"]
    assert "%E2%80%AE" not in answer.headers["content-disposition"].upper()
    expected = {
        "_CON.txt": b"old bundle file 0",
        "Readme.txt": b"old bundle file 1",
        "README (2).TXT": b"old bundle file 2",
        "invoice_fdp.exe": b"old bundle file 3",
    }
    with zipfile.ZipFile(io.BytesIO(answer.body)) as opened:
        assert {n: opened.read(n) for n in opened.namelist()} == expected
    for tool in extractors():
        assert extract(tool, answer.body, tmp_path / tool) == expected
    assert hashlib.sha256(answer.body).hexdigest()  # served whole


# -- the web page makes bundles the new rules accept ---------------------------------------

CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium is missing")
def test_the_web_page_bundles_files_whose_names_are_not_safe_paths(
    module_launcher: ServerLauncher,
) -> None:
    """File names may hold what a bundle path may not (`?`, `:`, `CON.txt`, names equal but
    for case): the page names the ZIP's entries so the server accepts them."""
    server = module_launcher()
    names = ["Readme.txt", "README.TXT", "what?.txt", "CON.txt", "notes: v2.txt"]
    names += ["a\uff0fb.txt", "\uff43\uff4f\uff4e.txt", "notes\u2026"]  # NFKC look-alikes
    contents = {name: f"web {name}".encode() for name in names}
    for name in names:
        upload(server, contents[name], name)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(server.url("/"))
            form = page.locator("#sign-in")
            form.locator("input[name=user]").fill("admin")
            form.locator("input[name=password]").fill(ADMIN_PASSWORD)
            form.locator("button[type=submit]").click()
            expect(page.locator("#app-view")).to_be_visible()
            for name in names:
                page.get_by_label(f"Select {name}", exact=True).check()
            page.fill("#bundle-name", "web.zip")
            page.click("#make-bundle")
            link = page.locator("#bundle-link")
            expect(link).to_be_visible()
            href = link.get_attribute("href")
            assert href is not None
            archive = page.request.get(href)
            assert archive.status == 200
            body = archive.body()
        finally:
            browser.close()
    with zipfile.ZipFile(io.BytesIO(body)) as opened:
        served = {n: opened.read(n) for n in opened.namelist()}
    assert served == {
        "Readme.txt": contents["Readme.txt"],
        "README (2).TXT": contents["README.TXT"],
        "what_.txt": contents["what?.txt"],
        "_CON.txt": contents["CON.txt"],
        "notes_ v2.txt": contents["notes: v2.txt"],
        "a_b.txt": contents["a\uff0fb.txt"],
        "_\uff43\uff4f\uff4e.txt": contents["\uff43\uff4f\uff4e.txt"],
        "notes_": contents["notes\u2026"],
    }


# -- compatibility look-alikes: NFKC and Windows best-fit (WorstFit) ----------------------

LOOKALIKE_PATHS = {
    "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.txt": "U+FF0F",
    "\u2025\uff0fevil.txt": "U+FF0F",
    "\u2025/evil.txt": "U+2025",
    "a\uff3cb": "U+FF3C",
    "C\uff1a\uff0fx": "U+FF1A",
    "\uff43\uff4f\uff4e": "U+FF43",
    "..\u2215..\u2215evil": "U+2215",
    "a\u2044b": "U+2044",
    "a\u2216b": "U+2216",
    "a\ufe55b": "U+FE55",
    "a\u00a5b": "U+00A5",
}


@pytest.mark.parametrize("path", list(LOOKALIKE_PATHS), ids=[ascii(p) for p in LOOKALIKE_PATHS])
def test_bundle_paths_that_read_as_harmful_after_nfkc_or_best_fit_are_refused(
    names_server: Server, path: str
) -> None:
    hex_hash = upload(names_server, b"lookalike bundled content")
    before = usage(names_server)
    mark = len(names_server.stderr())
    answer = post_bundle(
        names_server,
        {"files": [{"hash": hex_hash, "path": "ok.txt"}, {"hash": hex_hash, "path": path}]},
    )
    problem = assert_refused(names_server, answer, mark, code_point=LOOKALIKE_PATHS[path])
    assert problem["entry"] == 1
    assert problem["path"] == path
    assert usage(names_server) == before


def test_ordinary_non_ascii_bundle_paths_are_kept_as_sent(names_server: Server) -> None:
    paths = ["caf\u00e9/d\u00eda.txt", "\u5199\u771f/\u65c5\u884c.jpg", "wait\u2026 \U0001f389.txt"]
    hashes = [upload(names_server, f"ordinary {i}".encode()) for i in range(len(paths))]
    created = post_bundle(
        names_server,
        {"files": [{"hash": h, "path": p} for h, p in zip(hashes, paths, strict=True)]},
    )
    assert created.status == 201, created.body
    answer = call(names_server, "GET", f"/archive/{created.json()['id']}/")
    assert answer.status == 200
    with zipfile.ZipFile(io.BytesIO(answer.body)) as opened:
        assert sorted(opened.namelist()) == sorted(paths)


def test_old_bundles_with_lookalike_paths_are_served_renamed(
    start_server: StartServer, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = start_server(data_dir=data_dir)
    old_paths = [
        "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.txt",
        "\u2025/evil.txt",
        "a\uff3cb",
        "\uff43\uff4f\uff4e",
        "..\u2215..\u2215evil",
    ]
    hashes = [upload(server, f"old lookalike {i}".encode()) for i in range(len(old_paths))]
    created = post_bundle(
        server, {"files": [{"hash": h, "path": f"f{i}.txt"} for i, h in enumerate(hashes)]}
    )
    assert created.status == 201, created.body
    bundle_id = created.json()["id"]
    server.stop()
    with sqlite3.connect(data_dir / "filecask.db") as db:
        for position, path in enumerate(old_paths):
            db.execute(
                "UPDATE bundle_entries SET path = ? WHERE bundle_id = ? AND position = ?",
                (path, bundle_id, position),
            )
    again = start_server(data_dir=data_dir)
    answer = call(again, "GET", f"/archive/{bundle_id}/")
    assert answer.status == 200, answer.body[:300]
    expected = {
        "\uff0e\uff0e_\uff0e\uff0e_evil.txt": b"old lookalike 0",
        "_/evil.txt": b"old lookalike 1",
        "a_b": b"old lookalike 2",
        "_\uff43\uff4f\uff4e": b"old lookalike 3",
        ".._.._evil": b"old lookalike 4",
    }
    with zipfile.ZipFile(io.BytesIO(answer.body)) as opened:
        assert {n: opened.read(n) for n in opened.namelist()} == expected
    for tool in extractors():
        assert extract(tool, answer.body, tmp_path / tool) == expected
