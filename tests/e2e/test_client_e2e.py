"""The `filecask` client commands (upload, download, rm, ls, archive) run as real
subprocesses against a real `filecask serve`: byte-exact transfers, a resumed download
proven by the server's access log, hash checks, credentials from the environment and from
~/.netrc, and the exit code of every kind of failure.

Every command runs with HOME set to the test's own directory, so the runner's ~/.netrc is
never read, and without a terminal, so nothing is ever asked."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import secrets
import subprocess
import time
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ADMIN_PASSWORD, HOST, Server, free_port, run_filecask

KiB = 1 << 10
LOG_TIMEOUT = 5.0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def admin_request(server: Server, method: str, path: str, body: Any = None) -> Any:
    """One admin API call with http.client; the decoded JSON answer (None if empty)."""
    token = base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request(method, path, json.dumps(body) if body is not None else None, headers)
        response = conn.getresponse()
        data = response.read()
        assert response.status < 300, (response.status, data)
        return json.loads(data) if data else None
    finally:
        conn.close()


def make_user(server: Server, quota: int | None = None) -> tuple[str, str]:
    """A fresh user (name, password) on the shared server, so tests never see each
    other's files."""
    name = f"u{secrets.token_hex(4)}"
    password = f"pw-{secrets.token_hex(8)}"
    body: dict[str, Any] = {"name": name, "password": password}
    if quota is not None:
        body["quota"] = quota
    admin_request(server, "POST", "/users", body)
    return name, password


class Cli:
    """Runs `filecask …` in `cwd` against one server, as one user (via the environment,
    unless told otherwise)."""

    def __init__(self, server: Server, home: Path, user: str, password: str) -> None:
        self.server = server
        self.home = home
        self.cwd = home / "work"
        self.cwd.mkdir(parents=True, exist_ok=True)
        self.env = {
            "HOME": str(home),
            "FILECASK_URL": server.base_url,
            "FILECASK_USER": user,
            "FILECASK_PASSWORD": password,
        }

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_filecask(list(args), cwd=self.cwd, env=env if env is not None else self.env)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = self(*args)
        assert done.returncode == 0, (done.returncode, done.stderr)
        return done

    def write(self, name: str, data: bytes) -> Path:
        path = self.cwd / name
        path.write_bytes(data)
        return path


@pytest.fixture
def cli(server: Server, tmp_path: Path) -> Cli:
    return Cli(server, tmp_path, *make_user(server))


