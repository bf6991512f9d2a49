"""The `filecask` command: user administration against a data directory, and `serve`'s
flags and help, which come from the settings table."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import encode_basic_auth
from click.testing import CliRunner, Result

from filecask import __version__
from filecask.app import close_services, open_services
from filecask.cli import main
from filecask.errors import QuotaExceeded, Unauthorized
from filecask.settings import SETTINGS, SETTINGS_BY_NAME, Settings
from tests.conftest import CHEAP_ARGON2


class Cli:
    """Runs `filecask ...` in-process against one data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.settings = Settings(data_dir=data_dir, **CHEAP_ARGON2)
        self.runner = CliRunner()

    def __call__(self, *args: str, input: str | None = None) -> Result:
        return self.runner.invoke(main, [*args, "--data-dir", str(self.data_dir)], input=input)

    def ok(self, *args: str, input: str | None = None) -> Result:
        result = self(*args, input=input)
        assert result.exit_code == 0, (result.output, result.exception)
        return result

    def fails(self, *args: str, input: str | None = None, code: int = 1) -> Result:
        """A clean failure: an exit status and a message, not a traceback."""
        result = self(*args, input=input)
        assert result.exit_code == code, (result.output, result.exception)
        assert isinstance(result.exception, SystemExit), result.exception
        assert "Traceback" not in result.output
        return result

    def listing(self) -> dict[str, tuple[str, int, int]]:
        """`user list` as {name: (admin, files, bytes)}."""
        return {name: row[:3] for name, row in self.full_listing().items()}

    def quotas(self) -> dict[str, int | None]:
        """`user list`'s QUOTA column as {name: bytes, or None for no limit}."""
        return {name: row[3] for name, row in self.full_listing().items()}

    def full_listing(self) -> dict[str, tuple[str, int, int, int | None]]:
        """`user list` as {name: (admin, files, bytes, quota)}."""
        lines = self.ok("user", "list").output.splitlines()
        assert lines[0].split() == ["NAME", "ADMIN", "FILES", "BYTES", "QUOTA", "CREATED"]
        rows = {}
        for line in lines[1:]:
            name, admin, files, size, quota, _created = line.split()
            rows[name] = (admin, int(files), int(size), None if quota == "-" else int(quota))
        return rows

    def sign_in(self, name: str, password: str) -> bool:
        """Whether the stores accept these credentials (as the server would check them)."""

        async def check() -> bool:
            services = await open_services(self.settings)
            try:
                await services.auth.authenticate(encode_basic_auth(name, password), "cli-test")
            except Unauthorized:
                return False
            finally:
                await close_services(services)
            return True

        return asyncio.run(check())

    def upload(self, name: str, *contents: bytes) -> list[str]:
        """Store contents for user `name` through the file store; their hashes."""

        async def chunks(content: bytes) -> AsyncIterator[bytes]:
            yield content

        async def store() -> list[str]:
            services = await open_services(self.settings)
            try:
                user = await services.meta.get_user(name)
                assert user is not None
                hashes = []
                for i, content in enumerate(contents):
                    record, _ = await services.files.upload(
                        user, chunks(content), name=f"file{i}.bin", max_size=1 << 20
                    )
                    hashes.append(record.hash)
                return hashes
            finally:
                await close_services(services)

        return asyncio.run(store())

    def blob_path(self, h: str) -> Path:
        return self.settings.store_dir / h[:2] / h


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """No `.env` in the working directory and no FILECASK_* variables leak in."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for key in list(os.environ):
        if key.startswith("FILECASK_"):
            monkeypatch.delenv(key)
    # Real argon2id, at a cost that keeps the tests fast (set the way an operator would).
    for name, value in CHEAP_ARGON2.items():
        monkeypatch.setenv(SETTINGS_BY_NAME[name].env, str(value))
    return Cli(tmp_path / "data")


# --- user add -----------------------------------------------------------------------------


def test_user_add_with_password_from_stdin(cli: Cli) -> None:
    result = cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    assert "created user 'bob'" in result.output
    assert "secretpass" not in result.output
    assert cli.listing() == {"bob": ("no", 0, 0)}
    assert cli.sign_in("bob", "secretpass")
    assert not cli.sign_in("bob", "secretpass\n")


def test_user_add_admin(cli: Cli) -> None:
    result = cli.ok("user", "add", "root", "--admin", "--password-stdin", input="rootpass1\n")
    assert "administrator" in result.output
    assert cli.listing() == {"root": ("yes", 0, 0)}


def test_user_add_prompts_for_the_password(cli: Cli) -> None:
    result = cli.ok("user", "add", "bob", input="typed-password\ntyped-password\n")
    assert "typed-password" not in result.output  # hidden input
    assert cli.sign_in("bob", "typed-password")


def test_user_add_generates_a_password_when_none_is_typed(cli: Cli) -> None:
    result = cli.ok("user", "add", "bob", input="\n\n")
    generated = [line for line in result.output.splitlines() if "generated password:" in line]
    assert len(generated) == 1
    password = generated[0].split("generated password:", 1)[1].strip()
    assert len(password) >= 16
    assert cli.sign_in("bob", password)


def test_user_add_duplicate_fails_clearly(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.fails("user", "add", "bob", "--password-stdin", input="otherpass1\n")
    assert "already exists" in result.output
    assert "bob" in result.output
    assert cli.sign_in("bob", "secretpass")


def test_user_add_short_password_fails(cli: Cli) -> None:
    result = cli.fails("user", "add", "bob", "--password-stdin", input="short\n", code=2)
    assert "at least 8 characters" in result.output
    assert not (cli.data_dir / "filecask.db").exists() or cli.listing() == {}


@pytest.mark.parametrize("name", ["a b", "../x", "x" * 65, "a:b"])
def test_user_add_bad_name_fails(cli: Cli, name: str) -> None:
    result = cli.fails("user", "add", name, "--password-stdin", input="secretpass\n", code=2)
    assert "user name" in result.output


# --- user list ----------------------------------------------------------------------------


def test_user_list_shows_names_admin_and_usage(cli: Cli) -> None:
    cli.ok("user", "add", "root", "--admin", "--password-stdin", input="rootpass1\n")
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    cli.upload("bob", b"x" * 10, b"y" * 32)
    assert cli.listing() == {"bob": ("no", 2, 42), "root": ("yes", 0, 0)}


def test_user_list_of_a_new_store_is_empty(cli: Cli) -> None:
    assert cli.listing() == {}


# --- user passwd --------------------------------------------------------------------------


def test_user_passwd(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.ok("user", "passwd", "bob", "--password-stdin", input="newsecret1\n")
    assert "bob" in result.output
    assert cli.sign_in("bob", "newsecret1")
    assert not cli.sign_in("bob", "secretpass")


def test_user_passwd_unknown_user_fails(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.fails("user", "passwd", "ghost", "--password-stdin", input="newsecret1\n")
    assert "No user named 'ghost'" in result.output


def test_user_passwd_short_password_fails(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.fails("user", "passwd", "bob", "--password-stdin", input="1234567\n", code=2)
    assert "at least 8 characters" in result.output
    assert cli.sign_in("bob", "secretpass")


# --- user quota ---------------------------------------------------------------------------


def test_user_quota_sets_shows_and_clears(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    cli.ok("user", "add", "carol", "--password-stdin", input="carolpass1\n")
    assert cli.quotas() == {"bob": None, "carol": None}

    result = cli.ok("user", "quota", "bob", "10G")
    assert "quota of 'bob' set to 10.0 GiB (10737418240 bytes)" in result.output
    assert cli.quotas() == {"bob": 10 << 30, "carol": None}

    cli.ok("user", "quota", "carol", "1.5M")
    assert cli.quotas() == {"bob": 10 << 30, "carol": 3 << 19}

    for no_limit in ("none", "unlimited", "UNLIMITED"):
        cli.ok("user", "quota", "bob", "1K")
        result = cli.ok("user", "quota", "bob", no_limit)
        assert "quota of 'bob' removed" in result.output
        assert cli.quotas() == {"bob": None, "carol": 3 << 19}


def test_user_quota_unknown_user_fails(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.fails("user", "quota", "ghost", "10G")
    assert "No user named 'ghost'" in result.output
    assert cli.quotas() == {"bob": None}


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ("lots", "Invalid quota: not a size: 'lots'"),
        ("10X", "Invalid quota: not a size: '10X'"),
        ("", "Invalid quota: not a size: ''"),
        ("99999999999999999999T", "A quota is between 0 and"),
    ],
)
def test_user_quota_bad_size_fails(cli: Cli, size: str, message: str) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    cli.ok("user", "quota", "bob", "1M")
    result = cli.fails("user", "quota", "bob", size, code=2)
    assert message in " ".join(result.output.split())
    assert cli.quotas() == {"bob": 1 << 20}


def test_user_quota_refuses_uploads_past_it(cli: Cli) -> None:
    """The quota set from the CLI binds the file store (and so a running server)."""
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    cli.ok("user", "quota", "bob", "40")
    cli.upload("bob", b"a" * 30)
    with pytest.raises(QuotaExceeded):
        cli.upload("bob", b"b" * 11)
    cli.upload("bob", b"c" * 10)  # exactly at the quota
    cli.upload("bob", b"a" * 30)  # held already: costs nothing
    assert cli.full_listing() == {"bob": ("no", 2, 40, 40)}
    cli.ok("user", "quota", "bob", "none")
    cli.upload("bob", b"b" * 11)
    assert cli.full_listing() == {"bob": ("no", 3, 51, None)}


# --- user remove --------------------------------------------------------------------------


def test_user_remove_with_yes(cli: Cli) -> None:
    cli.ok("user", "add", "root", "--admin", "--password-stdin", input="rootpass1\n")
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.ok("user", "remove", "bob", "--yes")
    assert "removed user 'bob'" in result.output
    assert cli.listing() == {"root": ("yes", 0, 0)}


def test_user_remove_asks_and_no_aborts(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    result = cli.fails("user", "remove", "bob", input="n\n")
    assert "Remove 'bob'" in result.output
    assert "Aborted" in result.output
    assert cli.listing() == {"bob": ("no", 0, 0)}
    cli.ok("user", "remove", "bob", input="y\n")
    assert cli.listing() == {}


def test_user_remove_unknown_user_fails(cli: Cli) -> None:
    result = cli.fails("user", "remove", "ghost", "--yes")
    assert "No user named 'ghost'" in result.output


def test_user_remove_last_admin_fails(cli: Cli) -> None:
    cli.ok("user", "add", "root", "--admin", "--password-stdin", input="rootpass1\n")
    result = cli.fails("user", "remove", "root", "--yes")
    assert "last administrator" in result.output
    assert cli.listing() == {"root": ("yes", 0, 0)}


def test_user_remove_deletes_files_nobody_else_holds(cli: Cli) -> None:
    cli.ok("user", "add", "bob", "--password-stdin", input="secretpass\n")
    cli.ok("user", "add", "carol", "--password-stdin", input="carolpass1\n")
    only_bob, shared = cli.upload("bob", b"only bob", b"shared by both")
    (carols,) = cli.upload("carol", b"shared by both")
    assert carols == shared
    assert cli.blob_path(only_bob).is_file()
    assert cli.blob_path(shared).is_file()

    result = cli.ok("user", "remove", "bob", "--yes")
    assert "2 file reference(s)" in result.output

    assert not cli.blob_path(only_bob).exists()
    assert cli.blob_path(shared).read_bytes() == b"shared by both"
    assert cli.listing() == {"carol": ("no", 1, len(b"shared by both"))}
    assert not cli.sign_in("bob", "secretpass")


# --- settings for the CLI -----------------------------------------------------------------


def test_data_dir_from_the_environment_file(cli: Cli) -> None:
    elsewhere = cli.data_dir.parent / "from-dotenv"
    Path(".env").write_text(f"FILECASK_DATA_DIR={elsewhere}\n")
    result = cli.runner.invoke(
        main, ["user", "add", "bob", "--password-stdin"], input="secretpass\n"
    )
    assert result.exit_code == 0, result.output
    assert (elsewhere / "filecask.db").is_file()
    assert not (cli.data_dir / "filecask.db").exists()


def test_unusable_data_dir_fails_clearly(cli: Cli, tmp_path: Path) -> None:
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("in the way")
    result = cli.runner.invoke(
        main,
        ["user", "add", "bob", "--password-stdin", "--data-dir", str(not_a_dir)],
        input="secretpass\n",
    )
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Error" in result.output


def serve_help(cli: Cli) -> tuple[str, str]:
    """`serve --help` as printed, and with whitespace runs (line wrapping) collapsed."""
    result = cli.runner.invoke(main, ["serve", "--help"])
    assert result.exit_code == 0, result.output
    return result.output, " ".join(result.output.split())


def test_serve_help_lists_every_flag_with_its_env_name(cli: Cli) -> None:
    output, flat = serve_help(cli)
    for setting in SETTINGS:
        if setting.secret:
            continue
        assert f"{setting.flag} {setting.metavar}" in flat, setting.name
        assert " ".join(setting.help.split()) in flat, setting.name
        assert setting.env in output, setting.name


def test_secret_settings_have_no_flag(cli: Cli) -> None:
    output, _ = serve_help(cli)
    for setting in SETTINGS:
        if setting.secret:
            # The whole flag: `--metrics-token-file` (not secret) is not `--metrics-token`.
            assert re.search(re.escape(setting.flag) + r"(?![\w-])", output) is None
            result = cli.runner.invoke(main, ["serve", setting.flag, "x"])
            assert result.exit_code == 2
            assert "No such option" in result.output


def test_serve_help_names_every_environment_variable(cli: Cli) -> None:
    """Environment-only settings too: --help is where an operator looks for them."""
    output, _ = serve_help(cli)
    missing = [s.env for s in SETTINGS if s.env not in output]
    assert missing == []


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["--max-upload-size", "lots"], {}, "--max-upload-size"),
        (["--port", "99999"], {}, "--port"),
        ([], {"FILECASK_PORT": "http"}, "FILECASK_PORT"),
        ([], {"FILECASK_ACCESS_LOG": "maybe"}, "FILECASK_ACCESS_LOG"),
        (["--argon2-time-cost", "0"], {}, "--argon2-time-cost"),
        ([], {"FILECASK_ARGON2_PARALLELISM": "0"}, "FILECASK_ARGON2_PARALLELISM"),
    ],
)
def test_serve_rejects_bad_settings_before_starting(
    cli: Cli, args: list[str], env: dict[str, str], named: str
) -> None:
    result = cli.runner.invoke(main, ["serve", "--data-dir", str(cli.data_dir), *args], env=env)
    exit_code, output = result.exit_code, result.output
    # Should anything have been opened and leaked, have it reported here rather than in
    # whichever later test happens to run the garbage collector (the result's traceback
    # would keep it alive).
    del result
    gc.collect()
    assert exit_code == 2, output
    assert named in output
    assert not cli.data_dir.exists()  # nothing was opened, let alone served


def test_version(cli: Cli) -> None:
    result = cli.runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_serve_failing_on_its_database_prints_one_line(tmp_path: Path) -> None:
    """In a fresh process (alembic not yet imported): the store, opened once logging is
    configured, imports alembic, whose plugin set-up lines must not come before the error."""
    result = subprocess.run(
        [sys.executable, "-m", "filecask", "serve", "--data-dir", str(tmp_path)],
        env={**os.environ, "FILECASK_DATABASE_URL": "nope://"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    error = "Error: NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:nope\n"
    assert result.stderr == error
