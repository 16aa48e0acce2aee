"""Synthetic generator benchmark: simulate a world, then write it to a fresh home.

Issue target: at least 1 million events/s, and 100k customers x 365 days well under a minute.
Prints one JSON object (the last line) for ``benchmarks.run``:

    .venv/bin/python -m benchmarks.bench_generate --customers 100000 --days 365

``--streaming`` times what ``omniscore generate`` runs instead, :func:`generate_into` (blocks
written as they go, memory bounded; issue 15), for worlds too big to hold:

    /usr/bin/time -v .venv/bin/python -m benchmarks.bench_generate --customers 1000000 \
        --days 182 --streaming --home /tmp/omniscore-1m
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc

from data_layer.settings import Settings
from data_layer.synthetic import generate, generate_into, write_generated


def run(customers: int, days: int, seed: int, home: Path) -> dict:
    """Time ``generate`` (wall and CPU) and ``write_generated`` into ``home``."""
    wall, cpu = time.perf_counter(), time.process_time()
    data = generate(customers, days, seed)
    generate_seconds = time.perf_counter() - wall
    generate_cpu = time.process_time() - cpu
    events = data.events.num_rows
    own = pc.sum(pc.not_equal(data.events.column("family"), "contextual")).as_py()
    began = time.perf_counter()
    counts = write_generated(Settings.from_env(home), data)
    write_seconds = time.perf_counter() - began
    return {
        "benchmark": "generate",
        "customers": customers,
        "days": days,
        "events": events,
        "customer_initiated_per_customer_day": round(own / (customers * days), 3),
        "generate_seconds": round(generate_seconds, 1),
        "generate_cpu_seconds": round(generate_cpu, 1),
        "events_per_second": round(events / generate_seconds),
        "events_per_cpu_second": round(events / generate_cpu),
        "write_seconds": round(write_seconds, 1),
        "written": counts["events"],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
        "target_events_per_second": 1_000_000,
    }


def run_streaming(customers: int, days: int, seed: int, home: Path) -> dict:
    """Time :func:`generate_into` (simulate and write, block by block) into ``home``."""
    wall, cpu = time.perf_counter(), time.process_time()
    counts = generate_into(Settings.from_env(home), customers, days, seed)
    seconds = time.perf_counter() - wall
    return {
        "benchmark": "generate_streaming",
        "customers": customers,
        "days": days,
        "events": counts["events"],
        "generate_and_write_seconds": round(seconds, 1),
        "cpu_seconds": round(time.process_time() - cpu, 1),
        "events_per_second": round(counts["events"] / seconds),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "event_bytes_on_disk": sum(
            p.stat().st_size for p in (Path(home) / "events").rglob("*.parquet")
        ),
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--home", default=None, help="home to write into (default: a temp dir)")
    parser.add_argument(
        "--streaming", action="store_true", help="time generate_into (what the CLI runs)"
    )
    args = parser.parse_args()
    if args.streaming:
        with tempfile.TemporaryDirectory(prefix="bench-generate-") as tmp:
            result = run_streaming(args.customers, args.days, args.seed, Path(args.home or tmp))
        print(json.dumps(result))
        return result
    if args.home:
        result = run(args.customers, args.days, args.seed, Path(args.home))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-generate-") as home:
            result = run(args.customers, args.days, args.seed, Path(home))
    print(
        f"{result['events']:,} events in {result['generate_seconds']} s: "
        f"{result['events_per_second']:,} events/s; write {result['write_seconds']} s"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
