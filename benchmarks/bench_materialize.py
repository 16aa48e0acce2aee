"""Materialization and online-read benchmark for the Feast store.

Writes a synthetic snapshot set in the feature pipeline's contract format (every catalog
feature, ``--snapshots`` weekly snapshot times per customer), applies the repository and
materializes it with each write path, then times ``get_online_features`` on ``propensity_v1``
for 1 and 100 customers. Feast's own paths are slow, so they run on a ``--feast-sample`` of
customers and are reported as customers per second.

    .venv/bin/python -m benchmarks.bench_materialize --customers 100000

Prints one dict of results. Redis is measured when ``--redis`` is reachable, under a unique
project name whose keys are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import pprint
import shutil
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from data_layer import feast_store
from data_layer.settings import Settings
from feature_repo.catalog import VIEWS, features_of_view
from feature_repo.data_sources import snapshot_path, snapshot_schema

FIRST_SNAPSHOT = datetime(2026, 9, 7, tzinfo=UTC)
STRING_VALUES = ["north", "south", "east", "west", "web", "app", "store", "gold", "silver"]


def synthetic_view(view: str, customers: int, snapshots: int, seed: int) -> pa.Table:
    """Snapshots of one view: realistic mixes of counts, amounts, rates and nulls."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"{i:07d}" for i in range(customers)], dtype=object)
    parts = []
    for k in range(snapshots):
        at = FIRST_SNAPSHOT + timedelta(weeks=k)
        columns: dict[str, object] = {
            "customer_id": ids,
            "event_timestamp": pd.DatetimeIndex([at] * customers),
            "created_timestamp": pd.DatetimeIndex([at + timedelta(hours=2)] * customers),
        }
        for j, feature in enumerate(features_of_view(view)):
            if feature.dtype == "string":
                values = rng.choice(STRING_VALUES, customers).astype(object)
                values[rng.random(customers) < 0.1] = None
            elif j % 3 == 0:  # amounts and days-since: continuous
                values = np.round(rng.gamma(2.0, 40.0, customers), 2)
            elif j % 3 == 1:  # rates
                values = rng.beta(2, 5, customers)
            else:  # counts
                values = rng.poisson(3, customers).astype(float)
            if feature.dtype != "string":
                values[rng.random(customers) < 0.15] = np.nan
            columns[feature.name] = values
        parts.append(pd.DataFrame(columns))
    frame = pd.concat(parts, ignore_index=True)
    return pa.Table.from_pandas(frame, schema=snapshot_schema(view), preserve_index=False)


def write_synthetic(settings: Settings, customers: int, snapshots: int, seed: int = 7) -> None:
    """Write every view's snapshot file for ``customers`` customers into ``settings.home``."""
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    for i, view in enumerate(VIEWS):
        table = synthetic_view(view, customers, snapshots, seed + i)
        pq.write_table(table, snapshot_path(settings.features_dir, view), compression="zstd")


def time_online_reads(settings: Settings, customers: int, repeats: int) -> dict:
    """p50/p99 latency (ms) of ``get_online_features(propensity_v1)`` for 1 and 100 ids."""
    store = feast_store.feature_store(settings)
    service = store.get_feature_service("propensity_v1")
    rng = np.random.default_rng(11)
    out = {}
    for batch in (1, 100):
        timings = []
        for r in range(repeats + 5):
            ids = rng.choice(customers, size=batch, replace=False)
            rows = [{"customer_id": f"{i:07d}"} for i in ids]
            started = time.perf_counter()
            response = store.get_online_features(features=service, entity_rows=rows)
            response.to_dict()
            if r >= 5:  # the first calls warm the registry cache and connections
                timings.append((time.perf_counter() - started) * 1000)
        out[f"get_online_features_{batch}_p50_ms"] = round(float(np.percentile(timings, 50)), 2)
        out[f"get_online_features_{batch}_p99_ms"] = round(float(np.percentile(timings, 99)), 2)
    return out


def _fresh_home(root: Path, name: str, customers: int, snapshots: int, **changes) -> Settings:
    settings = replace(Settings.from_env(root / name), **changes)
    write_synthetic(settings, customers, snapshots)
    feast_store.apply(settings)
    return settings


def _materialize(settings: Settings, end: datetime, method: str) -> tuple[dict, object]:
    """Materialize and summarise: wall seconds, CPU seconds of this process, customers/s."""
    cpu = time.process_time()
    report = feast_store.materialize(settings, end=end, method=method)
    summary = {
        "customers": report.customers,
        "feature_values": report.feature_values,
        "seconds": report.seconds,
        "cpu_seconds": round(time.process_time() - cpu, 2),
        "customers_per_s": round(report.customers_per_second, 1),
    }
    return summary, report


