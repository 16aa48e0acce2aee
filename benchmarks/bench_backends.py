"""Production backends benchmark: Redis against SQLite, and distributed tuning on PostgreSQL.

1. One synthetic snapshot set (``benchmarks.bench_materialize``) is copied into two homes,
   one on the embedded SQLite online store and one on Redis; both are materialized with the
   bulk writer and timed on ``get_online_features(propensity_v1)`` for 1 and 100 customers,
   in the same run.
2. A generated home (``--tune-customers``) is tuned for ``--trials`` propensity trials with
   1, 2 and 4 worker processes (:func:`training.distributed.run_workers`), each on a fresh
   PostgreSQL study, one LightGBM thread per process (``--threads``). Wall time includes
   starting the processes and building the training set in each; ``trial_span_s`` is first
   trial start to last trial end. Identical seeds make concurrent workers repeat parameter
   sets (``duplicate_param_sets``), which is reported, not hidden.

    .venv/bin/python -m benchmarks.bench_backends --customers 20000 --trials 40

Prints one JSON object as its last line. Redis keys live under a throwaway project name and
are deleted; each PostgreSQL database is dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from benchmarks.bench_materialize import (
    FIRST_SNAPSHOT,
    _materialize,
    time_online_reads,
    write_synthetic,
)
from data_layer import feast_store
from data_layer.settings import Settings, redact


def bench_online_stores(
    root: Path, redis_url: str, customers: int, snapshots: int, repeats: int
) -> dict:
    """Bulk materialization and online reads on SQLite and Redis, from the same snapshots."""
    source = Settings.from_env(root / "snapshots")
    write_synthetic(source, customers, snapshots)
    end = FIRST_SNAPSHOT + timedelta(weeks=snapshots)
    homes = {
        "sqlite": Settings.from_env(root / "sqlite"),
        "redis": replace(
            Settings.from_env(root / "redis"),
            online_store=redis_url,
            feast_project=f"bench_{uuid.uuid4().hex[:10]}",
        ),
    }
    out: dict = {"customers": customers, "snapshots_per_customer": snapshots}
    try:
        for name, settings in homes.items():
            shutil.copytree(source.features_dir, settings.features_dir)
            feast_store.apply(settings)
            out[name], _ = _materialize(settings, end, "bulk")
            out[name].update(time_online_reads(settings, customers, repeats))
        out["redis"]["bytes_per_customer"] = redis_bytes_per_key(homes["redis"])
    finally:
        feast_store.feature_store(homes["redis"]).teardown()
    return out


def redis_bytes_per_key(settings: Settings, sample: int = 200) -> int:
    """Mean ``MEMORY USAGE`` of a sample of the project's keys (one key per customer)."""
    from data_layer.online_format import redis_client

    client = redis_client(feast_store.repo_config(settings))
    keys = []
    for key in client.scan_iter(match=b"*" + settings.feast_project.encode(), count=1000):
        keys.append(key)
        if len(keys) >= sample:
            break
    return round(sum(client.memory_usage(k, samples=0) for k in keys) / max(len(keys), 1))


def _create_database(admin_url: str) -> str:
    import psycopg2

    name = f"omniscore_bench_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


def _drop_database(admin_url: str, url: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        conn.close()


def study_summary(url: str) -> dict:
    """Trials of the single study at ``url``: finished count, time span, duplicated params."""
    import optuna

    from training import tune

    storage = tune.storage_for(url, heartbeat=None)
    try:
        (summary,) = optuna.get_all_study_summaries(storage)
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        finished = study.get_trials(deepcopy=False, states=tune.FINISHED)
        starts = [t.datetime_start for t in finished if t.datetime_start]
        ends = [t.datetime_complete for t in finished if t.datetime_complete]
        params = [json.dumps(t.params, sort_keys=True) for t in finished]
        # Boosting rounds each trial ran: a completed one stopped EARLY_STOPPING_ROUNDS after
        # its best round, a pruned one at its last report. Sampled parameters differ between
        # runs with different worker counts, so seconds per round tells contention apart from
        # a different workload.
        rounds = sum(
            min(tune.MAX_ROUNDS, t.user_attrs["best_iteration"] + tune.EARLY_STOPPING_ROUNDS)
            if "best_iteration" in t.user_attrs
            else max(t.intermediate_values, default=0)
            for t in finished
        )
        seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in finished)
        return {
            "finished": len(finished),
            "pruned": sum(t.state.name == "PRUNED" for t in finished),
            "trial_span_s": round((max(ends) - min(starts)).total_seconds(), 1),
            "trial_seconds_sum": round(seconds, 1),
            "boosting_rounds_sum": rounds,
            "ms_per_boosting_round": round(1000 * seconds / rounds, 2) if rounds else None,
            "duplicate_param_sets": len(params) - len(set(params)),
        }
    finally:
        storage.remove_session()


def bench_tuning(
    root: Path,
    admin_url: str,
    customers: int,
    days: int,
    trials: int,
    workers: list[int],
    threads: int,
) -> dict:
    """Wall time of ``trials`` propensity trials with each worker count, fresh study each.

    Every process uses ``threads`` LightGBM threads, so the worker count is the only thing
    that changes between runs.
    """
    from omniscore.pipeline import PipelineOptions, run_pipeline
    from training.distributed import run_workers

    settings = Settings.from_env(root / "tuning")
    started = time.perf_counter()
    options = PipelineOptions(customers=customers, days=days, seed=5, snapshot_weeks=32)
    run_pipeline(settings, "apply", options)
    out: dict = {
        "customers": customers,
        "days": days,
        "trials": trials,
        "lightgbm_threads_per_process": threads,
        "home_build_s": round(time.perf_counter() - started, 1),
    }
    for n in workers:
        url = _create_database(admin_url)
        try:
            began = time.perf_counter()
            report = run_workers(
                settings, "propensity", trials, n, seed=42, storage_url=url, threads=threads
            )
            wall = time.perf_counter() - began
            out[f"workers_{n}"] = {
                "wall_s": round(wall, 1),
                "exit_codes": report.exit_codes,
                "load_average": [round(x, 2) for x in os.getloadavg()],
                **study_summary(url),
            }
        finally:
            _drop_database(admin_url, url)
    base = out[f"workers_{workers[0]}"]
    for n in workers[1:]:
        for key in ("wall_s", "trial_span_s"):
            out[f"workers_{n}"][f"speedup_{key}"] = round(base[key] / out[f"workers_{n}"][key], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20_000, help="online store customers")
    parser.add_argument("--snapshots", type=int, default=2, help="snapshot times per customer")
    parser.add_argument("--repeats", type=int, default=200, help="online reads per batch size")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="admin URL: a database is created per tuning run and dropped",
    )
    parser.add_argument("--tune-customers", type=int, default=3000)
    parser.add_argument("--tune-days", type=int, default=300)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", default="1,2,4", help="worker counts to compare")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads per process")
    parser.add_argument("--skip-online", action="store_true")
    parser.add_argument("--skip-tuning", action="store_true")
    args = parser.parse_args()

    results: dict = {
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "redis": redact(args.redis),
        "postgres": redact(args.postgres),
    }
    root = Path(tempfile.mkdtemp(prefix="omniscore-bench-backends-"))
    try:
        if not args.skip_online:
            results["online"] = bench_online_stores(
                root, args.redis, args.customers, args.snapshots, args.repeats
            )
        if not args.skip_tuning:
            workers = [int(w) for w in args.workers.split(",")]
            results["tuning"] = bench_tuning(
                root,
                args.postgres,
                args.tune_customers,
                args.tune_days,
                args.trials,
                workers,
                args.threads,
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
