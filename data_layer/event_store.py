"""The canonical event store: Parquet files under ``$OMNISCORE_HOME/events``.

Writes are append-only and idempotent: a batch's rows whose ``event_id`` is already stored
(or repeated inside the batch) are counted as duplicates and not written again.

Computed event ids are 128-bit (:data:`data_layer.schema.EVENT_ID_HEX_DIGITS`). A store
written before that holds 16-digit ids; the first write to it (ingest, generate's replace
aside, or a live append) migrates it under the store lock (:func:`migrate_event_ids`, also
``omniscore migrate-event-ids``), so a re-ingested file is still recognised. The marker file
``events/event-ids.json`` says a store's ids are current.

Layout (issue 15): a batch's events are written Hive-style, one file per event month and
customer bucket, ``events/month=YYYY-MM/bucket=NNN/<batch>.parquet``, so that a build over a
time range or over a customer partition lists only the files it needs
(:func:`event_files` with ``until`` or ``partition``). The bucket is
``hash(customer_id) % B`` in DuckDB (:data:`BUCKET_HASH_SQL`), ``B`` a power of two fixed when
the store is first written (:data:`LAYOUT_MARKER`). Files directly under ``events/`` (a home
written before this layout, and the live segment's sealed ``live-*`` files) are read by every
reader whatever the range or partition, so old homes keep working;
``omniscore migrate-events`` (:func:`migrate_events`) moves them into the layout. Readers
pass ``hive_partitioning = false`` (:func:`relation_sql`): the files hold exactly
:data:`~data_layer.schema.EVENT_SCHEMA`, the directory names are only for pruning.

The profile table keeps every version of each customer's row with its ``valid_from``
instant (:func:`write_customers`), so snapshots take attributes point-in-time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_layer import live_segment
from data_layer.schema import (
    CUSTOMER_SCHEMA,
    EVENT_ID_HEX_DIGITS,
    EVENT_SCHEMA,
    event_id_hashes,
    event_ids_of,
    is_legacy_event_id,
    ranked_repeats,
)
from data_layer.settings import Settings


@dataclass(frozen=True)
class WriteResult:
    """What one write added to the store."""

    written: int
    duplicates: int
    path: Path | None
    """The first file written (None when nothing was); a batch spans one file per month and
    bucket, all named after the batch."""


LAYOUT_MARKER = "layout.json"
"""File in ``events/`` recording the store's layout and bucket count ``B``."""
DEFAULT_BUCKETS = 8
"""Buckets of a store first written by ingest (generate picks them from its customers)."""
MAX_BUCKETS = 128
BUCKET_HASH_SQL = "hash({column})"
"""DuckDB's 64-bit hash of a customer id: stable across runs and processes, and the same
for a Parquet column, an Arrow table and a frame. Store buckets and build partitions both
take it modulo their count, so a build partition maps onto whole store buckets."""
_MONTH = re.compile(r"^month=(\d{4}-\d{2})$")
_BUCKET = re.compile(r"^bucket=(\d+)$")


def buckets_for(customers: int) -> int:
    """Store buckets for a world of ``customers``: a power of two, about 8,192 customers
    each (so a 1M-customer store has 128 buckets of ~1.3M events), at most :data:`MAX_BUCKETS`."""
    wanted = max(1, -(-int(customers) // 8_192))
    return min(MAX_BUCKETS, 1 << (wanted - 1).bit_length())


def store_buckets(settings: Settings) -> int | None:
    """The store's bucket count, or None while nothing has been written in the layout."""
    path = settings.events_dir / LAYOUT_MARKER
    if not path.exists():
        return None
    return int(json.loads(path.read_text())["buckets"])


def _set_layout(settings: Settings, buckets: int) -> int:
    if buckets < 1 or buckets & (buckets - 1):
        raise ValueError(f"store buckets must be a power of two, got {buckets}")
    settings.events_dir.mkdir(parents=True, exist_ok=True)
    path = settings.events_dir / LAYOUT_MARKER
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"layout": "month/bucket", "buckets": buckets}) + "\n")
    tmp.rename(path)
    return buckets


@dataclass(frozen=True)
class StoredFile:
    """One Parquet file of the store and where it sits in the layout (None: unpartitioned)."""

    path: Path
    month: str | None
    bucket: int | None


