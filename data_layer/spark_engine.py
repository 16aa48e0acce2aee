"""The feature build (and any per-bucket job) on Spark: the project's own code in each task.

``omniscore features build --engine spark`` splits customers into hash buckets, as the
partitioned build does (:mod:`data_layer.partitioned_build`), and runs
``groupBy(bucket).cogroup(...).applyInPandas(fn)`` where ``fn`` is
:func:`data_layer.feature_pipeline.compute_snapshots` on the bucket's events and profile
rows: there is no second implementation of a feature. The BG/NBD population parameters of
each instant (the one input shared by all customers) are fitted once on the driver, by the
same :func:`data_layer.feature_pipeline.bgnbd_population` over the event files (a streamed
aggregation of purchase days), and shipped to every task. Spark writes the rows as Parquet to a
staging directory of the home; the driver then streams them, row group by row group, into
the per-view files the Feast offline store reads (the same layout as the embedded build,
same-T rows replaced, other instants kept).

:func:`run_buckets` is the generic form (one task per bucket calling a function that returns
an Arrow table), used by batch scoring (:func:`serving.spark_batch.score_batch_spark`). The master
URL is :attr:`data_layer.settings.Settings.spark_master` (``OMNISCORE_SPARK_MASTER``,
``local[2]`` by default). Spark is the optional extra ``omniscore[spark]`` and needs Java 17.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_layer.bgnbd import BGNBDParams
from data_layer.event_store import event_files, events_relation_sql
from data_layer.feature_pipeline import (
    FEATURE_EVENT_COLUMNS,
    bgnbd_population,
    compute_snapshots,
    fitted_params,
    snapshot_instants,
    write_bgnbd_params,
)
from data_layer.partitioned_build import INSTANTS_PER_PASS, SnapshotWriter, partition_count
from data_layer.schema import CUSTOMER_SCHEMA
from data_layer.settings import Settings
from feature_repo.catalog import FEATURES

EVENT_COLUMNS = list(FEATURE_EVENT_COLUMNS)
"""The event columns :func:`compute_snapshots` reads (the only ones Spark ships to tasks)."""

BUCKET = "_bucket"


def spark_available() -> str | None:
    """Why Spark cannot run here (pyspark or Java missing), or None when it can."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed: `make install EXTRAS=spark` (the omniscore[spark] extra)"
    java = Path(os.environ["JAVA_HOME"]) / "bin" / "java" if os.environ.get("JAVA_HOME") else None
    if not (java and java.exists()) and shutil.which("java") is None:
        return "no Java runtime: install one (Debian: apt-get install openjdk-17-jre-headless)"
    return None


