"""The `filecask` command: `serve` and user administration. Thin: parse, build Settings,
delegate. Every `serve` flag comes from the settings table.

Server modules (the app, `http`, `storage`, aiohttp's web server, SQLAlchemy) are imported
inside the server commands, not here: `filecask --help` and the client commands
(`filecask.client.commands`) never load them, so they start in a fraction of the time
(`scripts/help-time` measures it, `tests/test_cli_imports.py` keeps it so)."""

from __future__ import annotations

import contextlib
import dataclasses
import gc as garbage_collector
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from filecask import __version__
from filecask.errors import FilecaskError, QuotaExceeded
from filecask.settings import (
    SETTINGS,
    SETTINGS_BY_NAME,
    Settings,
    SettingsError,
    load_settings,
    parse_duration,
)

if TYPE_CHECKING:
    import socket

    from filecask.services import Services
    from filecask.storage.fsck import Report
    from filecask.storage.mover import Advance

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def setting_options(*names: str) -> Callable[[F], F]:
    """Click options for the named settings, with help and env names from the table."""

    def decorate(func: F) -> F:
        for name in reversed(names):
            setting = SETTINGS_BY_NAME[name]
            func = click.option(
                setting.flag,
                name,
                default=None,
                metavar=setting.metavar,
                help=f"{setting.help} [env: {setting.env}]",
            )(func)
        return func

    return decorate


def build_settings(flags: dict[str, Any]) -> Settings:
    try:
        return load_settings(flags, environ=os.environ)
    except SettingsError as exc:
        raise click.UsageError(str(exc)) from exc


