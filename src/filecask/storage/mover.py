"""`filecask migrate`: move an old installation (a data directory: SQLite and blobs on local
disk) into the stores the command is configured with (PostgreSQL and S3, typically).

Why it works the way it does:
- Blobs first, metadata last, in one transaction. Until that transaction commits the
  target's metadata is empty, so a run cut anywhere (a crash, ^C, a lost connection) is
  accepted by the next run, which resumes: blobs the target already holds are skipped. A
  blob is only ever committed to the target after its bytes hashed to its name, so a blob
  found there was checked when an earlier run copied it.
- Every blob is re-hashed on the way (the target's `stage` hashes while it streams). The
  source's bytes are the only copy that is about to be trusted by a new installation, so
  a mismatch stops the migration, naming the blob: the source is damaged and `fsck` there
  says what to do. Memory stays bounded: blobs stream in the stores' chunk sizes.
- Metadata is copied table by table from `schema.metadata.sorted_tables` (parents before
  children), so a table added later is copied without a change here. Ids are kept (refs'
  ids are list cursors clients may hold; bundle ids are in URLs), and PostgreSQL's
  sequences are moved past them so the next insert does not collide.
- Not migrated: the tus `uploads` rows. Their bytes live in the old data directory's tmp/
  and are unfinished; the clients start those uploads again. The summary says how many.
  Nor is an installation's running state (`INSTANCE_STATE`), which the target keeps itself.
- The target must be empty: migrating into a store in use would merge two user tables.
  A target started once by `serve` holds only the bootstrap `admin` it created, with no
  files: that user is dropped, the source's users (and its admin) win.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from filecask.app import StartupError, close_services, open_services
from filecask.errors import NotFound
from filecask.services import Services
from filecask.settings import Settings
from filecask.storage.changes import Topic
from filecask.storage.meta import Census
from filecask.storage.meta.schema import blobs, bundles, metadata, refs, uploads, users
from filecask.storage.meta.sql import SqlMetaStore

BATCH = 500
"""Rows per INSERT: few round trips, bounded memory, under SQLite's parameter limit."""
BOOTSTRAP_ADMIN = "admin"
NOT_MIGRATED = frozenset({uploads.name})
"""Tables left behind on purpose, and said so (see the module docstring)."""
INSTANCE_STATE = frozenset({"change_counters", "auth_failures"})
"""Each installation's own running state (the change feed's counters, sign-in throttling),
which the target writes for itself: neither copied nor a sign that the target is in use."""

Advance = Callable[[int], None]
"""Told how many more bytes of blobs were dealt with."""
ProgressBar = Callable[[int], AbstractContextManager[Advance]]
"""Given the total bytes, a context that yields an `Advance` (a progress bar on stderr)."""


class MigrationError(RuntimeError):
    """The migration is refused or had to stop; the message is one line saying why and
    what to do."""


@dataclass
class Summary:
    """What a run did, for the closing report; `problems` non-empty means not verified."""

    users: int = 0
    files: int = 0
    references: int = 0
    bundles: int = 0
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_skipped: int = 0
    bytes_skipped: int = 0
    uploads_left: int = 0
    bootstrap_admin_dropped: bool = False
    problems: list[str] = field(default_factory=list)


def source_settings(data_dir: Path, database_url: str | None = None) -> Settings:
    """The old installation: its data directory on local disk, its database there unless
    it was elsewhere. Nothing else matters for reading it."""
    return Settings(data_dir=data_dir, database_url=database_url, access_log=False, cache_size=0)


async def migrate(
    source: Settings, target: Settings, *, progress: ProgressBar | None = None
) -> Summary:
    """Copy `source` into `target` and verify; MigrationError if refused or stopped."""
    await _preflight(source, target)
    await _prepare_target_schema(target)
    summary = Summary()
    async with _opened(source, "source") as old, _opened(target, "target") as new:
        _check_target_empty(await new.meta.census())
        await copy_blobs(old, new, summary, progress)
        await copy_metadata(old, new, summary)
        await verify(old, new, summary)
    return summary


# -------------------------------------------------------------------------- before


async def _preflight(source: Settings, target: Settings) -> None:
    """Refuse a missing source and a target that is the source, before opening anything
    (opening a missing SQLite file would create an empty one)."""
    problem = await asyncio.to_thread(_preflight_problem, source, target)
    if problem is not None:
        raise MigrationError(problem)


