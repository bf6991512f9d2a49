"""For the few tests that must plant or watch rows below the metadata interface (a row
nothing references, for fsck to find; the queries a request runs): the SQL store behind
`Services.meta`. Everything else goes through `MetaStore`."""

from __future__ import annotations

from filecask.storage.meta import MetaStore
from filecask.storage.meta.sql import SqlMetaStore


def sql_store(meta: MetaStore) -> SqlMetaStore:
    """`meta` as the SQL store it is (its engine, its change feed)."""
    assert isinstance(meta, SqlMetaStore), type(meta)
    return meta
