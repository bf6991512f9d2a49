"""Whole tables in and out, for `filecask migrate` (`filecask.storage.mover`): a census of
every table's rows, every row of some tables read from one snapshot, and those rows written
into another store in one transaction. Only the mover uses it; it owns no table."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from filecask.storage.meta import Census, TableRows
from filecask.storage.meta.engine import SqlEngine
from filecask.storage.meta.schema import metadata, users


class TransferRecords(SqlEngine):
    """Every table, counted, read out from a snapshot, and written in one transaction."""

    async def census(self) -> Census:
        async with self.engine.connect() as conn:
            return await _census(conn)

    async def dump_tables(self, tables: Sequence[str], *, batch: int) -> AsyncGenerator[TableRows]:
        """Every row of `tables`, in that order, by primary key, read in one transaction
        (one snapshot), `batch` rows at a time; datetimes in UTC (SQLite hands back naive
        ones, PostgreSQL's timestamptz must be told)."""
        async with self.engine.connect() as conn, conn.begin():
            for name in tables:
                table = metadata.tables[name]
                query = sa.select(table).order_by(*table.primary_key.columns)
                result = await conn.stream(query)
                async for part in result.partitions(batch):
                    yield TableRows(name, [_portable(table, row) for row in part])

    async def load_tables(
        self,
        tables: Sequence[str],
        rows: AsyncIterable[TableRows],
        *,
        vet: Callable[[Census], bool],
    ) -> bool:
        """One transaction: `vet` this store's census (it raises to refuse; True to empty
        the users table first), insert every batch of `rows`, then move PostgreSQL's
        sequences of `tables` past the ids copied. What `vet` answered."""
        async with self.engine.connect() as conn, conn.begin():
            clear_users = vet(await _census(conn))
            if clear_users:
                await conn.execute(users.delete())
            async for part in rows:
                await conn.execute(metadata.tables[part.table].insert(), part.rows)
            await _advance_sequences(conn, tables)
        return clear_users


async def _census(conn: AsyncConnection) -> Census:
    counts = {}
    for table in metadata.sorted_tables:
        query = sa.select(sa.func.count()).select_from(table)
        counts[table.name] = int(await conn.scalar(query) or 0)
    first = (await conn.execute(sa.select(users.c.name, users.c.is_admin).limit(2))).all()
    lone = (first[0].name, bool(first[0].is_admin)) if len(first) == 1 else None
    return Census(counts, lone)


def _portable(table: sa.Table, row: sa.Row[Any]) -> dict[str, Any]:
    values = dict(row._mapping)
    for column in table.columns:
        value = values.get(column.name)
        if isinstance(value, datetime) and value.tzinfo is None:
            values[column.name] = value.replace(tzinfo=UTC)
    return values


async def _advance_sequences(conn: AsyncConnection, tables: Sequence[str]) -> None:
    """PostgreSQL: the next generated id of each table follows the largest copied one
    (`is_called` false on an empty table, so its first id stays 1). SQLite picks max+1."""
    if conn.dialect.name != "postgresql":
        return
    for name in tables:
        table = metadata.tables[name]
        column = table.autoincrement_column
        if column is None:
            continue
        highest = sa.func.max(column)
        sequence = sa.func.pg_get_serial_sequence(table.name, column.name)
        await conn.execute(
            sa.select(sa.func.setval(sequence, sa.func.coalesce(highest, 1), highest.is_not(None)))
        )
