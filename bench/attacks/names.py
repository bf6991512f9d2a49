"""Issue 14 §6 (and the lone surrogates of §5): hostile names and the symlink publish.

    python -m bench.attacks.names                  # starts its own `filecask serve`
    python -m bench.attacks.names --port P --user admin:PASSWORD [--archive-root DIR]

Printed, for each family of hostile input: how many the server accepted (2xx), refused
(4xx) and failed on (5xx):
- file names with a bidi control, a zero-width character, a C1 control (raw upload
  `?name=`, multipart `filename`) and a lone surrogate (multipart `filename` bytes that are
  not UTF-8);
- bundle paths harmful on Windows or macOS, bundle paths and names with such characters
  (lone surrogates as JSON escapes), and pairs of entries that collide after NFC + case-fold.
Then the folder archive attack (needs the archive root: the bench's own server, or
`--archive-root` pointing at the root of the server given by `--port`): the folder `pub`
holds symlinks to the root, to another folder, to a dot-folder and to a file elsewhere,
and the root holds a top-level link to a dot-folder. Printed: the files `/archive/pub/`
publishes from outside `pub`, whether `/archive/hidden-alias/` answers 200, a folder with
names no client could extract (not UTF-8, `CON.txt`, `Readme.txt`/`README.TXT`), and how
many warnings 20 requests of a folder with left-out links wrote to the log (own server).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import secrets
import shutil
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from bench.servers import HOST, filecask

HOSTILE_CHARACTERS = {
    "U+202E RLO": "\u202e",
    "U+2066 LRI": "\u2066",
    "U+200F RLM": "\u200f",
    "U+061C ALM": "\u061c",
    "U+200B ZWSP": "\u200b",
    "U+200D ZWJ": "\u200d",
    "U+2060 WJ": "\u2060",
    "U+FEFF BOM": "\ufeff",
    "U+0085 NEL": "\x85",
    "U+009B CSI": "\x9b",
}
HARMFUL_PATHS = [
    "C:/Windows/win.ini",
    "C:x",
    "CON",
    "aux.txt",
    "docs/Com1.log",
    "LPT1",
    "COM\u00b9",
    "nul .txt",
    "report.txt:hidden",
    "a/b::$DATA",
    "dir./a.txt",
    "a.txt ",
    "what?.txt",
    "star*.txt",
    'quote".txt',
    "pipe|.txt",
    "less<.txt",
]
LOOKALIKE_PATHS = [  # NFKC / Windows best-fit look-alikes (the WorstFit attacks)
    "\uff0e\uff0e\uff0f\uff0e\uff0e\uff0fevil.txt",
    "\u2025\uff0fevil.txt",
    "\u2025/evil.txt",
    "a\uff3cb",
    "C\uff1a\uff0fx",
    "\uff43\uff4f\uff4e",
    "..\u2215..\u2215evil",
    "a\u2044b",
    "a\u29f8b",
    "a\ufe68b",
    "a\u2216b",
    "a\ufe55b",
    "a\ua789b",
    "a\u00a5b",
]
COLLIDING = [
    ("Readme.txt", "README.TXT"),
    ("caf\u00e9.txt", "cafe\u0301.txt"),
    ("a", "A/b"),
    ("photos/Dog.jpg", "PHOTOS/dog.JPG"),
]
MARKER = b"NAMES-BENCH-SECRET"


@dataclass(frozen=True)
class Target:
    port: int
    user: str
    archive_root: Path | None
    log: Path | None


def call(
    target: Target, method: str, path: str, body: bytes | None = None, **headers: str
) -> tuple[int, bytes]:
    auth = "Basic " + base64.b64encode(target.user.encode()).decode()
    conn = http.client.HTTPConnection(HOST, target.port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Authorization": auth, **headers})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def outcome(status: int) -> str:
    return "accepted" if status < 400 else "refused" if status < 500 else "5xx"


def multipart(filename: bytes, data: bytes) -> tuple[bytes, str]:
    boundary = "namesbench" + secrets.token_hex(4)
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="'.encode()
        + filename
        + b'"\r\n\r\n'
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def post_bundle(target: Target, manifest: dict[str, object]) -> int:
    status, _ = call(
        target,
        "POST",
        "/archives",
        json.dumps(manifest).encode(),  # a lone surrogate goes as its JSON escape
        **{"Content-Type": "application/json"},
    )
    return status


def file_name_attacks(target: Target) -> Counter[str]:
    counts: Counter[str] = Counter()
    for label, char in HOSTILE_CHARACTERS.items():
        name = f"invoice{char}fdp.exe"
        data = f"{label} {secrets.token_hex(8)}".encode()
        status, _ = call(target, "PUT", f"/files?name={quote(name)}", data)
        counts[outcome(status)] += 1
        body, content_type = multipart(name.encode(), data + b"+")
        status, _ = call(target, "POST", "/files", body, **{"Content-Type": content_type})
        counts[outcome(status)] += 1
    body, content_type = multipart(b"a\xffb.txt", secrets.token_bytes(16))
    status, _ = call(target, "POST", "/files", body, **{"Content-Type": content_type})
    counts[outcome(status)] += 1
    return counts


def bundle_attacks(target: Target) -> dict[str, Counter[str]]:
    _, body = call(target, "PUT", "/files?name=bench.txt", b"names bench " + MARKER)
    hex_hash = json.loads(body)["hash"]
    results: dict[str, Counter[str]] = {
        "harmful paths": Counter(),
        "hostile characters": Counter(),
        "collisions": Counter(),
        "NFKC/best-fit look-alikes": Counter(),
    }

    def bundle(paths: list[str], name: str = "bench.zip") -> int:
        return post_bundle(
            target, {"name": name, "files": [{"hash": hex_hash, "path": p} for p in paths]}
        )

    for path in HARMFUL_PATHS:
        results["harmful paths"][outcome(bundle(["ok.txt", path]))] += 1
    for char in [*HOSTILE_CHARACTERS.values(), "\udcff"]:
        results["hostile characters"][outcome(bundle([f"invoice{char}fdp.exe"]))] += 1
        results["hostile characters"][outcome(bundle(["a"], name=f"x{char}.zip"))] += 1
    for pair in COLLIDING:
        results["collisions"][outcome(bundle(list(pair)))] += 1
    for path in LOOKALIKE_PATHS:
        results["NFKC/best-fit look-alikes"][outcome(bundle(["ok.txt", path]))] += 1
    return results


def plant(root: Path) -> None:
    """The folders of the symlink attack, under the archive root."""
    for rel, data in {
        "pub/p.txt": b"public",
        "private/secret.txt": MARKER,
        ".hidden/secret.txt": MARKER,
        "loglinks/ok.txt": b"ok",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_bytes(MARKER)
    links = {
        root / "pub" / "rootlink": root,
        root / "pub" / "otherlink": root / "private",
        root / "pub" / "hiddenlink": root / ".hidden",
        root / "pub" / "filelink.txt": root / "private" / "secret.txt",
        root / "hidden-alias": root / ".hidden",
        root / "loglinks" / "out": outside,
        root / "loglinks" / "root": root,
    }
    for link, target in links.items():
        if not link.is_symlink():
            link.symlink_to(target, target_is_directory=target.is_dir())


def plant_odd_names(root: Path) -> None:
    """A folder with names no client could extract as they are (planted after the link
    attack: the link to the root would reach it, and the old code fails on it)."""
    odd = os.fsencode(root / "odd-names")
    os.makedirs(odd, exist_ok=True)
    for name in (b"a\xffb.txt", b"CON.txt", b"Readme.txt", b"README.TXT", b"notes: v2.txt"):
        with open(os.path.join(odd, name), "wb") as handle:
            handle.write(name)


def folder_attack(target: Target) -> None:
    assert target.archive_root is not None
    plant(target.archive_root)
    status, body = call(target, "GET", "/archive/pub/")
    outside: list[str] = []
    if status == 200:
        with zipfile.ZipFile(io.BytesIO(body)) as opened:
            outside = [n for n in opened.namelist() if not n.endswith("/") and n != "p.txt"]
    print(f"  GET /archive/pub/: {status}; files published from outside pub: {len(outside)}")
    for name in outside:
        print(f"    {name}")
    print(f"  secret bytes in that answer: {MARKER in body}")
    status, body = call(target, "GET", "/archive/hidden-alias/")
    print(f"  GET /archive/hidden-alias/ (a link to .hidden): {status}, secret: {MARKER in body}")
    plant_odd_names(target.archive_root)
    status, body = call(target, "GET", "/archive/odd-names/")
    names: list[str] = []
    if status == 200:
        with zipfile.ZipFile(io.BytesIO(body)) as opened:
            names = opened.namelist()
    print(f"  GET /archive/odd-names/ (not UTF-8, CON.txt, Readme/README, a:b): {status} {names}")
    if target.log is None:
        return
    before = target.log.read_text(errors="replace").count("WARNING")
    for _ in range(20):
        call(target, "GET", "/archive/loglinks/")
    after = target.log.read_text(errors="replace").count("WARNING")
    print(f"  warnings logged for 20 GETs of a folder with 2 left-out links: {after - before}")


def run(target: Target) -> None:
    print("File names (10 hostile characters x raw/multipart, 1 lone surrogate):")
    counts = file_name_attacks(target)
    print("  " + ", ".join(f"{k} {counts[k]}" for k in ("accepted", "refused", "5xx")))
    print("Bundles:")
    for family, counts in bundle_attacks(target).items():
        total = sum(counts.values())
        shown = ", ".join(f"{k} {counts[k]}" for k in ("accepted", "refused", "5xx"))
        print(f"  {family} ({total}): {shown}")
    if target.archive_root is None:
        print("Folder archives: skipped (give --archive-root with --port)")
        return
    print("Folder archives:")
    folder_attack(target)


@contextmanager
def own_server() -> Iterator[Target]:
    base = Path(tempfile.mkdtemp(prefix="names-attack-"))
    try:
        root = base / "archives"
        root.mkdir()
        password = secrets.token_urlsafe(12)
        with filecask(base / "run", base / "data", password, archive_root=root) as server:
            yield Target(server.port, server.user, root, server.log)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, help="attack this server instead of starting one")
    parser.add_argument("--user", default="", help="NAME:PASSWORD of a user (with --port)")
    parser.add_argument("--archive-root", type=Path, help="that server's archive root")
    args = parser.parse_args(argv)
    if args.port is None:
        with own_server() as target:
            run(target)
        return 0
    if not args.user:
        parser.error("--port needs --user NAME:PASSWORD")
    run(Target(args.port, args.user, args.archive_root, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
