"""The metadata store on SQLAlchemy Core with async drivers (aiosqlite, asyncpg).

`SqlMetaStore` is the one class callers hold (typed as `MetaStore`); it is made of one part
per kind of record, each in its own module on the shared plumbing of `engine.SqlEngine`:

- `users`: users (`UserRecords`)
- `refs`: blobs and each user's references to them, with the quota check (`RefRecords`)
- `bundles`: bundles, their entries and holders (`BundleRecords`)
- `uploads`: resumable (tus) uploads (`UploadRecords`)
- `crcs`: the CRC-32 cache of directory archives (`CrcRecords`)
- `failures`: failed sign-ins shared by instances (`FailureRecords`)
- `transfer`: whole tables in and out, for `filecask migrate` (`TransferRecords`)
- `queries`: SQL pieces several parts share; `engine`: connection, migrations, writes.

The three lookups on every hot path (a user by name, a blob by hash, a user's usage) are
answered from caches that follow the shared change stamps (see `filecask.storage.changes`):
every write moves the stamps of what it changed once it has committed (`SqlEngine._write`).

PostgreSQL, for several instances on one database: READ COMMITTED gives none of the "one
writer at a time" that SQLite's BEGIN IMMEDIATE does, so every rule that was a
check-then-write is made atomic with row locks: a transaction that may delete a blob row
first locks it FOR UPDATE (`remove_ref`, `drop_blob_if_unreferenced`), one that adds a
reference to an existing blob locks it FOR SHARE (`add_ref`, `add_bundle`), a bundle's row
is locked FOR UPDATE by `release_bundle` and FOR SHARE by `add_bundle`, and inserts that
may meet a concurrent twin use ON CONFLICT. Each waits for the other and then, reading
afresh, sees what it committed. SQLite's compiler leaves the FOR clauses out (it
serialises writers already). Failed sign-ins are kept in `auth_failures` (`FailureStore`),
so every instance throttles.
"""

from __future__ import annotations

from filecask.storage.meta import MetaStore
from filecask.storage.meta.bundles import BundleRecords
from filecask.storage.meta.crcs import CrcRecords
from filecask.storage.meta.engine import EmptyDatabase, connect_raw, is_postgres_url
from filecask.storage.meta.failures import FailureRecords
from filecask.storage.meta.refs import RefRecords
from filecask.storage.meta.transfer import TransferRecords
from filecask.storage.meta.uploads import UploadRecords
from filecask.storage.meta.users import UserRecords

__all__ = ["EmptyDatabase", "SqlMetaStore", "connect_raw", "is_postgres_url"]


class SqlMetaStore(
    UserRecords,
    RefRecords,
    BundleRecords,
    UploadRecords,
    CrcRecords,
    FailureRecords,
    TransferRecords,
):
    """`MetaStore` on one SQLite or PostgreSQL database: `SqlMetaStore(url, stamps)`, then
    `open()`. The parts share one engine, one set of stamps and one write transaction."""


def _implements_the_interface(store: SqlMetaStore) -> MetaStore:
    """Never called: mypy checks here that `SqlMetaStore` satisfies `MetaStore`."""
    return store