def stored_files(settings: Settings) -> list[StoredFile]:
    """Every Parquet file of the store with its month and bucket (seals live events first)."""
    live_segment.seal(settings)
    out = []
    for path in sorted(settings.events_dir.rglob("*.parquet")):
        parts = path.relative_to(settings.events_dir).parts
        month = bucket = None
        if len(parts) == 3:
            m, b = _MONTH.match(parts[0]), _BUCKET.match(parts[1])
            if m is None or b is None:
                continue  # not a file of the store's layout
            month, bucket = m.group(1), int(b.group(1))
        elif len(parts) != 1:
            continue
        out.append(StoredFile(path, month, bucket))
    return out


def partition_buckets(partition: int, partitions: int, buckets: int) -> set[int]:
    """Store buckets that can hold customers of build partition ``partition`` of ``partitions``.

    A customer is in store bucket ``h % buckets`` and build partition ``h % partitions``; both
    are ``h`` modulo ``g = gcd(buckets, partitions)`` again, so the partition's customers sit in
    the store buckets congruent to ``partition`` modulo ``g`` (all of them when ``g`` is 1).
    """
    g = math.gcd(buckets, partitions)
    return {b for b in range(buckets) if b % g == partition % g}


def event_files(
    settings: Settings,
    *,
    until: pd.Timestamp | None = None,
    since: pd.Timestamp | None = None,
    partition: tuple[int, int] | None = None,
) -> list[Path]:
    """The store's Parquet files, in a stable order; optionally only those a reader needs.

    ``until``: only months holding events before that instant; ``since``: only months holding
    events at or after it; ``partition`` ``(p, N)``: only the store buckets holding customers
    of build partition ``p`` of ``N`` (:func:`partition_buckets`). Files outside the layout
    are always listed: a reader filters their rows itself. Live events still in the live
    segment are sealed into a Parquet file first (:func:`data_layer.live_segment.seal`), so
    every reader sees every accepted event.
    """
    files = stored_files(settings)
    if until is None and since is None and partition is None:
        return [f.path for f in files]
    wanted = None
    if partition is not None:
        buckets = store_buckets(settings) or 1
        wanted = partition_buckets(partition[0], partition[1], buckets)
    last = None if until is None else _month_of(until - pd.Timedelta(microseconds=1))
    first = None if since is None else _month_of(since)
    out = []
    for f in files:
        if f.month is not None:
            if last is not None and f.month > last:
                continue
            if first is not None and f.month < first:
                continue
            if wanted is not None and f.bucket not in wanted:
                continue
        out.append(f.path)
    return out


def _month_of(instant: pd.Timestamp) -> str:
    return pd.Timestamp(instant).tz_convert("UTC").strftime("%Y-%m")


def relation_sql(files: list[Path]) -> str:
    """A DuckDB ``read_parquet`` over ``files``; the layout's directory names are not columns."""
    listing = ", ".join(f"'{f.as_posix()}'" for f in files)
    return f"read_parquet([{listing}], hive_partitioning = false)"


def events_relation_sql(settings: Settings, **prune) -> str:
    """A DuckDB ``read_parquet`` expression over the store (``prune``: see :func:`event_files`;
    pruning lists fewer files, the caller still filters rows by time or bucket)."""
    files = event_files(settings, **prune)
    if not files:
        if not prune or not event_files(settings):
            raise FileNotFoundError(
                f"no events under {settings.events_dir}: run `omniscore generate` or "
                "`omniscore ingest FILE` first"
            )
        return empty_events_sql()
    return relation_sql(files)


def empty_events_sql() -> str:
    """A relation with the store's columns and no rows (a pruned listing that is empty)."""
    casts = ", ".join(f"NULL::{_DUCK_TYPES[str(f.type)]} AS {f.name}" for f in EVENT_SCHEMA)
    return f"(SELECT {casts} LIMIT 0)"


_DUCK_TYPES = {
    "string": "VARCHAR",
    "timestamp[us, tz=UTC]": "TIMESTAMPTZ",
    "double": "DOUBLE",
    "int64": "BIGINT",
    "int32": "INTEGER",
    "float": "FLOAT",
}