def _preflight_problem(source: Settings, target: Settings) -> str | None:
    if not source.data_dir.is_dir():
        return f"the source {source.data_dir} is not a directory"
    if source.database_url is None and not (source.data_dir / "filecask.db").is_file():
        return (
            f"the source {source.data_dir} holds no filecask.db: not a filecask data directory"
            " (give --from-database-url if its database was elsewhere)"
        )
    if _database_identity(source.effective_database_url) == _database_identity(
        target.effective_database_url
    ):
        shown = _shown(target.effective_database_url)
        return f"the target database is the source's ({shown}): set FILECASK_DATABASE_URL"
    if target.storage is None and _same_directory(source.store_dir, target.store_dir):
        return (
            f"the target store is the source's ({source.store_dir}): set FILECASK_STORAGE"
            " (s3://bucket/prefix) or another --data-dir"
        )
    target.data_dir.mkdir(parents=True, exist_ok=True)  # a SQLite target needs it
    return None


def _database_identity(url: str) -> tuple[object, ...]:
    """What names one database, whatever the spelling (driver, password, relative path)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return (backend, os.path.realpath(parsed.database or ""))
    return (backend, parsed.host or "localhost", parsed.port or 5432, parsed.database)


def _same_directory(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _shown(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


async def _prepare_target_schema(target: Settings) -> None:
    """Create the target's tables if its database is new. `open_services` would refuse an
    empty database beside a store that holds blobs (a lost database, as far as it can
    tell), which is exactly what a cut migration into a new database leaves."""
    meta = SqlMetaStore(target.effective_database_url)
    try:
        await meta.open(create=True)
    except (DBAPIError, OSError) as exc:
        shown = _shown(target.effective_database_url)
        raise MigrationError(f"cannot use the target database {shown}: {exc}") from exc
    finally:
        await meta.close()


@contextlib.asynccontextmanager
async def _opened(settings: Settings, role: str) -> AsyncIterator[Services]:
    """Both sides are opened like fsck opens them: nothing reaped, nothing recovered."""
    try:
        services = await open_services(settings, reap=False)
    except StartupError as exc:
        raise MigrationError(f"{role}: {exc}") from exc
    try:
        yield services
    finally:
        await close_services(services)


def _check_target_empty(census: Census) -> bool:
    """MigrationError unless the target holds nothing but, perhaps, the bootstrap admin of
    a first `serve`; True in that case (the caller drops it)."""
    counts = {name: n for name, n in census.counts.items() if name not in INSTANCE_STATE}
    held = {name: n for name, n in counts.items() if n and name != users.name}
    if not held and counts[users.name] == 0:
        return False
    if not held:
        if census.lone_user == (BOOTSTRAP_ADMIN, True):
            return True
        held = {users.name: counts[users.name]}
    listing = ", ".join(f"{n} {name}" for name, n in sorted(held.items()))
    raise MigrationError(
        f"the target is not empty ({listing} rows): migrate into a new database"
        " (a fresh one, or one only started once, holding nothing but its admin)"
    )


# -------------------------------------------------------------------------- blobs


async def copy_blobs(
    old: Services, new: Services, summary: Summary, progress: ProgressBar | None = None
) -> None:
    """Every blob row of the source, streamed into the target store unless it is there."""
    sizes = await old.meta.blob_sizes()
    bar = progress(sum(sizes.values())) if progress else contextlib.nullcontext(_ignore)
    with bar as advance:
        for hex_hash in sorted(sizes):
            size = sizes[hex_hash]
            if await new.blobs.exists(hex_hash):
                summary.blobs_skipped += 1
                summary.bytes_skipped += size
            else:
                await _copy_blob(old, new, hex_hash, size)
                summary.blobs_copied += 1
                summary.bytes_copied += size
            advance(size)


def _ignore(_: int) -> None:
    return None


async def _copy_blob(old: Services, new: Services, hex_hash: str, size: int) -> None:
    """Stage, check the hash, commit, settle. Under the target's hash lock, as the blob
    store's contract asks of whoever commits, in case a server was started too early."""
    await _check_source_size(old, hex_hash, size)
    try:
        async with contextlib.aclosing(old.blobs.read_range(hex_hash, 0, size)) as chunks:
            staged = await new.blobs.stage(chunks, max_size=size)
    except EOFError as exc:
        raise _corrupt(old, hex_hash, "it is shorter than its row says") from exc
    if staged.hash != hex_hash or staged.size != size:
        await new.blobs.discard(staged)
        raise _corrupt(old, hex_hash, f"its {staged.size} bytes hash to {staged.hash}")
    async with new.files.locks.hold(hex_hash):
        await new.blobs.commit(staged)
        await new.blobs.settle(staged)


