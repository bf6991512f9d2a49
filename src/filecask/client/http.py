"""The HTTP side of the `filecask` command-line client: configuration, credentials, errors
(with the exit codes of `filecask.client.contract`), and an aiohttp session that streams
uploads from disk and downloads to disk.

Nothing here touches click or the terminal: the commands (`filecask.client.commands`) hand in a
`Prompt` (or None when there is no terminal to ask on) and a `ProgressFactory`, so the
same code runs in scripts, in tests and interactively.

Environment variables. The client reads `FILECASK_URL`, `FILECASK_USER` and
`FILECASK_PASSWORD`. `FILECASK_` is also the prefix of the server's settings
(`filecask.settings.SETTINGS`), but none of those is named `url`, `user` or `password`
(the nearest, `public_url` and `admin_password`, are `FILECASK_PUBLIC_URL` and
`FILECASK_ADMIN_PASSWORD`), so one shell can configure both without either reading the
other's variables; `tests/client/test_client.py` keeps it that way.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import netrc
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import urlsplit

import aiohttp

from filecask.client.contract import DEFAULT_URL, PASSWORD_ENV, URL_ENV, USER_ENV, ExitCode
from filecask.errors import InvalidHash
from filecask.hashes import parse_hash

CHUNK = 1 << 20
"""Bytes per read from a local file or from the network: large enough that the thread hop
per chunk costs nothing next to the I/O, small enough that memory stays flat."""
LIST_PAGE = 1000
"""The server's largest `?limit=`: the fewest round trips for `ls`."""
ERROR_BODY_MAX = 64 << 10
"""A problem+json body is small; never read more than this of an error response."""

TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
"""No total limit (a 10 GiB transfer may take long), but a connection that cannot be made
in 30 s or a response that stalls for 5 minutes (longer than any server-side timeout, so
the server's own 408/drop is what normally ends a stall) is a network error."""


class ClientError(Exception):
    """A failure with its message for the user and the exit code for scripts."""

    def __init__(self, message: str, code: ExitCode) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class HTTPError(ClientError):
    """The server answered with a non-success status; `problem` is its problem+json body
    (empty if it sent none)."""

    def __init__(self, status: int, message: str, problem: Mapping[str, Any]) -> None:
        super().__init__(message, exit_code_for_status(status))
        self.status = status
        self.problem = dict(problem)


def exit_code_for_status(status: int) -> ExitCode:
    """The exit code for an HTTP status the client did not expect."""
    if status == 404:
        return ExitCode.NOT_FOUND
    if status in (401, 403):
        return ExitCode.AUTH
    if 400 <= status < 500:
        return ExitCode.REFUSED
    return ExitCode.SERVER


def problem_message(status: int, reason: str | None, body: bytes) -> tuple[str, dict[str, Any]]:
    """The line to show for an error response, and the problem object if there was one.

    The server's `detail` says what went wrong in words (which quota, which entry of a
    bundle); its `title` is the fallback; a body that is not problem+json (a proxy's HTML
    page) is summarised by the status alone rather than dumped on the terminal."""
    head = f"HTTP {status}" + (f" {reason}" if reason else "")
    try:
        problem = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    text = problem.get("detail") or problem.get("title")
    return (f"{head}: {text}" if isinstance(text, str) and text else head), problem


