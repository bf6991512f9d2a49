"""The client commands of `filecask`: upload, download, rm, ls, archive.

They talk to a running server over HTTP (`filecask.client.http`), unlike `filecask user …`,
which works on a data directory. Registered into the `filecask` group by `filecask.cli`.

Output is for scripts: results on stdout (one line per file, or JSON Lines with
`--json`), everything else (progress bars, "resuming at …", errors) on stderr, and the exit
codes of `ExitCode`. Progress bars appear only when stderr is a terminal. A command that
handles several files stops at the first failure; the lines already printed are the files
that were done.

The HTTP side (`filecask.client.http`, and with it aiohttp and uvloop) is imported when a
command runs, not when the commands are defined: `--help` loads none of it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from filecask.client.contract import DEFAULT_URL, PASSWORD_ENV, URL_ENV, USER_ENV, ExitCode
from filecask.names import safe_entry_names

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

    from filecask.client.http import Advance, ClientError, Credentials, Prompt

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

EPILOG = f"""\b
Server and credentials:
  URL       --url, else {URL_ENV}, else {DEFAULT_URL}
  user      --user, else {USER_ENV}, else the login in ~/.netrc for the host, else asked
  password  {PASSWORD_ENV}, else ~/.netrc, else asked (hidden; only on a terminal)
  There is no password flag: command lines are visible to everyone (ps).

\b
Exit status:
  0  success
  1  usage or local error (bad argument, unreadable file, unusable ~/.netrc)
  2  not found (404)
  3  authentication or permission (401/403, or no credentials and no terminal)
  4  refused by the server (other 4xx: bad request, conflict, 413 too large or over
     quota, 416)
  5  server or network error (5xx, connection refused, timeout, a cut transfer, a
     download whose bytes do not match its hash)
"""


class ClientCommand(click.Command):
    """A command whose usage errors exit 1, not click's 2: 2 means "not found" here."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            _exit_local(exc)
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _exit_local(exc)
            raise


def _exit_local(exc: click.UsageError) -> None:
    # An attribute of the instance, so click's own message formatting (BadParameter's
    # hint, "Missing argument") stays as it is; the stubs type it as a class variable.
    setattr(exc, "exit_code", int(ExitCode.LOCAL))  # noqa: B010


def client_command(name: str) -> Callable[[F], click.Command]:
    return click.command(name, cls=ClientCommand, epilog=EPILOG)


url_option = click.option(
    "--url",
    metavar="URL",
    default=None,
    help=f"The server. [env: {URL_ENV}; default: {DEFAULT_URL}]",
)
user_option = click.option(
    "--user",
    "-u",
    metavar="NAME",
    default=None,
    help=f"Sign in as NAME. [env: {USER_ENV}; else ~/.netrc; else asked]",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per line (JSON Lines)."
)


# --------------------------------------------------------------------------- plumbing


def _fail(error: ClientError) -> NoReturn:
    click.echo(f"filecask: {error.message}", err=True)
    sys.exit(error.code)


def _run(make: Callable[[], Awaitable[T]], url: str) -> T:
    """Run one command's coroutine; every failure becomes a message and its exit code."""
    import aiohttp
    import uvloop

    from filecask.client.http import ClientError, network_error

    async def main() -> T:
        return await make()

    try:
        return uvloop.run(main())
    except ClientError as exc:
        _fail(exc)
    except (aiohttp.ClientError, TimeoutError) as exc:
        _fail(network_error(exc, url))
    except OSError as exc:  # local files: unreadable, unwritable, disk full
        _fail(ClientError(f"{exc.filename or ''}: {exc.strerror or exc}", ExitCode.LOCAL))


def _url(flag: str | None) -> str:
    from filecask.client.http import ClientError, resolve_url

    try:
        return resolve_url(flag, os.environ)
    except ClientError as exc:
        _fail(exc)


