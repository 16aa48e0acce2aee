"""Live state benchmark: ``LiveState.features`` for one customer and ``fold`` of 1,000 events.

A generated world is folded into a fresh state up to an instant t (the state a ``features
materialize`` bootstrap leaves); then the serving path's two operations are timed: features of
one random customer at t, and folds of the events that follow t in batches of 1,000. Prints one
JSON object per backend (the last lines).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_layer.live_state import LiveState
from data_layer.settings import Settings
from data_layer.synthetic import generate


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.array(seconds) * 1000
    return {
        "p50_ms": round(float(np.median(ms)), 2),
        "p99_ms": round(float(np.quantile(ms, 0.99)), 2),
    }


def run(backend: str, customers: int, days: int, calls: int, home: Path) -> dict:
    settings = Settings.from_env(home, env={"OMNISCORE_ONLINE_STORE": backend})
    data = generate(customers, days, seed=11)
    events = data.events.to_pandas()
    at = events["event_timestamp"].max().floor("D") - pd.Timedelta(days=10, hours=9, minutes=41)
    state = LiveState.open(settings)
    try:
        if backend.startswith("redis"):
            state._backend.clear()  # a private database of the benchmark
        state.upsert_profiles(data.customers)
        before, after = (
            events[events["event_timestamp"] < at],
            events[events["event_timestamp"] >= at],
        )
        began = time.perf_counter()
        for part in np.array_split(np.arange(len(before)), max(1, len(before) // 200_000)):
            state.fold(before.iloc[part], at)
        load_seconds = time.perf_counter() - began

        rng = np.random.default_rng(3)
        ids = rng.choice(data.customers["customer_id"].to_numpy(), size=calls)
        state.features([ids[0]], at)  # warm-up
        one = []
        cpu = time.process_time()
        for customer in ids:
            began = time.perf_counter()
            state.features([customer], at)
            one.append(time.perf_counter() - began)
        one_cpu_ms = (time.process_time() - cpu) / len(ids) * 1000

        later = after.sample(frac=1.0, random_state=5)
        folds = []
        cpu = time.process_time()
        for start in range(0, min(len(later), 20_000), 1000):
            batch = later.iloc[start : start + 1000]
            began = time.perf_counter()
            state.fold(batch, batch["event_timestamp"].max())
            folds.append(time.perf_counter() - began)
        fold_cpu_ms = (time.process_time() - cpu) / len(folds) * 1000
        fold_stats = _percentiles(folds)
        return {
            "benchmark": "live_state",
            "backend": backend.split("://")[0],
            "customers": customers,
            "events_loaded": len(before),
            "load_events_per_second": round(len(before) / load_seconds),
            # CPU time of this process per call: on a shared machine, wall time also counts
            # the time other processes hold the cores (and Redis's own CPU is not in it).
            "features_one_id": {**_percentiles(one), "cpu_ms": round(one_cpu_ms, 2)},
            "fold_1000_events": {**fold_stats, "cpu_ms": round(fold_cpu_ms, 2)},
            "fold_events_per_second": round(1000 / (fold_stats["p50_ms"] / 1000)),
        }
    finally:
        state.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--days", type=int, default=200)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/12", help="a Redis database to fill ('' skips)"
    )
    args = parser.parse_args()
    backends = ["sqlite"] + ([args.redis] if args.redis else [])
    for backend in backends:
        home = Path(tempfile.mkdtemp(prefix="bench-live-"))
        print(json.dumps(run(backend, args.customers, args.days, args.calls, home)), flush=True)


if __name__ == "__main__":
    main()
