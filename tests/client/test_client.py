"""The command-line client's pure parts: where the URL and credentials come from, what
each failure's exit code is, and how bundle paths are made unique. The HTTP side is
driven against a real server in tests/e2e/test_client_e2e.py."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from filecask.cli import main
from filecask.client.commands import bundle_paths
from filecask.client.contract import (
    CLIENT_ENV,
    DEFAULT_URL,
    PASSWORD_ENV,
    URL_ENV,
    USER_ENV,
    ExitCode,
)
from filecask.client.http import (
    ClientError,
    Credentials,
    NetrcEntry,
    checked_hash,
    exit_code_for_status,
    netrc_entry,
    network_error,
    problem_message,
    resolve_credentials,
    resolve_url,
)
from filecask.settings import SETTINGS

HOST = "files.example"
URL = f"https://{HOST}"


class Asked:
    """A prompt that answers from a script and records what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.questions: list[tuple[str, bool]] = []

    def __call__(self, label: str, hide: bool) -> str:
        self.questions.append((label, hide))
        return self.answers.pop(0)


def write_netrc(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, ExitCode.NOT_FOUND),
        (401, ExitCode.AUTH),
        (403, ExitCode.AUTH),
        (400, ExitCode.REFUSED),
        (409, ExitCode.REFUSED),
        (413, ExitCode.REFUSED),
        (416, ExitCode.REFUSED),
        (429, ExitCode.REFUSED),
        (500, ExitCode.SERVER),
        (503, ExitCode.SERVER),
        (507, ExitCode.SERVER),
        (302, ExitCode.SERVER),
    ],
)
def test_exit_code_for_status(status: int, code: ExitCode) -> None:
    assert exit_code_for_status(status) == code


def test_exit_codes_are_the_documented_numbers() -> None:
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5]


def test_problem_message_shows_the_detail_then_the_title_then_the_status() -> None:
    body = b'{"type": "x", "title": "Quota exceeded", "status": 413, "detail": "Over by 3 KiB."}'
    message, problem = problem_message(413, "Request Entity Too Large", body)
    assert message == "HTTP 413 Request Entity Too Large: Over by 3 KiB."
    assert problem["status"] == 413
    assert problem_message(409, None, b'{"title": "Conflict"}')[0] == "HTTP 409: Conflict"
    assert problem_message(502, "Bad Gateway", b"<html>nginx</html>") == (
        "HTTP 502 Bad Gateway",
        {},
    )
    assert problem_message(500, None, b"[1, 2]") == ("HTTP 500", {})


def test_network_errors_are_exit_5() -> None:
    assert network_error(TimeoutError(), URL).code == ExitCode.SERVER
    cut = network_error(aiohttp.ClientPayloadError("Response payload is not completed"), URL)
    assert cut.code == ExitCode.SERVER
    assert "cut" in cut.message


def test_checked_hash_lowercases_and_refuses_non_hashes() -> None:
    assert checked_hash("AB" * 32) == "ab" * 32
    with pytest.raises(ClientError) as caught:
        checked_hash("photo.jpg")
    assert caught.value.code == ExitCode.LOCAL


def test_usage_errors_exit_1_not_clicks_2_which_means_not_found() -> None:
    runner = CliRunner()
    assert runner.invoke(main, ["rm"]).exit_code == 1
    assert runner.invoke(main, ["download", "--no-such-flag", "x"]).exit_code == 1
    result = runner.invoke(main, ["download", "not-a-hash"], env={URL_ENV: URL})
    assert result.exit_code == 1
    assert "not a file hash" in result.output


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(main, ["upload", "--help"])
    assert result.exit_code == 0
    for line in ("0  success", "2  not found", "3  authentication", "5  server or network"):
        assert line in result.output


# --------------------------------------------------------------------------- the URL


def test_url_from_flag_then_environment_then_default() -> None:
    env = {URL_ENV: "http://env.example:9000/"}
    assert resolve_url("https://flag.example/", env) == "https://flag.example"
    assert resolve_url(None, env) == "http://env.example:9000"
    assert resolve_url(None, {}) == DEFAULT_URL
    assert resolve_url(None, {URL_ENV: ""}) == DEFAULT_URL
    assert resolve_url("https://host/cask/", {}) == "https://host/cask"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://host",
        "127.0.0.1:8080",
        "http://",
        "http://a:b@host",
        "http://host/?x=1",
        "http://[::1",
        "http://[zz]/",
    ],
)
def test_unusable_urls_are_local_errors(url: str) -> None:
    with pytest.raises(ClientError) as caught:
        resolve_url(url, {})
    assert caught.value.code == ExitCode.LOCAL


def test_client_variables_collide_with_no_server_setting() -> None:
    """FILECASK_ is also the server's prefix: the client's names must stay unclaimed."""
    server_names = {name for s in SETTINGS for name in (s.env, *s.aliases)}
    assert not server_names & set(CLIENT_ENV)


# --------------------------------------------------------------------------- netrc


def test_netrc_entry_for_the_host_else_default(tmp_path: Path) -> None:
    path = write_netrc(
        tmp_path / "netrc",
        f"machine {HOST} login ann password ann-secret\ndefault login anon password anon-pw\n",
    )
    assert netrc_entry(HOST, path) == NetrcEntry("ann", "ann-secret")
    assert netrc_entry("other.example", path) == NetrcEntry("anon", "anon-pw")
    assert netrc_entry(HOST, tmp_path / "missing") is None


def test_default_netrc_is_read_from_home_and_must_be_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert netrc_entry(HOST) is None  # no ~/.netrc at all
    path = write_netrc(tmp_path / ".netrc", f"machine {HOST} login ann password pw\n", 0o644)
    with pytest.raises(ClientError) as caught:
        netrc_entry(HOST)
    assert caught.value.code == ExitCode.LOCAL
    assert "permissions" in caught.value.message
    path.chmod(0o600)
    assert netrc_entry(HOST) == NetrcEntry("ann", "pw")


