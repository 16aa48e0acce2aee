"""Feature build benchmark: 26 weekly point-in-time snapshots over the synthetic event store.

Issue target: 10 million events and 26 weekly snapshots for 100k customers in under 2 minutes
on 2 cores. Prints one JSON object (the last line) for ``benchmarks.run``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd

from data_layer.event_store import event_count
from data_layer.feature_pipeline import build_features
from data_layer.settings import Settings
from omniscore.pipeline import PipelineOptions, run_pipeline


def run(customers: int, days: int, weeks: int, home: Path) -> dict:
    """Generate (unless the home already holds events), then time one full feature build."""
    settings = Settings.from_env(home)
    run_pipeline(settings, "generate", PipelineOptions(customers=customers, days=days, seed=7))
    events = event_count(settings)
    began = time.perf_counter()
    end = pd.Timestamp("2026-06-29", tz="UTC")
    start = end - pd.Timedelta(weeks=weeks - 1)
    report = build_features(settings, start=start, end=end, every="7D")
    seconds = time.perf_counter() - began
    return {
        "benchmark": "features_build",
        "customers": customers,
        "events": events,
        "snapshots": len(report.snapshots),
        "rows": report.rows,
        "seconds": round(seconds, 1),
        "events_per_second": round(events / seconds),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
        "target_seconds": 120,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--weeks", type=int, default=26)
    parser.add_argument("--home", default=None, help="reuse an existing home's events")
    args = parser.parse_args()
    home = Path(args.home) if args.home else Path(tempfile.mkdtemp(prefix="bench-features-"))
    print(json.dumps(run(args.customers, args.days, args.weeks, home)))


if __name__ == "__main__":
    main()
