"""The CRC-32 cache of directory archives (`crc_cache`): a file's CRC, valid while its
size, mtime and inode are unchanged, so a folder's ZIP plan need not read every file again."""

from __future__ import annotations

import sqlalchemy as sa

from filecask.storage.meta import CachedCrc
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.queries import chunks
from filecask.storage.meta.schema import crc_cache


class CrcRecords(SqlEngine):
    """`crc_cache`: read and upserted in batches."""

    async def get_crcs(self, paths: list[str]) -> dict[str, CachedCrc]:
        found: dict[str, CachedCrc] = {}
        async with self.engine.connect() as conn:
            for chunk in chunks(paths, 500):
                query = sa.select(crc_cache).where(crc_cache.c.path.in_(chunk))
                for r in await conn.execute(query):
                    found[r.path] = CachedCrc(r.path, r.size, r.mtime_ns, r.inode, r.crc32)
        return found

    async def put_crcs(self, crcs: list[CachedCrc]) -> None:
        if not crcs:
            return
        insert = self._insert()
        rows = [
            {
                "path": c.path,
                "size": c.size,
                "mtime_ns": c.mtime_ns,
                "inode": c.inode,
                "crc32": c.crc32,
            }
            for c in crcs
        ]
        async with self._write() as conn:
            for chunk in chunks(rows, 500):
                statement = insert(crc_cache).values(chunk)
                await conn.execute(
                    statement.on_conflict_do_update(
                        index_elements=["path"],
                        set_={
                            "size": statement.excluded.size,
                            "mtime_ns": statement.excluded.mtime_ns,
                            "inode": statement.excluded.inode,
                            "crc32": statement.excluded.crc32,
                        },
                    )
                )