def spark_session(settings: Settings, conf: Mapping[str, str] | None = None):
    """A Spark session on the home's master URL, UTC, Arrow transfers, Python of this venv.

    ``conf`` adds or overrides Spark settings (tests use a small shuffle and no UI).
    """
    reason = spark_available()
    if reason:
        raise RuntimeError(f"--engine spark: {reason}")
    from pyspark.sql import SparkSession

    # Executors run the project's code, so they need this interpreter and its packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName("omniscore")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.shuffle.partitions", "8")
        # A bucket is a task: coalescing small shuffle partitions would run them all in one.
        .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(settings.home / "tmp" / "spark"))
    )
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # Commands print OmniScore's own output; Spark's warnings stay out of the terminal.
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def bucket_column(partitions: int):
    """Spark's bucket of ``customer_id`` (Spark's own hash: buckets need not match DuckDB's,
    only be a function of the customer)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64("customer_id"), F.lit(partitions)).cast("int")


def _spark_schema(schema: pa.Schema):
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def snapshot_schema() -> pa.Schema:
    """Arrow schema of the rows :func:`compute_snapshots` returns."""
    fields = [
        pa.field("customer_id", pa.string()),
        pa.field("event_timestamp", pa.timestamp("us", tz="UTC")),
    ]
    for feature in FEATURES:
        fields.append(
            pa.field(feature.name, pa.string() if feature.dtype == "string" else pa.float64())
        )
    return pa.schema(fields)


def _utc(column: pd.Series) -> pd.Series:
    """A Spark timestamp column (naive UTC in the session time zone) as aware UTC."""
    stamps = pd.to_datetime(column)
    stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
    return stamps.astype("datetime64[us, UTC]")


def _snapshots_of_bucket(
    events: pd.DataFrame,
    customers: pd.DataFrame,
    times: Sequence[pd.Timestamp],
    bgnbd_params: dict[pd.Timestamp, BGNBDParams | None],
) -> pd.DataFrame:
    """One Spark task: the bucket's snapshots by the project's own :func:`compute_snapshots`."""
    events = events.drop(columns=BUCKET, errors="ignore")
    customers = customers.drop(columns=BUCKET, errors="ignore")
    if events.empty and customers.empty:
        return pd.DataFrame({f.name: pd.Series(dtype=object) for f in snapshot_schema()})
    events = events.reindex(columns=EVENT_COLUMNS)
    events["event_timestamp"] = _utc(events["event_timestamp"])
    if customers.empty:
        customers = CUSTOMER_SCHEMA.empty_table().to_pandas()
    for column in ("signup_date", "valid_from"):
        if column in customers:
            customers[column] = _utc(customers[column])
    parts = [
        compute_snapshots(
            events, customers, times[i : i + INSTANTS_PER_PASS], bgnbd_params=bgnbd_params
        )
        for i in range(0, len(times), INSTANTS_PER_PASS)
    ]
    frame = pd.concat(parts, ignore_index=True)
    # Spark's Arrow conversion takes plain object strings and float64.
    for f in snapshot_schema():
        if pa.types.is_string(f.type):
            frame[f.name] = frame[f.name].astype(object).where(frame[f.name].notna(), None)
    return frame


@dataclass(frozen=True)
class SparkBuild:
    """What one Spark feature build wrote, and the Spark stage times of its job."""

    partitions: int
    rows: int
    customers: int
    files: list[str]
    seconds: float
    stages: list[dict] = field(default_factory=list)


def build_features_spark(
    settings: Settings,
    times: Sequence[datetime | str | pd.Timestamp],
    partitions: int | None = None,
    conf: Mapping[str, str] | None = None,
) -> SparkBuild:
    """The feature build on Spark; the same rows as the embedded build, in the same files."""
    began = time.perf_counter()
    stamps = snapshot_instants(times)
    if not stamps:
        raise ValueError("no snapshot times given")
    files = event_files(settings)  # seals live events first, as every reader does
    if not files:
        raise FileNotFoundError(
            f"no events under {settings.events_dir}: run `omniscore generate` or "
            "`omniscore ingest FILE` first"
        )
    # The population's BG/NBD parameters, on the driver, before any task: shared by all buckets.
    fits = bgnbd_population(events_relation_sql(settings), stamps)
    params = fitted_params(fits)
    spark = spark_session(settings, conf)
    count = partitions or max(partition_count(settings, len(stamps)), 2)
    events = spark.read.parquet(*[f.as_posix() for f in files]).select(*EVENT_COLUMNS)
    events = events.withColumn(BUCKET, bucket_column(count))
    if settings.customers_path.exists():
        customers = spark.read.parquet(settings.customers_path.as_posix())
    else:
        customers = spark.createDataFrame([], _spark_schema(CUSTOMER_SCHEMA))
    customers = customers.withColumn(BUCKET, bucket_column(count))

    def task(left: pd.DataFrame, right: pd.DataFrame) -> pd.DataFrame:
        return _snapshots_of_bucket(left, right, stamps, params)

    result = (
        events.groupBy(BUCKET)
        .cogroup(customers.groupBy(BUCKET))
        .applyInPandas(task, schema=_spark_schema(snapshot_schema()))
    )
    stage = settings.home / "tmp" / f"spark-build-{uuid.uuid4().hex[:12]}"
    listener = _StageTimes(spark)
    try:
        result.write.parquet(stage.as_posix())
        writer = SnapshotWriter(settings, stamps, datetime.now(UTC))
        rows, customer_ids = 0, set()
        try:
            for frame in _staged_frames(stage):
                # Parquet from Spark reads back as naive UTC; the embedded build's are aware.
                stamps = _utc(frame["event_timestamp"])
                frame["event_timestamp"] = stamps.astype("datetime64[ns, UTC]")
                for f in snapshot_schema():
                    if pa.types.is_string(f.type):
                        frame[f.name] = frame[f.name].astype("string")
                frame["customer_id"] = frame["customer_id"].astype(str).astype(object)
                writer.write(frame)
                rows += len(frame)
                customer_ids.update(frame["customer_id"].unique())
        except BaseException:
            writer.abort()
            raise
        written = writer.close()
        write_bgnbd_params(settings, fits)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return SparkBuild(
        partitions=count,
        rows=rows,
        customers=len(customer_ids),
        files=written,
        seconds=time.perf_counter() - began,
        stages=listener.stages(),
    )


def _staged_frames(stage: Path) -> Iterator[pd.DataFrame]:
    """Spark's output, one row group at a time (never the whole job's rows)."""
    for part in sorted(stage.glob("*.parquet")):
        source = pq.ParquetFile(part)
        for group in range(source.num_row_groups):
            yield source.read_row_group(group).to_pandas()


def run_buckets(
    settings: Settings,
    partitions: int,
    fn: Callable[[int, int], pa.Table],
    schema: pa.Schema,
    out: Path,
    conf: Mapping[str, str] | None = None,
) -> tuple[int, list[dict]]:
    """Run ``fn(bucket, partitions)`` for every bucket as Spark tasks; write its rows to
    ``out`` (Parquet, ``schema``). Returns the rows written and the Spark stage times."""
    spark = spark_session(settings, conf)
    buckets = spark.range(partitions).withColumnRenamed("id", BUCKET).repartition(partitions)

    def task(frame: pd.DataFrame) -> pd.DataFrame:
        return fn(int(frame[BUCKET].iloc[0]), partitions).cast(schema).to_pandas()

    result = buckets.groupBy(BUCKET).applyInPandas(task, schema=_spark_schema(schema))
    stage = settings.home / "tmp" / f"spark-run-{uuid.uuid4().hex[:12]}"
    listener = _StageTimes(spark)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    rows = 0
    try:
        result.write.parquet(stage.as_posix())
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for part in sorted(stage.glob("*.parquet")):
                source = pq.ParquetFile(part)
                for group in range(source.num_row_groups):
                    table = source.read_row_group(group, columns=schema.names)
                    writer.write_table(table.cast(schema))
                    rows += table.num_rows
        tmp.replace(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        tmp.unlink(missing_ok=True)
    return rows, listener.stages()


class _StageTimes:
    """Durations of the Spark stages completed after it was made (from the status tracker)."""

    def __init__(self, spark) -> None:
        self.spark = spark
        self.tracker = spark.sparkContext.statusTracker()
        self.before = set(self._all_stage_ids())

    def _all_stage_ids(self) -> list[int]:
        ids: list[int] = []
        for job in self.tracker.getJobIdsForGroup(None):
            info = self.tracker.getJobInfo(job)
            if info is not None:
                ids.extend(info.stageIds)
        return ids

    def stages(self) -> list[dict]:
        """Each stage run since: id, name, tasks, seconds (submission to completion) and the
        tasks' summed run time."""
        jvm_tracker = self.spark.sparkContext._jsc.sc().statusStore()
        out = []
        for stage_id in sorted(set(self._all_stage_ids()) - self.before):
            try:
                data = jvm_tracker.lastStageAttempt(stage_id)
            except Exception:  # a stage the status store already evicted
                continue
            submitted, completed = data.submissionTime(), data.completionTime()
            if not (submitted.isDefined() and completed.isDefined()):
                continue  # skipped: its shuffle output was reused
            out.append(
                {
                    "stage": stage_id,
                    "name": str(data.name()),
                    "tasks": int(data.numTasks()),
                    "seconds": (completed.get().getTime() - submitted.get().getTime()) / 1000,
                    "executor_run_seconds": int(data.executorRunTime()) / 1000,
                }
            )
        return out
