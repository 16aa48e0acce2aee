"""Batch scoring: every customer of the offline store's latest snapshots, as ``/score`` would.

``omniscore score-batch --out scores.parquet`` calls :func:`score_batch`. Features come from
the snapshot files Feast's offline store reads, taking per view the latest snapshot of each
customer up to ``as_of`` (what materialization puts online, so batch and online scores agree),
and are scored by the same :func:`serving.scoring.score` as the service.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from data_layer.feast_store import CREATED, JOIN_KEY, TIMESTAMP, feature_store, latest_snapshots
from data_layer.settings import Settings
from feature_repo.data_sources import snapshot_path
from serving.online import MISSING_TIMESTAMP, FeatureBatch, FeatureLayout, empty_batch
from serving.scoring import ModelSet, load_model_set, score, to_table

CHUNK_ROWS = 200_000
"""Customers scored per chunk (bounds memory; one chunk holds a few hundred MB at most)."""


@dataclass(frozen=True)
class BatchReport:
    """What :func:`score_batch` wrote and how fast."""

    out: str
    customers: int
    known: int
    versions: dict[str, str]
    as_of: str
    read_seconds: float
    score_seconds: float
    write_seconds: float

    @property
    def seconds(self) -> float:
        """Wall time of the whole job."""
        return self.read_seconds + self.score_seconds + self.write_seconds

    @property
    def customers_per_second(self) -> float:
        """Customers scored per second of scoring (all three models)."""
        return self.customers / self.score_seconds if self.score_seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        """Plain dict with the derived rates, for printing or JSON."""
        out = asdict(self)
        out.update(
            seconds=round(self.seconds, 3),
            customers_per_second=round(self.customers_per_second, 1),
        )
        return out


def offline_batch(
    settings: Settings,
    layout: FeatureLayout,
    as_of: datetime | None = None,
    bucket: tuple[int, int] | None = None,
) -> FeatureBatch:
    """Every customer's latest snapshot of each view at or before ``as_of`` (default now).

    Customers are sorted by id; one absent from a view has missing values and timestamp
    there, exactly as the online store would answer for them. ``bucket`` ``(b, n)`` takes
    only the customers of hash bucket ``b`` of ``n``, reading only their rows.
    """
    end = as_of or datetime.now(UTC)
    tables = {}
    for view, names in layout.views.items():
        columns = [JOIN_KEY, TIMESTAMP, CREATED, *names]
        tables[view] = latest_snapshots(
            snapshot_path(settings.features_dir, view), columns, None, end, bucket
        )
    ids = pa.chunked_array(
        [t.column(JOIN_KEY).combine_chunks() for t in tables.values()], type=pa.string()
    )
    customers = pc.unique(ids).sort()
    batch = empty_batch(layout, customers.to_pylist())
    column = layout.index()
    strings = set(layout.strings)
    for v, (view, table) in enumerate(tables.items()):
        if table.num_rows == 0:
            continue
        rows = pc.index_in(table.column(JOIN_KEY), value_set=customers).to_numpy()
        seconds = (
            table.column(TIMESTAMP).cast(pa.timestamp("s", tz="UTC")).cast(pa.int64()).to_numpy()
        )
        batch.timestamps[rows, v] = seconds
        for name in layout.views[view]:
            values = table.column(name)
            if name in strings:
                batch.strings[name][rows] = np.asarray(values.to_pylist(), dtype=object)
            else:
                batch.numeric[rows, column[name]] = values.cast(pa.float64()).to_numpy(
                    zero_copy_only=False
                )
    batch.known = (batch.timestamps != MISSING_TIMESTAMP).any(axis=1)
    return batch


def score_frame(models: ModelSet, batch: FeatureBatch, explain: bool = False) -> pa.Table:
    """Scores of a batch as a flat table, chunked; explanations as a JSON text column."""
    parts = []
    for lo in range(0, len(batch), CHUNK_ROWS):
        part = _slice(batch, lo, min(lo + CHUNK_ROWS, len(batch)))
        scores = score(models, part, explain=explain)
        table = to_table(scores)
        if explain:
            text = [None if e is None else json.dumps(e) for e in scores.explanations]
            table = table.append_column("explanation", pa.array(text, type=pa.string()))
        parts.append(table)
    if not parts:
        return to_table(score(models, batch, explain=False))
    return pa.concat_tables(parts)


def batch_partition_count(settings: Settings, layout: FeatureLayout) -> int:
    """Customer buckets that keep one bucket's snapshots (every instant, uncompressed) and
    its feature batch under the build memory budget (``OMNISCORE_BUILD_MEMORY_MB``)."""
    total = 0
    for view in layout.views:
        path = snapshot_path(settings.features_dir, view)
        if path.exists():
            meta = pq.ParquetFile(path).metadata
            total += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    # Arrow's sort and pandas copies hold about three times the uncompressed rows.
    room = settings.build_memory_mb * 2**20 // 3
    return max(1, -(-3 * total // room))


def score_partition(
    settings: Settings,
    models: ModelSet,
    end: datetime,
    bucket: tuple[int, int] | None,
    explain: bool = False,
) -> pa.Table:
    """Scores of one customer bucket (all customers when ``bucket`` is None): the unit of
    work of the partitioned and the Spark batch (:func:`serving.spark_batch.score_batch_spark`)."""
    return score_frame(models, offline_batch(settings, models.layout, end, bucket), explain)


def score_batch_partitioned(
    settings: Settings,
    out: Path,
    models: ModelSet,
    end: datetime,
    partitions: int,
    explain: bool = False,
    record: Callable[[pa.Table], object] | None = None,
) -> BatchReport:
    """:func:`score_batch` one customer bucket at a time, appending each bucket's scores to
    ``out``: memory holds one bucket's snapshots, not the store's. Rows are sorted by
    customer within each bucket. ``record`` receives each bucket's scores (the score log)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    writer = None
    customers = known = 0
    seconds = {"read": 0.0, "score": 0.0, "write": 0.0}
    try:
        for index in range(partitions):
            began = time.perf_counter()
            batch = offline_batch(settings, models.layout, end, (index, partitions))
            read = time.perf_counter()
            table = score_frame(models, batch, explain=explain)
            scored = time.perf_counter()
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            if table.num_rows:
                writer.write_table(table)
                if record is not None:
                    record(table)
            customers += len(batch)
            known += int(batch.known.sum())
            seconds["read"] += read - began
            seconds["score"] += scored - read
            seconds["write"] += time.perf_counter() - scored
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    tmp.replace(out)
    return BatchReport(
        out=str(out),
        customers=customers,
        known=known,
        versions=models.versions,
        as_of=end.isoformat(),
        read_seconds=round(seconds["read"], 3),
        score_seconds=round(seconds["score"], 3),
        write_seconds=round(seconds["write"], 3),
    )