def _credentials(url: str, user: str | None) -> Credentials:
    """Resolve credentials before any request, asking only on a terminal (both stdin, to
    type, and stderr, where the question goes, since stdout may be piped)."""
    from filecask.client.http import ClientError, resolve_credentials

    prompt: Prompt | None = None
    if sys.stdin.isatty() and sys.stderr.isatty():
        prompt = _prompt
    try:
        return resolve_credentials(url, user, os.environ, prompt=prompt)
    except ClientError as exc:
        _fail(exc)


def _prompt(label: str, hide: bool) -> str:
    answer: str = click.prompt(label, hide_input=hide, err=True, default="", show_default=False)
    return answer


def _progress_factory() -> Callable[[str, int | None], AbstractContextManager[Advance]]:
    """Progress bars on stderr when it is a terminal; nothing at all otherwise (click's
    hidden bar would still print its label, which is noise in a log)."""
    from filecask.client.http import no_progress

    if not sys.stderr.isatty():
        return no_progress

    @contextmanager
    def bar(label: str, total: int | None) -> Iterator[Advance]:
        progress: ProgressBar[int] = click.progressbar(
            length=total, label=label, file=sys.stderr, show_pos=total is None
        )
        with progress:
            yield progress.update

    return bar


def _checked_hashes(values: tuple[str, ...]) -> list[str]:
    from filecask.client.http import ClientError, checked_hash

    try:
        return [checked_hash(value) for value in values]
    except ClientError as exc:
        _fail(exc)


def _print_json(item: dict[str, Any]) -> None:
    click.echo(json.dumps(item, ensure_ascii=False, separators=(",", ":")))


# --------------------------------------------------------------------------- commands


@client_command("upload")
@click.argument(
    "files",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
)
@url_option
@user_option
@json_option
def upload(files: tuple[Path, ...], url: str | None, user: str | None, as_json: bool) -> None:
    """Upload FILE... and print `HASH  NAME` for each.

    Each file is hashed locally, then streamed as `PUT /files/HASH?name=NAME` (NAME: its
    base name); the server checks the bytes against the hash, so what is stored is
    verified end to end. Uploading content you already hold costs nothing."""
    from filecask.client.http import Client

    base = _url(url)
    credentials = _credentials(base, user)

    async def go() -> None:
        async with Client(base, credentials, progress=_progress_factory()) as client:
            for path in files:
                body = await client.upload(path)
                if as_json:
                    _print_json(body)
                else:
                    click.echo(f"{body['hash']}  {body.get('name') or path.name}")

    _run(go, base)


@client_command("download")
@click.argument("hash_", metavar="HASH")
@click.option(
    "-o",
    "--output",
    metavar="PATH",
    default=None,
    help="Where to save it ('-': standard output; a directory: HASH inside it). "
    "Default: HASH in the current directory.",
)
@url_option
def download(hash_: str, output: str | None, url: str | None) -> None:
    """Download the file HASH (no sign-in needed), verifying its SHA-256.

    It is written to PATH.part and renamed to PATH only once its hash is right. If
    PATH.part exists (a cut download), only the rest is fetched (Range, If-Range). A
    mismatch removes PATH.part and exits 5."""
    from filecask.client.http import Client, part_path

    base = _url(url)
    [hex_hash] = _checked_hashes((hash_,))
    target: Path | None = None
    if output != "-":
        target = Path(output) if output is not None else Path(hex_hash)
        if target.is_dir():
            target = target / hex_hash
    progress = _progress_factory()

    async def go() -> None:
        async with Client(base, progress=progress) as client:
            if target is None:
                await client.download_to_stream(hex_hash, sys.stdout.buffer)
                return
            part = part_path(target)
            if part.exists():
                click.echo(f"resuming {part} at {part.stat().st_size} bytes", err=True)
            result = await client.download(hex_hash, target)
            click.echo(f"{hex_hash}  {target}  {result.size} bytes", err=True)

    _run(go, base)