def run(coro_fn: Callable[[Services], Awaitable[T]], settings: Settings, *, reap: bool = True) -> T:
    """Open the stores, run one coroutine against them, close them; errors as messages."""
    from filecask.app import close_services, open_services

    async def main() -> T:
        services = await open_services(settings, reap=reap)
        try:
            return await coro_fn(services)
        finally:
            await close_services(services)

    return run_loop(main())


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to its end; the errors people can act on become one-line messages."""
    import uvloop

    from filecask.app import StartupError
    from filecask.storage.mover import MigrationError

    try:
        return uvloop.run(coro)
    except FilecaskError as exc:
        raise click.ClickException(exc.detail) from exc
    except (StartupError, MigrationError) as exc:
        raise click.ClickException(str(exc)) from exc
    except Exception as exc:  # startup problems: unreadable db, unwritable data dir
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="filecask")
def main() -> None:
    """filecask: a self-hosted, content-addressed HTTP file store."""


SECRET_HELP = "\n\n".join(
    f"{s.env} (environment or .env only): {s.help}" for s in SETTINGS if s.secret
)


@main.command(epilog=SECRET_HELP)
@setting_options(*(s.name for s in SETTINGS if not s.secret))
def serve(**flags: Any) -> None:
    """Run the HTTP server."""
    check_libraries()  # before importing what builds on the libraries' internals
    from filecask.http.metrics import use_multiprocess_dir
    from filecask.http.protocol import raise_open_file_limit
    from filecask.http.workers import Supervisor, bind_sockets, close_sockets
    from filecask.logs import announce, configure_logging

    settings = build_settings(flags)
    configure_logging(settings.log_format)
    raise_open_file_limit()  # every connection is a file descriptor (workers inherit it)
    run(_preflight, settings)
    if settings.workers == 1:
        _run_server(settings, None, print_banner=True)
        return
    try:
        sockets = bind_sockets(settings.host, settings.port, settings.workers)
    except OSError as exc:
        msg = f"cannot listen on {settings.host}:{settings.port}: {exc}"
        raise click.ClickException(msg) from exc
    try:
        address = sockets[0][0].getsockname()
        # Once the port is ours, so a second filecask refused above cannot wipe the files.
        use_multiprocess_dir(settings.data_dir / "metrics")
        announce(
            f"======== Running on http://{_host_port(address)} with {settings.workers} workers"
            " ========\n(Press CTRL+C to quit)"
        )
        status = Supervisor(sockets, lambda _, socks: _run_server(settings, socks)).run()
    finally:
        close_sockets(sockets)
    sys.exit(status)


def check_libraries() -> None:
    """Stop at once, with one line, if aiohttp or prometheus-client is not a version whose
    internals filecask knows (`filecask.http.libcheck`)."""
    from filecask.http.libcheck import UnsupportedLibrary

    try:
        from filecask.http import aiohttp_internals, prometheus_internals

        aiohttp_internals.check()
        prometheus_internals.check()
    except UnsupportedLibrary as exc:
        raise click.ClickException(str(exc)) from None


def _run_server(
    settings: Settings, sockets: list[socket.socket] | None, *, print_banner: bool = False
) -> None:
    """One server process: on its own address, or on sockets the master bound for it.

    An AppRunner rather than `web.run_app`, which cannot be given our protocol
    (`filecask.http.protocol`: header and send timeouts, problem+json protocol errors).
    SIGTERM and SIGINT stop it gracefully: listening stops, requests in flight get up to
    aiohttp's shutdown timeout to finish, then the app's cleanup closes the stores."""
    import asyncio

    import uvloop
    from aiohttp import web

    from filecask.app import create_app
    from filecask.http.accesslog import AccessLogger
    from filecask.http.protocol import make_runner
    from filecask.http.workers import BACKLOG
    from filecask.logs import announce

    async def serve() -> None:
        runner = make_runner(
            create_app(settings),
            settings,
            access_log=logging.getLogger("filecask.access") if settings.access_log else None,
            access_log_class=AccessLogger,
            # Stop a handler the moment its client goes away (streams, archives, uploads);
            # the commit sections that must finish are shielded.
            handler_cancellation=True,
        )
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        _freeze_heap()  # the modules, before the app starts (the lag gauge is not yet on)
        await runner.setup()
        _freeze_heap()  # what the app's startup added: a short walk, the rest is frozen
        try:
            sites: list[web.BaseSite]
            if sockets is None:
                sites = [web.TCPSite(runner, settings.host, settings.port, backlog=BACKLOG)]
            else:
                sites = [web.SockSite(runner, sock, backlog=BACKLOG) for sock in sockets]
            for site in sites:
                await site.start()
            if print_banner:
                names = ", ".join(sorted(site.name for site in sites))
                banner = f"======== Running on {names} ========\n(Press CTRL+C to quit)"
                announce(banner)
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await runner.cleanup()

    uvloop.run(serve())


def _freeze_heap() -> None:
    """Collect, then move every object left out of the garbage collector's sight.

    What is there once the server has started (modules, aiohttp's and SQLAlchemy's
    tables, about 100,000 objects) lives as long as the process; left in the oldest
    generation, it was walked by every full collection that some request's garbage
    triggered, holding the event loop for 100 ms and more (a couple of ms once frozen;
    issue 14 §3)."""
    garbage_collector.collect()
    garbage_collector.freeze()


def _host_port(address: tuple[Any, ...]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _preflight(services: Services) -> None:
    """Fail before binding, with a clear message, if the stores cannot be used."""
    await services.meta.ping()


@main.group()
def user() -> None:
    """Provision users (there is no self-registration)."""


@user.command("add")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@setting_options("data_dir", "database_url")
def user_add(name: str, admin: bool, password_stdin: bool, **flags: Any) -> None:
    """Create a user."""
    from filecask.auth import validate_user_name

    settings = build_settings(flags)
    name = _checked(validate_user_name, name)
    password = _read_password(password_stdin, confirm=True)

    async def add(services: Services) -> None:
        password_hash = await services.auth.hash_password_async(password)
        await services.meta.create_user(name, password_hash, is_admin=admin)

    run(add, settings)
    click.echo(f"created user {name!r}" + (" (administrator)" if admin else ""))


@user.command("list")
@setting_options("data_dir", "database_url")
def user_list(**flags: Any) -> None:
    """List users with their file count, bytes used and quota in bytes ('-': no limit)."""
    summaries = run(lambda s: s.meta.list_users(), build_settings(flags))
    click.echo(f"{'NAME':<24} {'ADMIN':<6} {'FILES':>8} {'BYTES':>16} {'QUOTA':>16}  CREATED")
    for s in summaries:
        admin = "yes" if s.is_admin else "no"
        quota = "-" if s.quota is None else str(s.quota)
        created = s.created_at.isoformat(timespec="seconds")
        click.echo(
            f"{s.name:<24} {admin:<6} {s.usage.files:>8} {s.usage.bytes:>16} {quota:>16}  {created}"
        )


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@setting_options("data_dir", "database_url")
def user_passwd(name: str, password_stdin: bool, **flags: Any) -> None:
    """Set a user's password; the old one stops working at once."""
    settings = build_settings(flags)
    password = _read_password(password_stdin, confirm=True)

    async def passwd(services: Services) -> None:
        await services.meta.set_password(name, await services.auth.hash_password_async(password))

    run(passwd, settings)
    click.echo(f"password of {name!r} changed")