def bench_feast_paths(root: Path, sample: int, snapshots: int, end: datetime) -> dict:
    """Feast's own write paths on ``sample`` customers: materialize, write_to_online_store, push."""
    from feast import FeatureView, PushSource
    from feast.data_source import PushMode

    out: dict = {}
    for method in ("feast", "online_write_batch"):
        settings = _fresh_home(root, f"feast_{method}", sample, snapshots)
        out[f"sqlite_{method}"], _ = _materialize(settings, end, method)

    settings = _fresh_home(root, "feast_write_to_online_store", sample, snapshots)
    store = feast_store.feature_store(settings)
    started = time.perf_counter()
    for view in store.list_feature_views():
        columns = ["customer_id", "event_timestamp", "created_timestamp"] + [
            f.name for f in view.features
        ]
        latest = feast_store.latest_snapshots(
            snapshot_path(settings.features_dir, view.name), columns, None, end
        )
        store.write_to_online_store(view.name, latest.to_pandas())
    seconds = time.perf_counter() - started
    out["sqlite_write_to_online_store"] = {
        "customers": sample,
        "seconds": round(seconds, 3),
        "customers_per_s": round(sample / seconds, 1),
    }

    # push needs a PushSource on the view; register push-fed copies of the views in this
    # benchmark home only (the repository's views read the snapshot files).
    settings = _fresh_home(root, "feast_push", sample, snapshots)
    store = feast_store.feature_store(settings)
    pushed = []
    for view in store.list_feature_views():
        push = PushSource(name=f"{view.name}_push", batch_source=view.batch_source)
        pushed.append(
            FeatureView(
                name=f"{view.name}_pushed",
                entities=[store.get_entity("customer")],
                schema=view.entity_columns + view.features,
                source=push,
                ttl=view.ttl,
            )
        )
        pushed.append(push)
    store.apply(pushed)
    started = time.perf_counter()
    for view in store.list_feature_views():
        if not view.name.endswith("_pushed"):
            continue
        base = view.name.removesuffix("_pushed")
        columns = ["customer_id", "event_timestamp", "created_timestamp"] + [
            f.name for f in view.features
        ]
        latest = feast_store.latest_snapshots(
            snapshot_path(settings.features_dir, base), columns, None, end
        )
        store.push(f"{base}_push", latest.to_pandas(), to=PushMode.ONLINE)
    seconds = time.perf_counter() - started
    out["sqlite_push"] = {
        "customers": sample,
        "seconds": round(seconds, 3),
        "customers_per_s": round(sample / seconds, 1),
    }
    return out


def bench_redis(root: Path, url: str, customers: int, sample: int, snapshots: int, end, repeats):
    """Bulk and Feast's own materialization into Redis, under throwaway project names."""
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001 - report why Redis was skipped
        return {"redis": f"skipped: {exc}"}
    out: dict = {}
    for name, n, method in (("redis_bulk", customers, "bulk"), ("redis_feast", sample, "feast")):
        project = f"bench_{uuid.uuid4().hex[:10]}"
        settings = _fresh_home(root, name, n, snapshots, online_store=url, feast_project=project)
        try:
            out[name], _ = _materialize(settings, end, method)
            if method == "bulk":
                out[name].update(time_online_reads(settings, n, repeats))
        finally:
            feast_store.feature_store(settings).teardown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--snapshots", type=int, default=2, help="snapshot times per customer")
    parser.add_argument(
        "--feast-sample", type=int, default=2_000, help="customers for Feast's own paths"
    )
    parser.add_argument("--repeats", type=int, default=200, help="online reads per batch size")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="'' to skip Redis")
    parser.add_argument("--skip-feast", action="store_true", help="skip Feast's slow paths")
    parser.add_argument("--root", default=None, help="keep the homes here instead of a tmp dir")
    args = parser.parse_args()

    root = Path(args.root or tempfile.mkdtemp(prefix="omniscore-bench-"))
    end = FIRST_SNAPSHOT + timedelta(weeks=args.snapshots)
    results: dict = {
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "customers": args.customers,
        "snapshots_per_customer": args.snapshots,
        "features": sum(len(features_of_view(v)) for v in VIEWS),
    }
    try:
        started = time.perf_counter()
        settings = _fresh_home(root, "bulk", args.customers, args.snapshots)
        results["write_synthetic_and_apply_s"] = round(time.perf_counter() - started, 2)
        results["sqlite_bulk"], report = _materialize(settings, end, "bulk")
        results["sqlite_bulk"]["per_view_s"] = {v.view: v.seconds for v in report.views}
        again = feast_store.materialize(settings, end=end + timedelta(days=1), method="bulk")
        results["sqlite_bulk"]["incremental_rerun_rows"] = again.rows
        size = settings.online_store_path.stat().st_size
        results["sqlite_bulk"]["online_store_mb"] = round(size / 2**20)
        results["sqlite_bulk"].update(time_online_reads(settings, args.customers, args.repeats))
        if not args.skip_feast:
            results.update(bench_feast_paths(root, args.feast_sample, args.snapshots, end))
        if args.redis:
            results.update(
                bench_redis(
                    root,
                    args.redis,
                    args.customers,
                    args.feast_sample,
                    args.snapshots,
                    end,
                    args.repeats,
                )
            )
    finally:
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    pprint.pprint(results, sort_dicts=False)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