def network_error(exc: BaseException, url: str) -> ClientError:
    """A ClientError (exit 5) for anything that kept a request from completing."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        errno = exc.os_error.errno
        reason = os.strerror(errno) if errno else str(exc.os_error)
        return ClientError(f"cannot connect to {url}: {reason}", ExitCode.SERVER)
    if isinstance(exc, TimeoutError):
        return ClientError(f"{url}: timed out", ExitCode.SERVER)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ClientError(f"{url}: the transfer was cut: {exc}", ExitCode.SERVER)
    return ClientError(f"{url}: {type(exc).__name__}: {exc}", ExitCode.SERVER)


def checked_hash(text: str) -> str:
    """A SHA-256 hex id from the command line, lower-cased; a usage error otherwise."""
    try:
        return parse_hash(text)
    except InvalidHash:
        raise ClientError(
            f"{text!r} is not a file hash (64 hexadecimal characters of a SHA-256)",
            ExitCode.LOCAL,
        ) from None


# --------------------------------------------------------------------------- configuration


def resolve_url(flag: str | None, environ: Mapping[str, str]) -> str:
    """`--url`, else FILECASK_URL, else the default; checked, without a trailing slash (a
    server behind a path prefix, `https://host/cask`, works: paths are appended)."""
    url = (flag or environ.get(URL_ENV) or DEFAULT_URL).strip().rstrip("/")
    unusable = ClientError(
        f"{url!r} is not a server URL (expected http://HOST[:PORT] or https://…)",
        ExitCode.LOCAL,
    )
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # a bracketed host that is not an IPv6 address
        raise unusable from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise unusable
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ClientError(
            f"{url!r}: the server URL takes no query, fragment or credentials "
            f"(use --user, {USER_ENV}, {PASSWORD_ENV} or ~/.netrc)",
            ExitCode.LOCAL,
        )
    return url


@dataclass(frozen=True)
class NetrcEntry:
    login: str | None
    password: str | None = field(repr=False)


def netrc_entry(host: str, path: Path | None = None) -> NetrcEntry | None:
    """The `machine HOST` (else `default`) entry of a netrc file, or None.

    `path=None` reads `~/.netrc` the way the standard library does, including its check
    that a file holding passwords is the user's own and not readable by others (refused
    with a clear error rather than silently ignored: the user meant it to be used). A
    missing file, or no HOME to find it in, simply means no entry."""
    try:
        parsed = netrc.netrc(None if path is None else os.fspath(path))
    except FileNotFoundError:
        return None
    except netrc.NetrcParseError as exc:
        where = exc.filename or "~/.netrc"
        if exc.lineno:
            where += f", line {exc.lineno}"
        raise ClientError(f"{where}: {exc.msg}", ExitCode.LOCAL) from None
    except OSError as exc:
        if path is None and "HOME" not in os.environ:
            return None
        raise ClientError(f"cannot read the netrc file: {exc}", ExitCode.LOCAL) from None
    found = parsed.authenticators(host)
    if found is None:
        return None
    login, _account, password = found
    return NetrcEntry(login or None, password or None)


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    def basic_auth(self) -> aiohttp.BasicAuth:
        # The server announces `charset="UTF-8"` (RFC 7617); aiohttp defaults to latin-1.
        return aiohttp.BasicAuth(self.user, self.password, encoding="utf-8")


Prompt = Callable[[str, bool], str]
"""Ask the user: (label, hide the input) -> answer."""


def resolve_credentials(
    url: str,
    user_flag: str | None,
    environ: Mapping[str, str],
    *,
    prompt: Prompt | None,
    netrc_path: Path | None = None,
) -> Credentials:
    """Who signs in, and with what password.

    User: `--user`, else FILECASK_USER, else the login of ~/.netrc's entry for the URL's
    host, else asked. Password: FILECASK_PASSWORD, else that netrc entry's password (only
    if its login is the user chosen: a netrc password belongs to its login), else asked
    with the input hidden. There is deliberately no password flag: command lines are
    visible to every user of the machine (`ps`). `prompt=None` (no terminal) turns
    "asked" into an authentication error (exit 3) that says how to supply them. The netrc
    file is read only if the environment leaves something open, so a broken one does not
    stop a fully configured script."""
    user = user_flag or environ.get(USER_ENV) or None
    password = environ.get(PASSWORD_ENV) or None
    if user is None or password is None:
        host = urlsplit(url).hostname or ""
        entry = netrc_entry(host, netrc_path)
        if entry is not None:
            if user is None:
                user = entry.login
            if password is None and entry.login in (None, user):
                password = entry.password
    if user is None:
        user = _ask(prompt, "User", hide=False, missing=f"--user or {USER_ENV}")
    if ":" in user:
        raise ClientError(
            f"{user!r} cannot sign in: HTTP Basic user names have no ':' (RFC 7617)",
            ExitCode.LOCAL,
        )
    if password is None:
        password = _ask(prompt, f"Password for {user}", hide=True, missing=PASSWORD_ENV)
    return Credentials(user, password)


def _ask(prompt: Prompt | None, label: str, *, hide: bool, missing: str) -> str:
    if prompt is None:
        raise ClientError(
            f"no {'password' if hide else 'user name'} given and no terminal to ask on: "
            f"set {missing}, or add a `machine HOST login NAME password SECRET` line to "
            "~/.netrc (mode 600)",
            ExitCode.AUTH,
        )
    answer = prompt(label, hide)
    if not answer:
        raise ClientError(f"no {'password' if hide else 'user name'} given", ExitCode.AUTH)
    return answer


# --------------------------------------------------------------------------- progress

Advance = Callable[[int], None]
ProgressFactory = Callable[[str, int | None], AbstractContextManager[Advance]]
"""(label, total bytes or None) -> a context whose value is called with each byte count."""


def no_progress(label: str, total: int | None) -> AbstractContextManager[Advance]:
    return nullcontext(_ignore)


def _ignore(count: int) -> None:
    return None


# --------------------------------------------------------------------------- the client


@dataclass(frozen=True)
class Download:
    """What `Client.download` did: the final size, and where it resumed (0: from the
    start), so the command can say so."""

    size: int
    resumed_from: int


def part_path(target: Path) -> Path:
    """Where a download accumulates until its hash is verified."""
    return target.with_name(target.name + ".part")


class Client:
    """One server, one aiohttp session; use as `async with Client(...) as client`.

    Every method raises ClientError (HTTPError for an unexpected status); aiohttp's own
    exceptions (connection refused, a cut transfer) are left to the caller, which maps
    them with `network_error` in one place."""

    def __init__(
        self,
        base_url: str,
        credentials: Credentials | None = None,
        *,
        progress: ProgressFactory = no_progress,
        timeout: aiohttp.ClientTimeout = TIMEOUT,
    ) -> None:
        self.base_url = base_url
        self.credentials = credentials
        self.progress = progress
        self._timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        auth = self.credentials.basic_auth() if self.credentials is not None else None
        self._session = aiohttp.ClientSession(
            auth=auth,
            timeout=self._timeout,
            headers={"User-Agent": "filecask-client"},
            # No compression: downloads are hashed as they arrive and resumed by offset.
            auto_decompress=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use `async with Client(...)`")
        return self._session

    def url(self, path: str) -> str:
        return self.base_url + path

    async def raise_for_status(self, response: aiohttp.ClientResponse) -> None:
        """HTTPError carrying the server's problem `detail` for any status >= 300 (the
        client follows no redirects: credentials go only where they were meant to)."""
        if response.status < 300:
            return
        body = await response.content.read(ERROR_BODY_MAX)
        message, problem = problem_message(response.status, response.reason, body)
        raise HTTPError(response.status, message, problem)

    # ----------------------------------------------------------------------- uploads

    async def upload(self, path: Path, name: str | None = None) -> dict[str, Any]:
        """Upload one file as `PUT /files/{sha256}?name=`; the server's JSON answer.

        The file is hashed locally first and the server checks the bytes it receives
        against that hash (400, nothing stored, on a mismatch), so the upload is verified
        end to end: a corrupted transfer, or a file changed between the two reads, cannot
        be stored under a wrong id. That costs a second read of the file, at disk speed.
        The body streams from the file (never all in memory) with its exact
        Content-Length, and with `Expect: 100-continue`, so an upload the server refuses
        on its length (too large, over quota) is answered before any of it is sent."""
        digest, size = await hash_file(path, self.progress, f"hashing {path.name}")
        name = path.name if name is None else name
        with path.open("rb") as source, self.progress(f"uploading {name}", size) as advance:
            async with self.session.put(
                self.url(f"/files/{digest}"),
                params={"name": name},
                data=_file_chunks(source, size, advance),
                headers={
                    "Content-Length": str(size),
                    "Content-Type": "application/octet-stream",
                },
                expect100=True,
                allow_redirects=False,
            ) as response:
                await self.raise_for_status(response)
                body: dict[str, Any] = await response.json()
        if body.get("hash") != digest:
            raise ClientError(
                f"{path}: the server stored {body.get('hash')!r}, not {digest}", ExitCode.SERVER
            )
        return body

    # ----------------------------------------------------------------------- downloads

    async def download(self, hex_hash: str, target: Path) -> Download:
        """Download a file to `target`, through `target.part`, resuming a cut download.

        An existing `.part` is taken as the first bytes of the file: they are hashed, then
        only the rest is asked for (`Range: bytes=N-`, with `If-Range` on the hash so a
        server holding other bytes answers the whole file instead). The result is renamed
        into place only once its SHA-256 equals the hash asked for; otherwise the `.part`
        is removed (so the next attempt starts afresh) and this fails with exit 5. A
        `.part` at least as long as the file (416) is checked as it stands."""
        part = part_path(target)
        offset = part.stat().st_size if part.exists() else 0
        hasher = hashlib.sha256()
        if offset:
            await _hash_into(hasher, part, offset)
        headers = {"Range": f"bytes={offset}-", "If-Range": f'"{hex_hash}"'} if offset else {}
        async with self.session.get(
            self.url(f"/files/{hex_hash}"), headers=headers, allow_redirects=False
        ) as response:
            if response.status == 416 and offset:
                resumed_from = offset
            else:
                await self.raise_for_status(response)
                if response.status == 206:
                    start = _content_range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise ClientError(
                            f"asked to resume at {offset}, the server sent from {start}",
                            ExitCode.SERVER,
                        )
                else:  # 200: the whole file (no .part, or the server ignored the range)
                    offset, hasher = 0, hashlib.sha256()
                resumed_from = offset
                total = offset + response.content_length if response.content_length else None
                mode = "ab" if offset else "wb"
                label = f"downloading {target.name}"
                with part.open(mode) as sink, self.progress(label, total) as advance:
                    if offset:
                        advance(offset)
                    await _receive(response, sink, hasher, advance)
                    await asyncio.to_thread(_sync, sink)
        if hasher.hexdigest() != hex_hash:
            part.unlink(missing_ok=True)
            what = "the downloaded bytes"
            if resumed_from:
                what += f" (resumed at {resumed_from})"
            raise ClientError(
                f"{what} have SHA-256 {hasher.hexdigest()}, not {hex_hash}; "
                f"removed {part.name}, try again",
                ExitCode.SERVER,
            )
        size = part.stat().st_size
        os.replace(part, target)
        return Download(size, resumed_from)

    async def download_to_stream(self, hex_hash: str, sink: BinaryIO) -> Download:
        """Download a file to an open stream (stdout), verifying its hash at the end. A
        stream cannot be resumed, and bytes already written cannot be taken back, so a
        mismatch is reported (exit 5) after the fact."""
        hasher = hashlib.sha256()
        async with self.session.get(
            self.url(f"/files/{hex_hash}"), allow_redirects=False
        ) as response:
            await self.raise_for_status(response)
            with self.progress(f"downloading {hex_hash[:12]}", response.content_length) as advance:
                await _receive(response, sink, hasher, advance)
            await asyncio.to_thread(sink.flush)
        if hasher.hexdigest() != hex_hash:
            raise ClientError(
                f"the downloaded bytes have SHA-256 {hasher.hexdigest()}, not {hex_hash}",
                ExitCode.SERVER,
            )
        return Download(0, 0)

    async def download_archive(self, archive_id: str, target: Path) -> int:
        """Download a bundle's ZIP to `target` through `target.part`; its size. The ZIP
        has no hash to check it against; aiohttp checks its Content-Length (a cut transfer
        is an error and leaves only the `.part`)."""
        part = part_path(target)
        async with self.session.get(
            self.url(f"/archive/{archive_id}/"), allow_redirects=False
        ) as response:
            await self.raise_for_status(response)
            with (
                part.open("wb") as sink,
                self.progress(f"downloading {target.name}", response.content_length) as advance,
            ):
                await _receive(response, sink, None, advance)
                await asyncio.to_thread(_sync, sink)
        size = part.stat().st_size
        os.replace(part, target)
        return size

    # ----------------------------------------------------------------------- the rest

    async def delete(self, hex_hash: str) -> list[dict[str, Any]]:
        """Drop the reference; the caller's bundles that still keep the content (the 200
        answer's `held_by_bundles`), or [] (204)."""
        async with self.session.delete(
            self.url(f"/files/{hex_hash}"), allow_redirects=False
        ) as response:
            await self.raise_for_status(response)
            if response.status != 200:
                return []
            body: dict[str, Any] = await response.json()
            held: list[dict[str, Any]] = body.get("held_by_bundles", [])
            return held

    async def list_files(self) -> AsyncIterator[dict[str, Any]]:
        """Every file of the signed-in user, newest first, following `next_cursor`."""
        cursor: str | None = None
        while True:
            params = {"limit": str(LIST_PAGE)}
            if cursor is not None:
                params["cursor"] = cursor
            async with self.session.get(
                self.url("/files"), params=params, allow_redirects=False
            ) as response:
                await self.raise_for_status(response)
                page: dict[str, Any] = await response.json()
            for item in page.get("files", []):
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def create_archive(self, name: str, entries: list[tuple[str, str]]) -> dict[str, Any]:
        """Save a bundle of (hash, path) entries; the server's `{id, name, url}`."""
        manifest = {"name": name, "files": [{"hash": h, "path": p} for h, p in entries]}
        async with self.session.post(
            self.url("/archives"), json=manifest, allow_redirects=False
        ) as response:
            await self.raise_for_status(response)
            body: dict[str, Any] = await response.json()
        return body