def test_malformed_netrc_is_a_local_error_naming_the_line(tmp_path: Path) -> None:
    path = write_netrc(tmp_path / "netrc", f"machine {HOST} login ann\nfrobnicate\n")
    with pytest.raises(ClientError) as caught:
        netrc_entry(HOST, path)
    assert caught.value.code == ExitCode.LOCAL
    assert str(path) in caught.value.message


# --------------------------------------------------------------------------- credentials


def test_credentials_from_the_environment_do_not_read_netrc(tmp_path: Path) -> None:
    broken = write_netrc(tmp_path / "netrc", "machine\n")
    env = {USER_ENV: "ann", PASSWORD_ENV: "env-pw"}
    got = resolve_credentials(URL, None, env, prompt=None, netrc_path=broken)
    assert got == Credentials("ann", "env-pw")
    flag = resolve_credentials(URL, "bob", env, prompt=None, netrc_path=broken)
    assert flag == Credentials("bob", "env-pw")


def test_credentials_from_netrc(tmp_path: Path) -> None:
    path = write_netrc(tmp_path / "netrc", f"machine {HOST} login ann password netrc-pw\n")
    assert resolve_credentials(URL, None, {}, prompt=None, netrc_path=path) == Credentials(
        "ann", "netrc-pw"
    )
    # The environment's password wins over netrc's; the netrc login still names the user.
    got = resolve_credentials(URL, None, {PASSWORD_ENV: "env-pw"}, prompt=None, netrc_path=path)
    assert got == Credentials("ann", "env-pw")


def test_a_netrc_password_is_only_used_for_its_own_login(tmp_path: Path) -> None:
    path = write_netrc(tmp_path / "netrc", f"machine {HOST} login ann password ann-pw\n")
    asked = Asked("bob-pw")
    got = resolve_credentials(URL, "bob", {}, prompt=asked, netrc_path=path)
    assert got == Credentials("bob", "bob-pw")
    assert asked.questions == [("Password for bob", True)]
    with pytest.raises(ClientError) as caught:
        resolve_credentials(URL, "bob", {}, prompt=None, netrc_path=path)
    assert caught.value.code == ExitCode.AUTH


def test_missing_credentials_are_asked_for_with_the_password_hidden(tmp_path: Path) -> None:
    asked = Asked("carol", "carol-pw")
    got = resolve_credentials(URL, None, {}, prompt=asked, netrc_path=tmp_path / "none")
    assert got == Credentials("carol", "carol-pw")
    assert asked.questions == [("User", False), ("Password for carol", True)]


def test_without_a_terminal_missing_credentials_are_exit_3_saying_how(tmp_path: Path) -> None:
    with pytest.raises(ClientError) as caught:
        resolve_credentials(URL, None, {}, prompt=None, netrc_path=tmp_path / "none")
    assert caught.value.code == ExitCode.AUTH
    assert USER_ENV in caught.value.message
    assert ".netrc" in caught.value.message
    with pytest.raises(ClientError) as caught:
        resolve_credentials(URL, "ann", {}, prompt=None, netrc_path=tmp_path / "none")
    assert PASSWORD_ENV in caught.value.message


def test_credentials_never_show_the_password() -> None:
    assert "s3cret" not in repr(Credentials("ann", "s3cret"))
    assert "s3cret" not in repr(NetrcEntry("ann", "s3cret"))


def test_environment_is_read_only_from_what_is_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(USER_ENV, "from-os")
    monkeypatch.setenv(PASSWORD_ENV, "from-os")
    got = resolve_credentials(URL, None, {USER_ENV: "a", PASSWORD_ENV: "b"}, prompt=None)
    assert got == Credentials("a", "b")
    assert os.environ[USER_ENV] == "from-os"


# --------------------------------------------------------------------------- bundles


def test_bundle_paths_are_made_unique_in_argument_order() -> None:
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    entries = [(a, "x.jpg"), (b, "x.jpg"), (c, "x.jpg"), (d, "README")]
    assert bundle_paths(entries) == [
        (a, "x.jpg"),
        (b, "x (2).jpg"),
        (c, "x (3).jpg"),
        (d, "README"),
    ]
    assert bundle_paths([(a, ".env"), (b, ".env")]) == [(a, ".env"), (b, ".env (2)")]


def test_bundle_paths_are_safe_and_unique_ignoring_case() -> None:
    """The server refuses paths harmful on Windows or macOS and entries equal but for case
    or Unicode form: the client names entries so that the bundle is accepted."""
    a, b, c, d = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
    entries = [(a, "Readme.txt"), (b, "README.TXT"), (c, "what?.txt"), (d, "CON.txt")]
    assert bundle_paths(entries) == [
        (a, "Readme.txt"),
        (b, "README (2).TXT"),
        (c, "what_.txt"),
        (d, "_CON.txt"),
    ]


@pytest.mark.parametrize("command", [["ls"], ["rm", "0" * 64], ["upload", __file__]])
def test_a_user_name_with_a_colon_is_a_local_error_in_one_line(command: list[str]) -> None:
    """HTTP Basic cannot carry it (RFC 7617): said before any request, not a traceback."""
    env = {URL_ENV: "http://127.0.0.1:9", USER_ENV: "ann:x", PASSWORD_ENV: "secret-pw"}
    result = CliRunner().invoke(main, command, env=env)
    assert result.exit_code == ExitCode.LOCAL, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.output.count("\n") == 1, result.output
    assert "ann:x" in result.output