def score_batch(
    settings: Settings,
    out: Path,
    explain: bool = False,
    as_of: datetime | None = None,
    models: ModelSet | None = None,
    log_scores: bool = True,
) -> BatchReport:
    """Score every customer of the latest snapshots with the champions; write Parquet.

    The columns are those of ``POST /score`` flattened (``propensity_probability``,
    ``propensity_score``, ``propensity_band``, the same for churn, ``segment_id``,
    ``segment_name``, ``known``, ``feature_timestamp``, ``<model>_version``), plus
    ``explanation`` (JSON) when ``explain``. With ``log_scores`` (and the score log on),
    every score is also recorded in the score log, stamped ``as_of``. Returns a
    :class:`BatchReport`.
    """
    end = as_of or datetime.now(UTC)
    models = models or load_model_set(settings, feature_store(settings))
    partitions = batch_partition_count(settings, models.layout)
    if partitions > 1:
        record = (lambda part: record_batch(settings, part, end)) if log_scores else None
        return score_batch_partitioned(settings, out, models, end, partitions, explain, record)
    started = time.perf_counter()
    batch = offline_batch(settings, models.layout, end)
    read = time.perf_counter()
    table = score_frame(models, batch, explain=explain)
    scored = time.perf_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    tmp.replace(out)
    if log_scores:
        record_batch(settings, table, end)
    written = time.perf_counter()
    return BatchReport(
        out=str(out),
        customers=len(batch),
        known=int(batch.known.sum()),
        versions=models.versions,
        as_of=end.isoformat(),
        read_seconds=round(read - started, 3),
        score_seconds=round(scored - read, 3),
        write_seconds=round(written - scored, 3),
    )


def record_batch(settings: Settings, table: pa.Table, scored_at: datetime) -> int:
    """Record a table of :func:`score_frame` in the score log, stamped ``scored_at``; waits
    until it is written. Returns the rows written (0 when the log is off)."""
    from data_layer.score_log import ScoreLog

    log = ScoreLog.open(settings) if table.num_rows else None
    if log is None:
        return 0
    try:
        for lo in range(0, table.num_rows, CHUNK_ROWS):
            part = table.slice(lo, CHUNK_ROWS)
            column = {name: part.column(name).to_numpy(zero_copy_only=False)
                      for name in part.column_names if name != "explanation"}  # fmt: skip
            versions = {m: str(column[f"{m}_version"][0]) for m in ("propensity", "churn",
                                                                     "segments")}  # fmt: skip
            log.record(
                "batch",
                scored_at,
                column["customer_id"].tolist(),
                column["known"],
                {m: column[f"{m}_probability"] for m in ("propensity", "churn")},
                {m: column[f"{m}_band"] for m in ("propensity", "churn")},
                column["segment_id"],
                column["segment_name"],
                versions,
            )
    finally:
        log.close()
    return log.written


def _slice(batch: FeatureBatch, lo: int, hi: int) -> FeatureBatch:
    if lo == 0 and hi == len(batch):
        return batch
    return FeatureBatch(
        customer_ids=batch.customer_ids[lo:hi],
        numeric=batch.numeric[lo:hi],
        strings={k: v[lo:hi] for k, v in batch.strings.items()},
        timestamps=batch.timestamps[lo:hi],
        known=batch.known[lo:hi],
    )