def write_events(
    settings: Settings, table: pa.Table, *, replace: bool = False, buckets: int | None = None
) -> WriteResult:
    """Append canonical events, skipping ids already stored; ``replace`` empties the store.

    ``buckets`` sets the bucket count of a store written for the first time (or replaced);
    a store keeps the count it has. Holds the store's cross-process lock
    (:func:`data_layer.live_segment.store_lock`), so a live append running at the same time
    cannot slip an id in between the duplicate check and the write.
    """
    with live_segment.store_lock(settings):
        if replace:
            live_segment.reset(settings)
            _empty_store(settings)
        else:
            ensure_current_event_ids(settings)
        if store_buckets(settings) is None:
            _set_layout(settings, buckets or DEFAULT_BUCKETS)
        result = _write_events(settings, table)
        _mark_current(settings)
        return result


def reset_events(settings: Settings, buckets: int) -> None:
    """Empty the store (live segment, files, markers) and start a layout of ``buckets``;
    the caller holds the store lock and writes the new events (a generator's replace)."""
    live_segment.reset(settings)
    _empty_store(settings)
    _set_layout(settings, buckets)


def mark_event_ids_current(settings: Settings) -> None:
    """Record that the store's computed ids have today's width (a writer's last step)."""
    _mark_current(settings)


def _empty_store(settings: Settings) -> None:
    """Delete every event file, empty layout folder and the layout marker (lock held)."""
    for old in event_files(settings):
        old.unlink()
    _drop_empty_folders(settings)
    (settings.events_dir / LAYOUT_MARKER).unlink(missing_ok=True)


def _drop_empty_folders(settings: Settings) -> None:
    if not settings.events_dir.exists():
        return
    for folder in sorted(settings.events_dir.glob("month=*/bucket=*")) + sorted(
        settings.events_dir.glob("month=*")
    ):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


ID_MARKER = "event-ids.json"
"""File in ``events/`` saying the store's computed ids are 128-bit (absent: written before)."""


def _marker_path(settings: Settings) -> Path:
    return settings.events_dir / ID_MARKER


def _mark_current(settings: Settings) -> None:
    path = _marker_path(settings)
    if not path.exists():
        settings.events_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"event_id_hex_digits": EVENT_ID_HEX_DIGITS}) + "\n")


def event_ids_current(settings: Settings) -> bool:
    """True when the store's computed ids have today's width (or it holds nothing yet)."""
    if _marker_path(settings).exists():
        return True
    stored = any(settings.events_dir.rglob("*.parquet")) or (
        live_segment.segment_path(settings).exists() and live_segment.pending_count(settings) > 0
    )
    return not stored


def ensure_current_event_ids(settings: Settings) -> int:
    """Migrate a store of 16-digit ids before it is written to; returns the ids rewritten.

    Cheap when the store is current (one file check), so every writer calls it.
    """
    if _marker_path(settings).exists():
        return 0
    if event_ids_current(settings):  # nothing stored yet: whatever is written will be current
        _mark_current(settings)
        return 0
    return migrate_event_ids(settings)


def migrate_event_ids(settings: Settings) -> int:
    """Rewrite a store's 16-digit computed ids as today's 128-bit ones; the ids rewritten.

    An id is rewritten when it is the 16-digit id its row's content was given (the first half
    of the new one; identical rows ranked in store order, as ingest ranks a file's lines). Ids
    a live client chose are kept. Old files are renamed ``*.parquet.legacy`` while the new
    file is written, then deleted, so an interrupted run loses nothing. Run ``omniscore
    features materialize`` afterwards so the live state (keyed by event id) is rebuilt.
    """
    with live_segment.store_lock(settings):
        files = event_files(settings)  # seals the live segment first
        rewritten = 0
        if files:
            table = pq.ParquetDataset(files, partitioning=None).read().cast(EVENT_SCHEMA)
            frame = table.to_pandas()
            ids = frame["event_id"]
            legacy = is_legacy_event_id(ids)
            if legacy.any():
                hashes = ranked_repeats(event_id_hashes(frame[legacy]))
                candidates = event_ids_of(hashes)
                computed = np.char.equal(
                    np.asarray([c[:16] for c in candidates], dtype=str),
                    ids[legacy].to_numpy(dtype=str),
                )
                # Rows of one content may carry its legacy ranks in another order: accept any
                # legacy id that some row of the same content would have been given.
                known = set(c[:16] for c in candidates)
                computed |= np.isin(ids[legacy].to_numpy(dtype=str), list(known))
                new_ids = ids.to_numpy(dtype=object).copy()
                positions = np.flatnonzero(legacy)[computed]
                new_ids[positions] = candidates[computed]
                rewritten = int(computed.sum())
                if rewritten:
                    frame["event_id"] = new_ids
                    out = pa.Table.from_pandas(frame, schema=EVENT_SCHEMA, preserve_index=False)
                    parked = []
                    for old in files:
                        target = old.with_name(old.name + ".legacy")
                        old.rename(target)
                        parked.append(target)
                    write_partitioned(settings, out)
                    for target in parked:
                        target.unlink()
        _mark_current(settings)
        return rewritten