@client_command("rm")
@click.argument("hashes", metavar="HASH...", nargs=-1, required=True)
@url_option
@user_option
def rm(hashes: tuple[str, ...], url: str | None, user: str | None) -> None:
    """Delete your reference to each HASH (the bytes go when nobody holds them)."""
    from filecask.client.http import Client

    base = _url(url)
    hex_hashes = _checked_hashes(hashes)
    credentials = _credentials(base, user)

    async def go() -> None:
        async with Client(base, credentials) as client:
            for hex_hash in hex_hashes:
                held = await client.delete(hex_hash)
                if held:
                    names = ", ".join(repr(b.get("name")) for b in held)
                    click.echo(
                        f"removed {hex_hash} (still kept, and counted, by your bundles {names})"
                    )
                else:
                    click.echo(f"removed {hex_hash}")

    _run(go, base)


@client_command("ls")
@url_option
@user_option
@json_option
def ls(url: str | None, user: str | None, as_json: bool) -> None:
    """List your files, newest first: HASH SIZE DATE NAME (every page)."""
    from filecask.client.http import Client

    base = _url(url)
    credentials = _credentials(base, user)

    async def go() -> None:
        async with Client(base, credentials) as client:
            async for item in client.list_files():
                if as_json:
                    _print_json(item)
                    continue
                date = str(item.get("uploaded_at", ""))[:19].replace("T", " ")
                name = item.get("name") or "-"
                click.echo(f"{item['hash']}  {item['size']:>14}  {date}  {name}")

    _run(go, base)


@client_command("archive")
@click.argument("specs", metavar="HASH[=PATH]...", nargs=-1, required=True)
@click.option("--name", "zip_name", required=True, metavar="NAME.zip", help="The ZIP's name.")
@click.option(
    "--path-as",
    type=click.Choice(["name", "hash"]),
    default="name",
    show_default=True,
    help="Each file's path in the ZIP: its name as you uploaded it (the hash if it has "
    "none), or its hash. HASH=PATH sets one explicitly.",
)
@click.option("--download", "fetch", is_flag=True, help="Also download the ZIP to NAME.zip here.")
@url_option
@user_option
@json_option
def archive(
    specs: tuple[str, ...],
    zip_name: str,
    path_as: str,
    fetch: bool,
    url: str | None,
    user: str | None,
    as_json: bool,
) -> None:
    """Save a bundle of stored files as a ZIP and print its URL (anyone with it may
    download). Names repeated in the bundle get ` (2)`, ` (3)` … before the extension."""
    from filecask.client.http import Client

    base = _url(url)
    wanted: list[tuple[str, str | None]] = []
    for spec in specs:
        raw, sep, explicit = spec.partition("=")
        [hex_hash] = _checked_hashes((raw,))
        wanted.append((hex_hash, explicit if sep else None))
    credentials = _credentials(base, user)
    progress = _progress_factory()

    async def go() -> None:
        async with Client(base, credentials, progress=progress) as client:
            names: dict[str, str] = {}
            if path_as == "name" and any(path is None for _, path in wanted):
                async for item in client.list_files():
                    if item.get("name"):
                        names.setdefault(item["hash"], item["name"])
            entries = bundle_paths(
                [(h, p if p is not None else names.get(h, h)) for h, p in wanted]
            )
            body = await client.create_archive(zip_name, entries)
            if as_json:
                _print_json(body)
            else:
                click.echo(body["url"])
            if fetch:
                size = await client.download_archive(body["id"], Path(zip_name))
                click.echo(f"{body['id']}  {zip_name}  {size} bytes", err=True)

    _run(go, base)


def bundle_paths(entries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Paths the server accepts, in argument order: the second `a.jpg` (or `A.JPG`: the
    server compares paths ignoring case and Unicode forms, as Windows and macOS do) becomes
    `a (2).jpg`, and a name that is not a safe path (`what?.txt`, `CON.txt`, `a:b`) gets the
    server's own safe form (`what_.txt`, `_CON.txt`, `a_b`; see `names.safe_entry_names`)."""
    paths = safe_entry_names([(path, False) for _, path in entries])
    return [(hex_hash, path or "_") for (hex_hash, _), path in zip(entries, paths, strict=True)]


COMMANDS: tuple[click.Command, ...] = (upload, download, rm, ls, archive)
"""What `filecask.cli` adds to the `filecask` group."""