async def _check_source_size(old: Services, hex_hash: str, size: int) -> None:
    """The stored size against the row's: reading `size` bytes alone would not notice
    bytes appended to a blob."""
    try:
        opened = await old.blobs.open_blob(hex_hash)
    except NotFound as exc:
        raise _corrupt(old, hex_hash, "its row has no bytes in the store") from exc
    if opened.fd is not None:
        await asyncio.to_thread(os.close, opened.fd)
    if opened.size != size:
        raise _corrupt(old, hex_hash, f"it is {opened.size} bytes, its row says {size}")


def _corrupt(old: Services, hex_hash: str, why: str) -> MigrationError:
    where = old.settings.data_dir
    return MigrationError(
        f"the source blob {hex_hash} is damaged: {why}. Nothing of it was copied; run"
        f" `filecask fsck --data-dir {where}` on the source, then migrate again"
    )


# -------------------------------------------------------------------------- metadata


async def copy_metadata(old: Services, new: Services, summary: Summary) -> None:
    """Every migrated table in one target transaction, read from one source snapshot; the
    target is checked again in that transaction (the bootstrap admin dropped there)."""
    tables = [table.name for table in migrated_tables()]
    async with contextlib.aclosing(old.meta.dump_tables(tables, batch=BATCH)) as rows:
        summary.bootstrap_admin_dropped = await new.meta.load_tables(
            tables, rows, vet=_check_target_empty
        )
    # A server started too early (on any machine) would have cached the dropped admin or a
    # miss for a migrated hash; make every one forget.
    await new.meta.announce(*Topic)


def migrated_tables() -> list[sa.Table]:
    left = NOT_MIGRATED | INSTANCE_STATE
    return [t for t in metadata.sorted_tables if t.name not in left]


# -------------------------------------------------------------------------- after


async def verify(old: Services, new: Services, summary: Summary) -> None:
    """Every source blob is in the target store; every migrated table has the source's
    row count. Fills the summary's figures from the source."""
    present = {entry.hash async for entry in new.blobs.iter_blobs() if entry.regular}
    for hex_hash in sorted(await old.meta.all_blob_hashes() - present):
        summary.problems.append(f"blob {hex_hash} is not in the target store")
    source, target = (await old.meta.census()).counts, (await new.meta.census()).counts
    for table in migrated_tables():
        before, after = source[table.name], target[table.name]
        if before != after:
            summary.problems.append(
                f"table {table.name}: {before} rows in the source, {after} in the target"
            )
    summary.users = source[users.name]
    summary.files = source[blobs.name]
    summary.references = source[refs.name]
    summary.bundles = source[bundles.name]
    summary.uploads_left = source[uploads.name]


def report_lines(summary: Summary) -> Iterator[str]:
    """The closing report, one fact a line."""
    yield (
        f"migrated {summary.users} user(s), {summary.files} file(s),"
        f" {summary.references} reference(s), {summary.bundles} bundle(s)"
    )
    yield (
        f"copied {summary.blobs_copied} blob(s), {summary.bytes_copied} bytes;"
        f" skipped {summary.blobs_skipped} already in the target, {summary.bytes_skipped} bytes"
    )
    if summary.bootstrap_admin_dropped:
        yield "replaced the target's bootstrap user 'admin' by the source's users"
    if summary.uploads_left:
        yield (
            f"not migrated: {summary.uploads_left} unfinished resumable upload(s); their bytes"
            " are in the old tmp/, clients must start them again"
        )
    yield from summary.problems
    if summary.problems:
        yield f"NOT verified: {len(summary.problems)} problem(s)"
    else:
        yield "verified: every blob is in the target store, every table has the source's rows"
