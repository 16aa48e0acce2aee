"""Erasure benchmark: time to forget 1,000 customers from a home of ``--customers``.

Builds a complete embedded home (generated events and profiles with ground truth, weekly
feature snapshots, Feast applied and materialized into the SQLite online store, the live
state bootstrapped), then runs :func:`data_layer.erasure.forget` once for ``--forget``
customers drawn with a fixed seed: one request, one pass per store. Reports the setup
timings, the request's wall time, the seconds and rows of each store, and checks afterwards
that the event store and the snapshots hold none of them.

    .venv/bin/python -m benchmarks.bench_forget --customers 100000 --days 120

Prints one dict of results (its last line is JSON, for ``benchmarks/run.py``).
"""

from __future__ import annotations

import argparse
import json
import pprint
import shutil
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--weeks", type=int, default=4, help="weekly snapshots to build")
    parser.add_argument("--forget", type=int, default=1000, help="customers in the request")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--home", type=Path, default=None, help="keep the home here")
    args = parser.parse_args()

    from data_layer.erasure import forget
    from data_layer.feast_store import apply, materialize
    from data_layer.feature_pipeline import build_features, default_snapshot_range
    from data_layer.settings import Settings
    from data_layer.synthetic import generate, write_generated

    root = args.home or Path(tempfile.mkdtemp(prefix="omniscore-bench-forget-"))
    shutil.rmtree(root, ignore_errors=True)
    settings = Settings.from_env(root)
    settings.ensure_dirs()
    setup: dict[str, float] = {}
    mark = time.perf_counter()
    data = generate(args.customers, args.days, args.seed)
    write_generated(settings, data)
    setup["generate"] = time.perf_counter() - mark
    mark = time.perf_counter()
    start, end = default_snapshot_range(settings, weeks=args.weeks)
    build_features(settings, start, end)
    setup["features_build"] = time.perf_counter() - mark
    mark = time.perf_counter()
    apply(settings)
    report = materialize(settings)
    setup["apply_materialize_live_state"] = time.perf_counter() - mark
    del data, report

    con = duckdb.connect()
    # Flat files and the month/bucket layout alike (directory names are not columns).
    events_glob = (settings.events_dir / "**" / "*.parquet").as_posix()
    events = con.execute(
        f"SELECT count(*) FROM read_parquet('{events_glob}', hive_partitioning = false)"
    ).fetchone()[0]
    rng = np.random.default_rng(args.seed)
    width = max(6, len(str(args.customers - 1)))
    chosen = rng.choice(args.customers, size=args.forget, replace=False)
    ids = [f"C{i:0{width}d}" for i in sorted(chosen)]
    home_bytes = _size(settings.home)

    stores: dict[str, dict[str, float]] = {}
    last = time.perf_counter()

    def progress(store: str, rows: int) -> None:
        nonlocal last
        now = time.perf_counter()
        entry = stores.setdefault(store, {"seconds": 0.0, "rows": 0})
        entry["seconds"] = round(entry["seconds"] + now - last, 2)
        entry["rows"] += rows
        last = now

    began = time.perf_counter()
    receipt = forget(settings, ids, progress=progress)
    seconds = time.perf_counter() - began

    listing = ", ".join(f"'{i}'" for i in ids)
    left = con.execute(
        f"SELECT count(*) FROM read_parquet('{events_glob}', hive_partitioning = false) "
        f"WHERE customer_id IN ({listing})"
    ).fetchone()[0]
    features_glob = (settings.features_dir / "*.parquet").as_posix()
    left += con.execute(
        f"SELECT count(*) FROM read_parquet('{features_glob}', union_by_name=true) "
        f"WHERE customer_id IN ({listing})"
    ).fetchone()[0]
    con.close()
    result = {
        "benchmark": "forget",
        "customers": args.customers,
        "days": args.days,
        "weekly_snapshots": args.weeks,
        "events": int(events),
        "home_mb": round(home_bytes / 2**20, 1),
        "forgotten_customers": len(ids),
        "forget_seconds": round(seconds, 2),
        "rows_removed": int(sum(receipt.stores.values())),
        "rows_left_after": int(left),
        "stores": stores,
        "setup_seconds": {k: round(v, 1) for k, v in setup.items()},
    }
    if args.home is None:
        shutil.rmtree(root, ignore_errors=True)
    pprint.pprint(result, sort_dicts=False)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