def access_log_lines(server: Server, fragment: str) -> list[str]:
    """The server's access-log lines containing `fragment`, waiting briefly for the line
    of a request that has just been answered (it is logged after the response)."""
    deadline = time.monotonic() + LOG_TIMEOUT
    while True:
        lines = [line for line in server.stderr().splitlines() if fragment in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


# --------------------------------------------------------------------------- tests


def test_upload_two_files_then_ls_lists_them(cli: Cli) -> None:
    photo, notes = os.urandom(300 * KiB), b"first line\nsecond line\n"
    cli.write("photo.jpg", photo)
    cli.write("notes é.txt", notes)

    done = cli.ok("upload", "photo.jpg", "notes é.txt")

    assert done.stdout.splitlines() == [
        f"{sha256(photo)}  photo.jpg",
        f"{sha256(notes)}  notes é.txt",
    ]
    listed = cli.ok("ls").stdout.splitlines()
    assert len(listed) == 2
    columns = {line.split()[0]: line.split(None, 4) for line in listed}
    assert columns[sha256(photo)][1] == str(len(photo))
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", columns[sha256(photo)][2])
    assert listed[0].endswith("  notes é.txt")  # newest first
    assert listed[1].endswith("  photo.jpg")
    items = [json.loads(line) for line in cli.ok("ls", "--json").stdout.splitlines()]
    assert {(i["hash"], i["size"], i["name"]) for i in items} == {
        (sha256(photo), len(photo), "photo.jpg"),
        (sha256(notes), len(notes), "notes é.txt"),
    }
    again = cli.ok("upload", "--json", "photo.jpg")  # re-upload: already held, costs nothing
    assert json.loads(again.stdout)["hash"] == sha256(photo)


def test_download_is_byte_exact_to_a_path_and_to_stdout(cli: Cli) -> None:
    data = os.urandom(2 << 20)
    text = b"plain text for standard output\n"
    cli.write("big.bin", data)
    cli.write("small.txt", text)
    cli.ok("upload", "big.bin", "small.txt")

    cli.ok("download", sha256(data), "-o", "copy.bin")
    cli.ok("download", sha256(data))  # default: the hash, in the current directory
    out = cli.ok("download", sha256(text), "-o", "-")

    assert (cli.cwd / "copy.bin").read_bytes() == data
    assert (cli.cwd / sha256(data)).read_bytes() == data
    assert not (cli.cwd / "copy.bin.part").exists()
    assert out.stdout.encode() == text


def test_a_cut_download_resumes_where_it_stopped(cli: Cli) -> None:
    data = os.urandom(3 << 20)
    hex_hash = sha256(data)
    cli.write("src.bin", data)
    cli.ok("upload", "src.bin")
    have = 1_000_000
    (cli.cwd / "out.bin.part").write_bytes(data[:have])

    done = cli.ok("download", hex_hash, "-o", "out.bin")

    assert (cli.cwd / "out.bin").read_bytes() == data
    assert not (cli.cwd / "out.bin.part").exists()
    assert f"at {have} bytes" in done.stderr
    # The server sent a partial response: 206, and only the rest of the file (its
    # logged size also counts the response head, a few hundred bytes).
    [line] = access_log_lines(cli.server, f"GET /files/{hex_hash} ")
    logged = re.search(r'" (\d{3}) (\d+) ', line)
    assert logged is not None, line
    status, sent = logged.groups()
    assert status == "206"
    assert len(data) - have <= int(sent) < len(data) - have + 2 * KiB


def test_a_corrupted_part_is_caught_by_the_hash_and_removed(cli: Cli) -> None:
    data = os.urandom(1 << 20)
    hex_hash = sha256(data)
    cli.write("src.bin", data)
    cli.ok("upload", "src.bin")
    part = cli.cwd / "out.bin.part"
    part.write_bytes(bytes(b ^ 0xFF for b in data[:4096]))  # the right length, wrong bytes

    done = cli("download", hex_hash, "-o", "out.bin")

    assert done.returncode == 5, done.stderr
    assert "SHA-256" in done.stderr
    assert not part.exists()
    assert not (cli.cwd / "out.bin").exists()
    cli.ok("download", hex_hash, "-o", "out.bin")  # the next attempt starts afresh
    assert (cli.cwd / "out.bin").read_bytes() == data


def test_rm_then_download_is_not_found_exit_2(cli: Cli) -> None:
    data = os.urandom(10 * KiB)
    cli.write("gone.bin", data)
    cli.ok("upload", "gone.bin")

    assert cli.ok("rm", sha256(data)).stdout.strip() == f"removed {sha256(data)}"
    done = cli("download", sha256(data))

    assert done.returncode == 2, done.stderr
    assert "No file with this hash." in done.stderr  # the server's problem detail
    assert not (cli.cwd / sha256(data)).exists()
    assert cli("rm", sha256(data)).returncode == 2
    assert cli.ok("ls").stdout == ""


def test_wrong_password_is_exit_3(cli: Cli) -> None:
    env = {**cli.env, "FILECASK_PASSWORD": "not the password"}
    done = cli("ls", env=env)
    assert done.returncode == 3, done.stderr
    assert "401" in done.stderr
    assert "Wrong user name or password" in done.stderr


def test_no_credentials_and_no_terminal_is_exit_3_without_a_request(cli: Cli) -> None:
    env = {"HOME": str(cli.home), "FILECASK_URL": cli.server.base_url}
    done = cli("ls", env=env)
    assert done.returncode == 3
    assert "no terminal" in done.stderr
    assert "FILECASK_USER" in done.stderr


def test_upload_over_quota_is_exit_4_and_stores_nothing(server: Server, tmp_path: Path) -> None:
    cli = Cli(server, tmp_path, *make_user(server, quota=1 * KiB))
    cli.write("small.txt", b"fits")
    cli.write("big.bin", os.urandom(4 * KiB))

    done = cli("upload", "small.txt", "big.bin")

    assert done.returncode == 4, done.stderr
    assert "413" in done.stderr
    assert "quota" in done.stderr
    assert done.stdout.splitlines() == [f"{sha256(b'fits')}  small.txt"]  # what was done
    assert [line.split()[0] for line in cli.ok("ls").stdout.splitlines()] == [sha256(b"fits")]


def test_server_down_is_exit_5(cli: Cli) -> None:
    env = {**cli.env, "FILECASK_URL": f"http://{HOST}:{free_port()}"}
    for args in (["ls"], ["download", "0" * 64]):
        done = cli(*args, env=env)
        assert done.returncode == 5, (args, done.stderr)
        assert "cannot connect" in done.stderr
    assert not (cli.cwd / ("0" * 64)).exists()


def test_credentials_from_environment_and_from_netrc(server: Server, tmp_path: Path) -> None:
    name, password = make_user(server)
    cli = Cli(server, tmp_path, name, password)
    data = b"credentials test\n"
    cli.write("c.txt", data)
    cli.ok("upload", "c.txt")  # FILECASK_USER and FILECASK_PASSWORD
    netrc = tmp_path / ".netrc"
    netrc.write_text(f"machine {HOST}\n  login {name}\n  password {password}\n")
    netrc.chmod(0o600)
    only_url = {"HOME": str(tmp_path), "FILECASK_URL": server.base_url}

    done = cli("ls", env=only_url)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == sha256(data)
    # --user picks the user; netrc's password is for its own login only.
    other = cli("ls", "--user", "someone-else", env=only_url)
    assert other.returncode == 3
    assert "FILECASK_PASSWORD" in other.stderr
    netrc.chmod(0o644)  # a password file others can read is refused, not ignored
    loose = cli("ls", env=only_url)
    assert loose.returncode == 1
    assert "permissions" in loose.stderr


def test_archive_with_download_makes_a_zip_zipfile_reads(cli: Cli) -> None:
    first, second = os.urandom(200 * KiB), b"second file\n"
    cli.write("day1.jpg", first)
    cli.write("readme.txt", second)
    cli.ok("upload", "day1.jpg", "readme.txt")

    done = cli.ok(
        "archive",
        sha256(first),
        f"{sha256(second)}=docs/read me.txt",
        "--name",
        "trip.zip",
        "--download",
    )

    url = done.stdout.strip()
    assert re.fullmatch(rf"{re.escape(cli.server.base_url)}/archive/[0-9a-f]{{64}}/", url)
    with zipfile.ZipFile(cli.cwd / "trip.zip") as archive:
        assert archive.testzip() is None
        assert sorted(archive.namelist()) == ["day1.jpg", "docs/read me.txt"]
        assert archive.read("day1.jpg") == first
        assert archive.read("docs/read me.txt") == second
    assert not (cli.cwd / "trip.zip.part").exists()
    by_hash = cli.ok("archive", sha256(first), "--name", "h.zip", "--path-as", "hash", "--json")
    assert json.loads(by_hash.stdout)["name"] == "h.zip"


def test_rm_of_a_file_a_bundle_keeps_says_so(cli: Cli) -> None:
    """Issue 14: the content stays stored (and counted) while the user's bundle names it."""
    data = os.urandom(4 * KiB)
    cli.write("kept.bin", data)
    cli.ok("upload", "kept.bin")
    cli.ok("archive", sha256(data), "--name", "keeps.zip")
    removed = cli.ok("rm", sha256(data)).stdout.strip()
    assert removed == (
        f"removed {sha256(data)} (still kept, and counted, by your bundles 'keeps.zip')"
    )
