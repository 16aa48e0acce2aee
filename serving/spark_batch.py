"""Batch scoring on Spark: ``omniscore score-batch --engine spark``.

One Spark task per customer bucket runs :func:`serving.batch.score_partition`, the same code as
the embedded batch (latest snapshot per view at ``as_of``, scored by
:func:`serving.scoring.score`); :func:`data_layer.spark_engine.run_buckets` collects the rows
into one Parquet file. Each task loads the champions from the home's registry once per worker
process.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from data_layer.feast_store import feature_store
from data_layer.settings import Settings
from serving.batch import BatchReport, batch_partition_count, score_frame, score_partition
from serving.online import empty_batch
from serving.scoring import ModelSet, load_model_set

_WORKER_MODELS: dict[str, ModelSet] = {}
"""Champions loaded in this (Spark worker) process, by home: loaded once, not per task."""


def _models_of(settings: Settings, versions: dict[str, str]) -> ModelSet:
    key = f"{settings.home}|{sorted(versions.items())}"
    if key not in _WORKER_MODELS:
        models = load_model_set(settings, feature_store(settings))
        if models.versions != versions:
            # A champion was promoted after the job started: the job scores with one set.
            raise RuntimeError(
                f"champions changed during the Spark batch: {versions} -> {models.versions}"
            )
        _WORKER_MODELS[key] = models
    return _WORKER_MODELS[key]


def score_batch_spark(
    settings: Settings,
    out: Path,
    explain: bool = False,
    as_of: datetime | None = None,
    partitions: int | None = None,
    conf: Mapping[str, str] | None = None,
) -> tuple[BatchReport, list[dict]]:
    """Score every customer of the latest snapshots on Spark; write ``out`` (Parquet).

    The rows are :func:`serving.batch.score_batch`'s (sorted by customer within each
    bucket). Returns the report and the Spark stage times.
    """
    import time

    from data_layer.spark_engine import run_buckets

    began = time.perf_counter()
    end = as_of or datetime.now(UTC)
    models = load_model_set(settings, feature_store(settings))
    versions = dict(models.versions)
    schema = score_frame(models, empty_batch(models.layout, []), explain=False).schema
    if explain:
        schema = schema.append(pa.field("explanation", pa.string()))
    count = partitions or max(batch_partition_count(settings, models.layout), 2)

    def task(bucket: int, total: int) -> pa.Table:
        worker = _models_of(settings, versions)
        return score_partition(settings, worker, end, (bucket, total), explain)

    rows, stages = run_buckets(settings, count, task, schema, Path(out), conf)
    known = _known_count(Path(out))
    seconds = round(time.perf_counter() - began, 3)
    report = BatchReport(
        out=str(out),
        customers=rows,
        known=known,
        versions=versions,
        as_of=end.isoformat(),
        read_seconds=0.0,
        score_seconds=seconds,
        write_seconds=0.0,
    )
    return report, stages


def _known_count(path: Path) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    return int(pc.sum(pq.read_table(path, columns=["known"]).column("known")).as_py() or 0)