# --------------------------------------------------------------------------- file I/O
# Local reads and writes go through a thread so the event loop keeps serving the socket.


async def hash_file(path: Path, progress: ProgressFactory, label: str) -> tuple[str, int]:
    """The SHA-256 and size of a file, read in chunks."""
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as source, progress(label, os.fstat(source.fileno()).st_size) as advance:
        while chunk := await asyncio.to_thread(source.read, CHUNK):
            hasher.update(chunk)
            size += len(chunk)
            advance(len(chunk))
    return hasher.hexdigest(), size


async def _hash_into(hasher: Any, path: Path, length: int) -> None:
    with path.open("rb") as source:
        remaining = length
        while remaining and (chunk := await asyncio.to_thread(source.read, min(CHUNK, remaining))):
            hasher.update(chunk)
            remaining -= len(chunk)


async def _file_chunks(source: IO[bytes], size: int, advance: Advance) -> AsyncIterator[bytes]:
    """Exactly `size` bytes of the file (the hash and Content-Length were taken for that
    many): a file that shrank since it was hashed is a local error, not a hung request."""
    remaining = size
    while remaining:
        chunk = await asyncio.to_thread(source.read, min(CHUNK, remaining))
        if not chunk:
            raise ClientError(
                f"{getattr(source, 'name', 'the file')} shrank while it was being uploaded",
                ExitCode.LOCAL,
            )
        remaining -= len(chunk)
        advance(len(chunk))
        yield chunk


async def _receive(
    response: aiohttp.ClientResponse, sink: IO[bytes], hasher: Any, advance: Advance
) -> None:
    async for chunk in response.content.iter_chunked(CHUNK):
        await asyncio.to_thread(sink.write, chunk)
        if hasher is not None:
            hasher.update(chunk)
        advance(len(chunk))


def _sync(sink: IO[bytes]) -> None:
    """Flush and fsync before the rename, so a file under its final name is complete even
    after a crash (the rename of unsynced data can survive where the data does not)."""
    sink.flush()
    os.fsync(sink.fileno())


def _content_range_start(value: str | None) -> int | None:
    """The first byte of `Content-Range: bytes FIRST-LAST/SIZE`, or None."""
    if value is None or not value.startswith("bytes "):
        return None
    first, _, _ = value[len("bytes ") :].partition("-")
    return int(first) if first.isdigit() else None
