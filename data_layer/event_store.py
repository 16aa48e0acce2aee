"""The canonical event store: Parquet files under ``$OMNISCORE_HOME/events``.

Writes are append-only and idempotent: a batch's rows whose ``event_id`` is already stored
(or repeated inside the batch) are counted as duplicates and not written again.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_layer import live_segment
from data_layer.schema import CUSTOMER_SCHEMA, EVENT_SCHEMA
from data_layer.settings import Settings


@dataclass(frozen=True)
class WriteResult:
    """What one write added to the store."""

    written: int
    duplicates: int
    path: Path | None


def event_files(settings: Settings) -> list[Path]:
    """The store's Parquet files, in a stable order.

    Live events still in the live segment are sealed into a Parquet file first
    (:func:`data_layer.live_segment.seal`), so every reader sees every accepted event.
    """
    live_segment.seal(settings)
    return sorted(settings.events_dir.glob("*.parquet"))


def events_relation_sql(settings: Settings) -> str:
    """A DuckDB ``read_parquet`` expression over the whole store (empty-safe via schema)."""
    files = event_files(settings)
    if not files:
        raise FileNotFoundError(
            f"no events under {settings.events_dir}: run `omniscore generate` or "
            "`omniscore ingest FILE` first"
        )
    listing = ", ".join(f"'{f.as_posix()}'" for f in files)
    return f"read_parquet([{listing}])"


def write_events(settings: Settings, table: pa.Table, *, replace: bool = False) -> WriteResult:
    """Append canonical events, skipping ids already stored; ``replace`` empties the store.

    Holds the store's cross-process lock (:func:`data_layer.live_segment.store_lock`), so a
    live append running at the same time cannot slip an id in between the duplicate check
    and the write.
    """
    with live_segment.store_lock(settings):
        if replace:
            live_segment.reset(settings)
        return _write_events(settings, table, replace=replace)


def _write_events(settings: Settings, table: pa.Table, *, replace: bool) -> WriteResult:
    if table.schema != EVENT_SCHEMA:
        table = table.cast(EVENT_SCHEMA)
    settings.events_dir.mkdir(parents=True, exist_ok=True)
    if replace:
        for old in event_files(settings):
            old.unlink()
    incoming = table.num_rows
    existing = event_files(settings)
    if not existing and pc.count_distinct(table.column("event_id")).as_py() == incoming:
        # Nothing stored and no repeated id (a fresh simulation): nothing to de-duplicate, so
        # skip DuckDB's anti-join and sort, which cost minutes and gigabytes at 10^7 rows.
        return WriteResult(written=incoming, duplicates=0, path=_write_batch(settings, table))
    con = duckdb.connect()
    con.register("batch", table)
    if existing:
        listing = ", ".join(f"'{f.as_posix()}'" for f in existing)
        con.execute(f"CREATE TEMP VIEW stored AS SELECT event_id FROM read_parquet([{listing}])")
        anti = "WHERE event_id NOT IN (SELECT event_id FROM stored)"
    else:
        anti = ""
    # Keep the first of any ids repeated inside the batch, in input order.
    fresh = con.sql(
        f"""
        SELECT * EXCLUDE (rn) FROM (
            SELECT *, row_number() OVER (PARTITION BY event_id) AS rn FROM batch {anti}
        ) WHERE rn = 1
        ORDER BY customer_id, event_timestamp
        """
    ).to_arrow_table()
    con.close()
    fresh = fresh.cast(EVENT_SCHEMA)
    if fresh.num_rows == 0:
        return WriteResult(written=0, duplicates=incoming, path=None)
    path = _write_batch(settings, fresh)
    return WriteResult(written=fresh.num_rows, duplicates=incoming - fresh.num_rows, path=path)


def _write_batch(settings: Settings, table: pa.Table) -> Path:
    path = settings.events_dir / f"batch-{uuid.uuid4().hex[:12]}.parquet"
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=1_000_000)
    tmp.rename(path)
    return path


def read_events(settings: Settings, columns: list[str] | None = None) -> pd.DataFrame:
    """The whole store as a pandas frame (small data and tests; pipelines use DuckDB)."""
    files = event_files(settings)
    if not files:
        return EVENT_SCHEMA.empty_table().to_pandas()
    return pq.ParquetDataset(files).read(columns=columns).to_pandas()


def event_count(settings: Settings) -> int:
    """Number of stored events, read from Parquet footers."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in event_files(settings))


def event_data_hash(settings: Settings) -> str:
    """A fingerprint of the stored event ids, recorded as lineage on training runs."""
    files = event_files(settings)
    if not files:
        return "empty"
    con = duckdb.connect()
    digest = con.execute(
        f"SELECT count(*), bit_xor(hash(event_id)) FROM {events_relation_sql(settings)}"
    ).fetchone()
    con.close()
    return hashlib.sha256(repr(digest).encode()).hexdigest()[:16]


def write_customers(settings: Settings, customers: pd.DataFrame) -> None:
    """Replace the customers (profile) table."""
    settings.home.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(
        customers[list(CUSTOMER_SCHEMA.names)], schema=CUSTOMER_SCHEMA, preserve_index=False
    )
    pq.write_table(table, settings.customers_path)


def read_customers(settings: Settings) -> pd.DataFrame:
    """The customers table, or an empty one when only events were ingested."""
    if not settings.customers_path.exists():
        return CUSTOMER_SCHEMA.empty_table().to_pandas()
    return pq.read_table(settings.customers_path).to_pandas()
