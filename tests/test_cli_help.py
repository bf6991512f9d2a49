"""`filecask --help` and every command's `--help` load nothing of the server, nor the HTTP
client: the group and the client commands start in a fraction of the time the server's
modules take to import (`scripts/help-time` prints the figures; a timing bound would be
flaky, so this checks the cause). Server commands import their modules when they run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from filecask.cli import main

SRC = Path(__file__).resolve().parents[1] / "src"

HEAVY = (
    "filecask.app",
    "filecask.services",
    "filecask.auth",
    "filecask.api",
    "filecask.http",
    "filecask.storage",
    "filecask.archives",
    "filecask.tus",
    "filecask.client.http",
    "aiohttp",
    "sqlalchemy",
    "alembic",
    "argon2",
    "prometheus_client",
)
"""What `--help` must not import: the server's packages and the libraries they bring
(aiohttp's web server, SQLAlchemy, argon2...), and the client's HTTP side."""

HARNESS = """
import contextlib, io, json, sys
args = json.loads(sys.argv[1])
if args is None:
    import filecask.app, filecask.client.http  # the control: what the server loads
else:
    from filecask.cli import main
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = main.main(args, prog_name="filecask", standalone_mode=False)
    assert code == 0 and "Usage: filecask" in out.getvalue(), (code, out.getvalue())
print(json.dumps(sorted(sys.modules)))
"""


def loaded_by(args: list[str] | None) -> set[str]:
    """The modules a fresh interpreter holds after `filecask ARGS` (None: after importing
    the server's app and the HTTP client)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return set(json.loads(done.stdout))


def holds(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(f"{package}.") for m in modules)


def heavy(modules: set[str]) -> list[str]:
    return [h for h in HEAVY if holds(modules, h)]


def help_commands() -> list[list[str]]:
    """`--help`, and every command and subcommand with `--help`."""

    def walk(group: click.Group, prefix: list[str]) -> list[list[str]]:
        found = [[*prefix, "--help"]]
        for name, command in sorted(group.commands.items()):
            if isinstance(command, click.Group):
                found += walk(command, [*prefix, name])
            else:
                found.append([*prefix, name, "--help"])
        return found

    return walk(main, [])


@pytest.mark.parametrize("args", help_commands(), ids=" ".join)
def test_help_loads_no_server_module(args: list[str]) -> None:
    assert heavy(loaded_by(args)) == []


def test_help_covers_the_client_and_the_server_commands() -> None:
    names = {" ".join(args[:-1]) for args in help_commands()}
    assert {"", "upload", "download", "rm", "ls", "archive"} <= names
    assert {"serve", "fsck", "gc", "migrate", "user", "user add"} <= names


def test_heavy_modules_are_what_the_server_loads() -> None:
    """The control: each name in HEAVY is really imported by the server, so the test above
    cannot pass because of a misspelt or renamed module."""
    loaded = loaded_by(None)
    assert [h for h in HEAVY if not holds(loaded, h)] == []