NO_QUOTA = ("none", "unlimited")


@user.command("quota")
@click.argument("name")
@click.argument("size", metavar="SIZE")
@setting_options("data_dir", "database_url")
def user_quota(name: str, size: str, **flags: Any) -> None:
    """Limit the bytes NAME's files may take: SIZE is e.g. 10G or 512M (binary units), or
    'none' (or 'unlimited') for no limit. Takes effect at once, also in a running server;
    lowering it below what NAME stores deletes nothing, it refuses new uploads."""
    from filecask.storage.meta import parse_quota

    settings = build_settings(flags)
    quota = None if size.strip().lower() in NO_QUOTA else _checked(parse_quota, size)
    run(lambda s: s.meta.set_quota(name, quota), settings)
    if quota is None:
        click.echo(f"quota of {name!r} removed (no limit)")
    else:
        human = QuotaExceeded.human_size(quota)
        click.echo(f"quota of {name!r} set to {human} ({quota} bytes)")


@user.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@setting_options("data_dir", "database_url")
def user_remove(name: str, yes: bool, **flags: Any) -> None:
    """Remove a user and every reference they hold; files nobody else holds are deleted."""
    settings = build_settings(flags)
    if not yes:
        click.confirm(f"Remove {name!r} and all of their files?", abort=True)
    dropped = run(lambda s: s.files.remove_user(name), settings)
    click.echo(f"removed user {name!r} and {dropped} file reference(s)")


def _read_password(from_stdin: bool, *, confirm: bool) -> str:
    from filecask.auth import generate_password, validate_password

    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            "Password (empty to generate one)",
            hide_input=True,
            confirmation_prompt=confirm,
            default="",
            show_default=False,
        )
        if not password:
            password = generate_password()
            click.echo(f"generated password: {password}")
    return _checked(validate_password, password)


def _checked(validate: Callable[[str], T], value: str) -> T:
    try:
        return validate(value)
    except FilecaskError as exc:
        raise click.BadParameter(exc.detail) from exc