def _write_events(settings: Settings, table: pa.Table) -> WriteResult:
    if table.schema != EVENT_SCHEMA:
        table = table.cast(EVENT_SCHEMA)
    settings.events_dir.mkdir(parents=True, exist_ok=True)
    incoming = table.num_rows
    existing = event_files(settings)
    if not existing and pc.count_distinct(table.column("event_id")).as_py() == incoming:
        # Nothing stored and no repeated id (a fresh simulation): nothing to de-duplicate, so
        # skip DuckDB's anti-join and sort, which cost minutes and gigabytes at 10^7 rows.
        paths = write_partitioned(settings, table)
        return WriteResult(written=incoming, duplicates=0, path=paths[0] if paths else None)
    con = duckdb.connect()
    con.register("batch", table)
    if existing:
        con.execute(f"CREATE TEMP VIEW stored AS SELECT event_id FROM {relation_sql(existing)}")
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
    paths = write_partitioned(settings, fresh)
    return WriteResult(written=fresh.num_rows, duplicates=incoming - fresh.num_rows, path=paths[0])


def layout_keys(table: pa.Table, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Each event's month (``YYYY-MM``, UTC) and store bucket (``hash(customer_id) % B``)."""
    months = month_numbers(table)
    labels = {m: _month_label(m) for m in np.unique(months)}
    return np.array([labels[m] for m in months], dtype=object).astype(str), store_bucket_of(
        table, buckets
    )


def month_numbers(table: pa.Table) -> np.ndarray:
    """Each event's UTC month as months since 1970-01 (integer arithmetic: fast at 10^8)."""
    micros = table.column("event_timestamp").cast(pa.int64()).to_numpy()
    return micros.astype("datetime64[us]").astype("datetime64[M]").astype(np.int64)


def _month_label(number: int) -> str:
    return str(np.datetime64(int(number), "M"))  # 'YYYY-MM'


def store_bucket_of(table: pa.Table, buckets: int) -> np.ndarray:
    """Each event's store bucket, ``hash(customer_id) % buckets`` computed by DuckDB."""
    con = duckdb.connect()
    try:
        con.register("keys_in", table.select(["customer_id"]))
        hashed = BUCKET_HASH_SQL.format(column="customer_id")
        return (
            con.sql(f"SELECT ({hashed} % {int(buckets)})::INTEGER AS b FROM keys_in")
            .to_arrow_table()
            .column("b")
            .to_numpy()
        )
    finally:
        con.close()


def write_partitioned(settings: Settings, table: pa.Table, name: str | None = None) -> list[Path]:
    """Write ``table`` (already de-duplicated) into the layout, one file per month and bucket,
    each named ``name`` (default a fresh batch name); returns the files written.

    Each file is written under a temporary name and renamed into place, and a name is
    replaced whole, so writing the same ``name`` again (a migration resumed) is idempotent.
    """
    buckets = store_buckets(settings) or _set_layout(settings, DEFAULT_BUCKETS)
    name = name or f"batch-{uuid.uuid4().hex[:12]}"
    if table.num_rows == 0:
        return []
    months = month_numbers(table)
    bucket = store_bucket_of(table, buckets)
    labels, month_code = np.unique(months, return_inverse=True)
    key = month_code.astype(np.int64) * buckets + bucket
    order = np.argsort(key, kind="stable")  # keeps each file's rows in input order
    ordered = table.take(pa.array(order))
    key = key[order]
    cuts = np.flatnonzero(np.diff(key)) + 1
    paths = []
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(key)], strict=True):
        month, b = _month_label(labels[key[lo] // buckets]), int(key[lo] % buckets)
        folder = settings.events_dir / f"month={month}" / f"bucket={b:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(
            ordered.slice(lo, hi - lo), tmp, compression="zstd", row_group_size=1_000_000
        )
        tmp.rename(path)
        paths.append(path)
    return paths


def migrate_events(settings: Settings) -> int:
    """Move the files outside the layout (an old flat home, sealed live files) into it;
    returns the events moved.

    Runs under the store lock. Each old file is renamed ``*.parquet.migrating`` (no reader
    lists it), its rows are written into the layout under the old file's name, then it is
    deleted; an interrupted run is finished by the next (the same names are rewritten, so
    no event is written twice). Event ids are unchanged, so re-ingest still recognises them.
    """
    moved = 0
    with live_segment.store_lock(settings):
        ensure_current_event_ids(settings)
        if store_buckets(settings) is None:
            _set_layout(settings, DEFAULT_BUCKETS)
        flat = [f.path for f in stored_files(settings) if f.month is None]
        parked = sorted(settings.events_dir.glob("*.parquet.migrating"))
        for path in flat:
            target = path.with_name(path.name + ".migrating")
            path.rename(target)
            parked.append(target)
        for target in parked:
            table = pq.read_table(target).cast(EVENT_SCHEMA)
            write_partitioned(settings, table, name=target.name.removesuffix(".parquet.migrating"))
            target.unlink()
            moved += table.num_rows
        _mark_current(settings)
    return moved


def read_events(settings: Settings, columns: list[str] | None = None) -> pd.DataFrame:
    """The whole store as a pandas frame (small data and tests; pipelines use DuckDB)."""
    files = event_files(settings)
    if not files:
        return EVENT_SCHEMA.empty_table().to_pandas()
    return pq.ParquetDataset(files, partitioning=None).read(columns=columns).to_pandas()


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


PROFILE_EXTRAS_NAME = "profile_features.json"
"""File in the home declaring the extra profile features its customers table carries."""
PROFILE_EXTRA_KINDS = ("categorical", "numeric")


def write_customers(settings: Settings, customers: pd.DataFrame) -> None:
    """Replace the customers (profile) table (the generator's static profiles).

    Rows get a null ``valid_from``: valid since before any snapshot.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    frame = customers[list(CUSTOMER_SCHEMA.names)].copy()
    frame["valid_from"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
    _write_customer_table(settings, frame, {})


def customers_schema(extras: dict[str, str]) -> pa.Schema:
    """The stored profile table: the canonical columns, ``valid_from`` and declared extras."""
    fields = [*CUSTOMER_SCHEMA, pa.field("valid_from", pa.timestamp("us", tz="UTC"))]
    for name, kind in extras.items():
        fields.append(pa.field(name, pa.string() if kind == "categorical" else pa.float64()))
    return pa.schema(fields)


def _write_customer_table(settings: Settings, frame: pd.DataFrame, extras: dict[str, str]) -> None:
    schema = customers_schema(extras)
    frame = frame.sort_values(["customer_id", "valid_from"], kind="stable", na_position="first")
    table = pa.Table.from_pandas(frame[schema.names], schema=schema, preserve_index=False)
    tmp = settings.customers_path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.rename(settings.customers_path)
    extras_path = settings.home / PROFILE_EXTRAS_NAME
    if extras:
        extras_path.write_text(json.dumps(extras, indent=2) + "\n")
    elif extras_path.exists():
        extras_path.unlink()


def read_profile_extras(settings: Settings) -> dict[str, str]:
    """Extra profile features the home declares: name → ``categorical`` or ``numeric``."""
    path = settings.home / PROFILE_EXTRAS_NAME
    if not path.exists():
        return {}
    return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}


def merge_customers(
    settings: Settings,
    rows: pd.DataFrame,
    extras: dict[str, str],
    provided: list[str] | None = None,
) -> tuple[int, int]:
    """Add validated profile rows (with ``valid_from``); returns (added, duplicates).

    A row equal to a stored one is a duplicate, so loading a file twice adds nothing. A row
    with a stored row's customer and ``valid_from`` but other values replaces it (a corrected
    export). ``provided`` names the columns the file had: the others keep the customer's
    latest stored values (a file of one new attribute does not blank the rest). Extras
    declared earlier stay declared; a name declared again with another kind is an error.
    """
    declared = read_profile_extras(settings)
    for name, kind in extras.items():
        if declared.get(name, kind) != kind:
            raise ValueError(
                f"profile feature {name!r} is stored as {declared[name]}; it cannot become {kind}"
            )
    merged_extras = {**declared, **extras}
    columns = customers_schema(merged_extras).names
    stored = read_customers(settings).reindex(columns=columns)
    incoming = rows.reindex(columns=columns)
    if provided is not None and len(stored):
        latest = (
            stored.sort_values("valid_from", kind="stable", na_position="first")
            .drop_duplicates("customer_id", keep="last")
            .set_index("customer_id")
        )
        for col in columns:
            if col not in provided and col not in ("customer_id", "valid_from"):
                carried = incoming["customer_id"].map(latest[col])
                incoming[col] = incoming[col].where(incoming[col].notna(), carried)
    # (An empty stored table is left out: concat would otherwise guess dtypes from it.)
    both = pd.concat([f for f in (stored, incoming) if len(f)] or [incoming], ignore_index=True)
    for col in ("signup_date", "valid_from"):
        both[col] = pd.to_datetime(both[col], utc=True).astype("datetime64[us, UTC]")
    for name, kind in merged_extras.items():
        both[name] = both[name].astype("float64" if kind == "numeric" else object)
    from_file = np.arange(len(both)) >= len(stored)
    text = both.astype(str)
    identical = text.duplicated(keep="first").to_numpy()
    duplicates = int((identical & from_file).sum())
    kept = both[~identical]
    # Of several rows for one (customer, valid_from), the file's (the later one) wins.
    kept = kept[~text[~identical].duplicated(["customer_id", "valid_from"], keep="last")]
    settings.home.mkdir(parents=True, exist_ok=True)
    _write_customer_table(settings, kept, merged_extras)
    return len(incoming) - duplicates, duplicates


def read_customers(settings: Settings) -> pd.DataFrame:
    """The customers table (every version of each row), or an empty one when only events
    were ingested."""
    if not settings.customers_path.exists():
        return CUSTOMER_SCHEMA.empty_table().to_pandas()
    return pq.read_table(settings.customers_path).to_pandas()


def profile_at(
    customers: pd.DataFrame, customer_ids: np.ndarray, t_us: np.ndarray, columns: list[str]
) -> dict[str, np.ndarray]:
    """Profile values of each (customer, T) pair, point-in-time: from the customer's latest
    row whose ``valid_from`` is strictly before T (a row without ``valid_from`` is valid from
    the start). ``t_us`` is T in UTC microseconds; columns the table lacks are left out."""
    present = [c for c in columns if c in customers]
    ids = np.asarray(customer_ids).astype(str).astype(object)
    if "valid_from" not in customers or customers["valid_from"].isna().all():
        latest = customers.drop_duplicates("customer_id", keep="last").set_index("customer_id")
        return {c: latest[c].reindex(ids).to_numpy(dtype=object) for c in present}
    rows = customers[["customer_id", "valid_from", *present]].copy()
    rows["customer_id"] = rows["customer_id"].astype(str).astype(object)
    valid = pd.to_datetime(rows["valid_from"], utc=True).astype("datetime64[us, UTC]")
    # int64 microseconds; "valid from the start" sorts before every T.
    rows["valid_us"] = np.where(
        valid.isna(), np.iinfo(np.int64).min + 1, valid.astype("int64").to_numpy()
    ).astype(np.int64)
    left = pd.DataFrame(
        {"customer_id": ids, "T": np.asarray(t_us, dtype=np.int64), "position": np.arange(len(ids))}
    )
    merged = pd.merge_asof(
        left.sort_values("T", kind="stable"),
        rows.drop(columns="valid_from").sort_values("valid_us", kind="stable"),
        left_on="T",
        right_on="valid_us",
        by="customer_id",
        allow_exact_matches=False,  # a row valid from T is not seen by the snapshot at T
    ).sort_values("position")
    return {c: merged[c].to_numpy(dtype=object) for c in present}
