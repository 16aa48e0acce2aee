"""The feature build in customer partitions: memory bounded by a setting, not by the customers.

Customers are independent of each other: every feature of a customer at T reads only that
customer's events and profile rows. So the build splits customers into ``N`` buckets by a
stable hash of ``customer_id`` (:func:`bucket_sql`), runs the same
:func:`data_layer.feature_pipeline.compute_snapshots` on each bucket's events (DuckDB reads
only the event files of the store buckets that hold the bucket's customers, with the bucket
as a filter, so one bucket's events are in memory at a time) and
appends each bucket's rows to the per-view Parquet files through streaming writers. The rows
and values are those of the one-pass build; only the order of rows in the files differs
(sorted by customer and T within each bucket). The one thing a customer's features share with
the others, the BG/NBD population parameters of each instant, is fitted once over the whole
store before the bucket pass (:func:`data_layer.feature_pipeline.bgnbd_population`, an
aggregation DuckDB streams), and given to every bucket.

``N`` comes from the memory budget ``OMNISCORE_BUILD_MEMORY_MB``
(:attr:`data_layer.settings.Settings.build_memory_mb`) and the size of the store
(:func:`partition_count`). The Spark engine (:mod:`data_layer.spark_engine`) uses the same
buckets, one Spark task per bucket.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_layer.bgnbd import BGNBDParams
from data_layer.event_store import BUCKET_HASH_SQL, event_count, events_relation_sql, read_customers
from data_layer.feature_pipeline import (
    SNAPSHOT_KEY,
    _view_schema,
    bgnbd_population,
    build_events_sql,
    compute_snapshots,
    fitted_params,
    snapshot_instants,
    write_bgnbd_params,
)
from data_layer.settings import Settings
from feature_repo.catalog import VIEWS, features_of_view

INSTANTS_PER_PASS = 26
"""Snapshot instants computed together for one bucket: the window-sum arrays of a pass are
(boundaries x customers), so a long history goes in passes of this many instants."""

BYTES_PER_CUSTOMER_INSTANT = 6_000
"""Working set of :func:`compute_snapshots` per (customer, snapshot instant) of one pass:
about 60 window-sum arrays over ~9 boundaries per instant, plus the output row's ~150
columns and its pandas copies. Measured: 2.0 GB peak (0.6 GB of it the process's base) for
11 buckets of 100k customers x 26 instants, i.e. about 5.9 KB per customer-instant."""

BYTES_PER_EVENT = 200
"""Working set per event of a bucket: DuckDB's event tables and the numpy columns fetched."""

BASE_BYTES = 600 * 2**20
"""What the process holds whatever the partitions: interpreter, libraries, profile table."""


@dataclass(frozen=True)
class PartitionedBuild:
    """What one partitioned build wrote."""

    partitions: int
    rows: int
    customers: int
    files: list[str]
    partition_seconds: list[float]


def bucket_sql(column: str, partitions: int) -> str:
    """SQL of a customer's bucket in ``[0, partitions)``: DuckDB's hash of the id (stable
    across runs and processes, the same for a Parquet column and a registered frame)."""
    return f"({BUCKET_HASH_SQL.format(column=column)} % {int(partitions)})"


def partition_count(settings: Settings, instants: int) -> int:
    """Buckets that keep one bucket's build under the home's memory budget: a power of two,
    so that each maps onto whole buckets of the event store's layout (whose count is a power
    of two too) and reads only their files (:func:`data_layer.event_store.partition_buckets`)."""
    budget = settings.build_memory_mb * 2**20
    customers = _customer_count(settings)
    events = event_count(settings)
    per_pass = min(instants, INSTANTS_PER_PASS)
    need = customers * per_pass * BYTES_PER_CUSTOMER_INSTANT + events * BYTES_PER_EVENT
    room = max(budget - BASE_BYTES, budget // 4)
    wanted = max(1, int(np.ceil(need / room)))
    return 1 << (wanted - 1).bit_length()


def _customer_count(settings: Settings) -> int:
    path = settings.customers_path
    if not path.exists():
        return 0
    return pq.ParquetFile(path).metadata.num_rows


def customer_buckets(customer_ids: pd.Series, partitions: int) -> np.ndarray:
    """Bucket of each id (as :func:`bucket_sql` computes it inside DuckDB)."""
    con = duckdb.connect()
    try:
        con.register("ids_in", pd.DataFrame({"customer_id": customer_ids.astype(str)}))
        table = con.sql(
            f"SELECT {bucket_sql('customer_id', partitions)}::INTEGER AS b FROM ids_in"
        ).to_arrow_table()
    finally:
        con.close()
    return table.column("b").to_numpy()


def partition_sources(
    settings: Settings, partitions: int, times: Sequence[pd.Timestamp]
) -> Iterator[tuple[int, str, pd.DataFrame]]:
    """Each bucket's events and profile rows. The events are a DuckDB relation over only the
    files of the store buckets holding the bucket's customers and the months the instants
    need (:func:`data_layer.feature_pipeline.build_events_sql`), filtered to the bucket."""
    customers = read_customers(settings)
    buckets = customer_buckets(customers["customer_id"], partitions)
    for bucket in range(partitions):
        source = build_events_sql(settings, times, partition=(bucket, partitions))
        yield bucket, source, customers[buckets == bucket].reset_index(drop=True)


def bucket_snapshots(
    source: str,
    customers: pd.DataFrame,
    times: Sequence[pd.Timestamp],
    bgnbd_params: dict[pd.Timestamp, BGNBDParams | None],
    connection: duckdb.DuckDBPyConnection | None = None,
) -> Iterator[pd.DataFrame]:
    """One bucket's snapshots, a pass of :data:`INSTANTS_PER_PASS` instants at a time, with
    the population's BG/NBD parameters (fitted on every customer, not on the bucket's)."""
    for i in range(0, len(times), INSTANTS_PER_PASS):
        yield compute_snapshots(
            source,
            customers,
            times[i : i + INSTANTS_PER_PASS],
            connection=connection,
            bgnbd_params=bgnbd_params,
        )


class SnapshotWriter:
    """Streams snapshot rows into one Parquet file per feature view.

    Like :func:`data_layer.feature_pipeline.write_snapshots`, rows already stored at an
    instant being rebuilt are replaced and rows at other instants kept: the kept rows are
    copied row group by row group from the old file, never read whole. The new files replace
    the old ones only at :meth:`close`, so a failed build leaves the old snapshots.
    """

    def __init__(self, settings: Settings, times: Sequence[pd.Timestamp], built_at: datetime):
        settings.features_dir.mkdir(parents=True, exist_ok=True)
        self.built_at = pd.Timestamp(built_at).tz_convert("UTC")
        self.paths = {view: settings.features_dir / f"{view}.parquet" for view in VIEWS}
        self.writers: dict[str, pq.ParquetWriter] = {}
        self.new_times = pa.array(
            [t.to_pydatetime() for t in times], type=pa.timestamp("us", "UTC")
        )

    @staticmethod
    def _tmp(path: Path) -> Path:
        return path.with_suffix(".partial")

    def _open(self, view: str, schema: pa.Schema) -> pq.ParquetWriter:
        """The view's writer, opened on the first rows (whose schema carries the pandas
        metadata the one-pass file has), after copying the old file's kept rows."""
        path = self.paths[view]
        writer = pq.ParquetWriter(self._tmp(path), schema, compression="zstd")
        self.writers[view] = writer
        if path.exists():
            old = pq.ParquetFile(path)
            for group in range(old.num_row_groups):
                table = old.read_row_group(group).cast(_view_schema(view))
                keep = pc.invert(pc.is_in(table.column("event_timestamp"), self.new_times))
                kept = table.filter(keep)
                if kept.num_rows:
                    writer.write_table(kept.replace_schema_metadata(schema.metadata))
        return writer

    def write(self, snapshots: pd.DataFrame) -> None:
        """Append one batch of snapshot rows (any customers, any instants being built)."""
        if snapshots.empty:
            return
        ordered = snapshots.sort_values(SNAPSHOT_KEY, kind="stable").reset_index(drop=True)
        for view in self.paths:
            columns = [f.name for f in features_of_view(view)]
            part = ordered[SNAPSHOT_KEY + columns].copy()
            part.insert(2, "created_timestamp", self.built_at)
            table = pa.Table.from_pandas(part, schema=_view_schema(view), preserve_index=False)
            writer = self.writers.get(view) or self._open(view, table.schema)
            writer.write_table(table)

    def close(self) -> list[str]:
        """Finish every file and put it in place; the paths written."""
        for view in self.paths:
            if view not in self.writers:  # no rows built: the old rows alone
                self._open(view, _view_schema(view))
        for writer in self.writers.values():
            writer.close()
        for path in self.paths.values():
            self._tmp(path).rename(path)
        return [str(p) for p in self.paths.values()]

    def abort(self) -> None:
        """Drop the partial files, leaving the stored snapshots as they were."""
        for view, writer in self.writers.items():
            writer.close()
            self._tmp(self.paths[view]).unlink(missing_ok=True)


def build_partitioned(
    settings: Settings,
    times: Sequence[pd.Timestamp],
    partitions: int,
    progress: Callable[[int, float], None] | None = None,
) -> PartitionedBuild:
    """Build the snapshots at ``times`` bucket by bucket; write them as the one-pass build does.

    ``progress`` is called with each bucket and its seconds (the benchmark's per-partition
    cost).
    """
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, got {partitions}")
    times = snapshot_instants(times)
    writer = SnapshotWriter(settings, times, datetime.now(UTC))
    con = duckdb.connect()
    # DuckDB's own share of the budget: it spills to disk beyond it rather than growing.
    con.execute(f"SET memory_limit = '{max(64, settings.build_memory_mb // 3)}MB'")
    con.execute(f"SET temp_directory = '{(settings.home / 'tmp' / 'duckdb').as_posix()}'")
    rows = customers = 0
    seconds = []
    try:
        # Over every customer, before any bucket: the buckets share these parameters.
        fits = bgnbd_population(events_relation_sql(settings), times, connection=con)
        params = fitted_params(fits)
        for bucket, source, profiles in partition_sources(settings, partitions, times):
            began = time.perf_counter()
            seen: set[str] = set()
            for snapshots in bucket_snapshots(source, profiles, times, params, connection=con):
                writer.write(snapshots)
                rows += len(snapshots)
                seen.update(snapshots["customer_id"].unique())
            customers += len(seen)
            seconds.append(time.perf_counter() - began)
            if progress is not None:
                progress(bucket, seconds[-1])
    except BaseException:
        writer.abort()
        raise
    finally:
        con.close()
    files = writer.close()
    write_bgnbd_params(settings, fits)
    return PartitionedBuild(
        partitions=partitions,
        rows=rows,
        customers=customers,
        files=files,
        partition_seconds=seconds,
    )