@main.command("fsck")
@click.option("--repair", is_flag=True, help="Fix what can be fixed; say what cannot.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@setting_options("data_dir", "database_url")
def fsck_command(repair: bool, as_json: bool, **flags: Any) -> None:
    """Check that the store and the database agree: re-hash every blob, find orphans,
    missing or corrupt blobs and dead uploads' leftovers. Safe while serving.
    Exit status: 0 consistent (after repairs), 1 problems remain."""
    from filecask.storage.fsck import fsck

    async def check(services: Services) -> Report:
        total = sum((await services.meta.blob_sizes()).values())
        bar = click.progressbar(length=total, label="re-hashing blobs", file=sys.stderr)
        with bar:
            return await fsck(services, repair=repair, progress=bar.update)

    report = run(check, build_settings(flags), reap=False)
    _print_report(report, as_json, verb="checked")
    if report.unresolved:
        if not repair and not as_json:
            click.echo("run `filecask fsck --repair` to fix what can be fixed", err=True)
        sys.exit(1)


@main.command("gc")
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="Only what has been unreferenced this long (e.g. 30m, 1h, 0).",
)
@click.option("--dry-run", is_flag=True, help="Report what would go; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@setting_options("data_dir", "database_url")
def gc_command(grace: str, dry_run: bool, as_json: bool, **flags: Any) -> None:
    """Remove blobs nothing references, and dead uploads' scratch files, older than the
    grace period; expired resumable uploads and the partial files of uploads that no
    longer exist (a removed user's) whatever their age. Safe while serving."""
    from filecask.storage.fsck import gc

    try:
        seconds = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from exc
    settings = build_settings(flags)
    report = run(lambda s: gc(s, grace=seconds, dry_run=dry_run), settings, reap=False)
    _print_report(report, as_json, verb="would remove" if dry_run else "removed")


S3_HELP = "\n\n".join(
    f"{s.env} (environment or .env only): {s.help}"
    for s in SETTINGS
    if s.secret and s.name.startswith("s3_")
)


@main.command("migrate", epilog=S3_HELP)
@click.option(
    "--from",
    "source_dir",
    required=True,
    metavar="DIR",
    type=click.Path(path_type=Path),
    help="The old data directory (its filecask.db and store/).",
)
@click.option(
    "--from-database-url",
    metavar="URL",
    default=None,
    help="The old metadata database, if it was not DIR/filecask.db.",
)
@setting_options("data_dir", "database_url", "storage", "s3_endpoint_url", "s3_region")
def migrate_command(source_dir: Path, from_database_url: str | None, **flags: Any) -> None:
    """Move an old installation (SQLite and blobs in a data directory) into the database
    and blob store this command is configured with, e.g. PostgreSQL and S3.

    \b
    1. stop the old server;
    2. FILECASK_DATABASE_URL=postgresql://user@db/filecask \\
       FILECASK_STORAGE=s3://bucket/prefix FILECASK_S3_ENDPOINT_URL=... \\
       filecask migrate --from /var/lib/filecask
    3. start the new instances with the same settings.

    Blobs are copied first, each re-hashed on the way (a damaged one stops the run, named),
    then every user, file, reference and bundle, with their ids, in one transaction. A run
    cut short can simply be run again: it skips the blobs already copied. The target must
    be empty; a bootstrap `admin` from a first start, holding nothing, is replaced by the
    source's users. Unfinished resumable uploads are not migrated. The source's files are only read.
    Exit status: 0 copied and verified, 1 refused, stopped or not verified."""
    from filecask.storage.mover import migrate, report_lines, source_settings

    target = build_settings(flags)
    source = source_settings(source_dir, from_database_url)
    summary = run_loop(migrate(source, target, progress=_progress_bar))
    for line in report_lines(summary):
        click.echo(line)
    if summary.problems:
        sys.exit(1)


@contextlib.contextmanager
def _progress_bar(total: int) -> Iterator[Advance]:
    with click.progressbar(length=total, label="copying blobs", file=sys.stderr) as bar:
        yield bar.update


def _print_report(report: Report, as_json: bool, *, verb: str) -> None:
    if as_json:
        body = {
            "blobs": report.blobs,
            "bytes": report.bytes,
            "consistent": not report.unresolved,
            "freed": report.freed,
            "findings": [dataclasses.asdict(f) for f in report.findings],
        }
        click.echo(json.dumps(body, indent=2))
        return
    for finding in report.findings:
        outcome = finding.action if finding.fixed or finding.kind in ("missing", "corrupt") else ""
        suffix = f"  [{outcome}]" if outcome else ""
        click.echo(f"{finding.kind:<13} {finding.key}  {finding.detail}{suffix}")
    if report.blobs:
        click.echo(f"{verb} {report.blobs} blob(s), {report.bytes} bytes")
    fixed = sum(f.fixed for f in report.findings)
    if fixed:
        click.echo(f"fixed {fixed} problem(s), {report.freed} bytes freed")
    if report.unresolved:
        click.echo(f"{len(report.unresolved)} problem(s) remain")
    else:
        click.echo("the store is consistent")


def _add_client_commands() -> None:
    """upload, download, rm, ls, archive: the HTTP client (`filecask.client.commands`)."""
    from filecask.client.commands import COMMANDS

    for command in COMMANDS:
        main.add_command(command)


_add_client_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
