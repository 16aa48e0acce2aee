"""Monitoring benchmark and proof worlds: ``monitor`` and ``backtest`` on a world whose truth
we know.

:func:`monitoring_world` builds, at ``path``, a generated world (optionally with the drift
scenario from ``drift_at`` on, ``data_layer.synthetic.generate(drift_at=...)``) and champions
trained only on what was known before ``trained_until``: a second home holds the events up to
that day, its features, and the three models trained and promoted there; the world's home
shares that MLflow registry (a copy of its database: the artifacts stay where they were
logged). So the monitor compares the weeks after ``trained_until`` with a reference that
never saw them, as in production.

    .venv/bin/python -m benchmarks.bench_monitor --customers 100000 --seeds 5

runs, per seed, a steady world (no drift: every threshold must hold) and, for the first seed,
the drifted world (the monitor must flag within three weekly snapshots of the drift date, the
backtest must show the AUC dropping), and times ``monitor`` and ``backtest`` on each. Prints
one JSON object (the last line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc

from data_layer.feast_store import apply
from data_layer.feature_pipeline import build_features, default_snapshot_range
from data_layer.settings import Settings
from data_layer.synthetic import DEFAULT_END, generate, write_generated

DAYS = 300
"""Days of history of a proof world."""
SNAPSHOT_WEEKS = 32
TRAINED_UNTIL = DEFAULT_END - pd.Timedelta(days=35)
"""The champions know the events before this day (five weeks before the world ends)."""
TRAINING = {"trials": 1, "n_cutoffs": 4, "min_class": 20}


def _truncate(data, until: pd.Timestamp):
    """The generated world as it was known before ``until``."""
    events = data.events.filter(pc.less(data.events["event_timestamp"], until))
    customers = data.customers[pd.to_datetime(data.customers["signup_date"], utc=True) < until]
    daily = data.truth_daily[pd.to_datetime(data.truth_daily["date"], utc=True) < until]
    truth = data.truth_customers[data.truth_customers["customer_id"].isin(customers["customer_id"])]
    return dataclasses.replace(
        data, events=events, customers=customers, truth_daily=daily, truth_customers=truth
    )


def _build(settings: Settings, data) -> None:
    settings.ensure_dirs()
    write_generated(settings, data)
    start, end = default_snapshot_range(settings, weeks=SNAPSHOT_WEEKS)
    build_features(settings, start, end)
    apply(settings)


def monitoring_world(
    path: Path,
    customers: int,
    seed: int,
    drift_at: pd.Timestamp | str | None = None,
    trained_until: pd.Timestamp = TRAINED_UNTIL,
    days: int = DAYS,
) -> Settings:
    """The world's home at ``path / "world"`` whose champions were trained at
    ``path / "trained"`` on the events before ``trained_until`` (see the module docstring)."""
    from training.registry import promote
    from training.train import train_model

    data = generate(customers, days, seed, drift_at=drift_at)
    trained = Settings.from_env(path / "trained", env={})
    _build(trained, _truncate(data, trained_until))
    for model in ("propensity", "churn", "segments"):
        extra = {"horizon_days": 30} if model == "churn" else {}
        train_model(trained, model, seed=seed, **TRAINING, **extra)
        promote(trained, model, force=True, reason="monitoring world")
    world = Settings.from_env(path / "world", env={})
    _build(world, data)
    shutil.copyfile(trained.home / "mlflow.db", world.home / "mlflow.db")
    return Settings.from_env(world.home, env={})


def timed(function, *args, **kwargs):
    """(result, seconds)."""
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - began, 2)


def check_world(settings: Settings, drift_at: pd.Timestamp | None, out: Path) -> dict:
    """Monitor each weekly snapshot after the training end (up to three) and backtest the
    champion over the snapshots on both sides; returns the figures and the timings."""
    from training.backtest import backtest
    from training.monitor import monitor

    weeks = {}
    seconds = []
    for k in (1, 2, 3):
        as_of = TRAINED_UNTIL + pd.Timedelta(days=7 * k)
        result, took = timed(monitor, settings, as_of=as_of, out=out / f"monitor-{k}")
        seconds.append(took)
        weeks[as_of.date().isoformat()] = result.alarms
    bt, bt_seconds = timed(backtest, settings, "propensity", out=out / "backtest",
                           source="snapshots", snapshots=8)  # fmt: skip
    champion = next(iter(bt.versions.values()))
    by_cutoff = champion.by_cutoff
    return {
        "drift_at": None if drift_at is None else str(pd.Timestamp(drift_at).date()),
        "alarms_by_week": weeks,
        "first_flagged": next((w for w, a in weeks.items() if a), None),
        "auc_by_cutoff": {str(r.cutoff.date()): round(r.auc, 4) for r in by_cutoff.itertuples()},
        "expected_auc_error": round(
            next(iter(bt.versions.values())).metrics["expected_auc_error"], 4
        ),
        "monitor_seconds": seconds,
        "backtest_seconds": bt_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="omniscore-bench-monitor-"))
    result: dict = {"customers": args.customers, "days": DAYS, "steady": {}, "drift": None}
    drift_at = TRAINED_UNTIL
    for seed in range(1, args.seeds + 1):
        began = time.perf_counter()
        world = monitoring_world(work / f"steady-{seed}", args.customers, seed)
        build = round(time.perf_counter() - began, 1)
        result["steady"][seed] = {"build_seconds": build,
                                  **check_world(world, None, work / f"steady-{seed}")}  # fmt: skip
        print(json.dumps({"seed": seed, **result["steady"][seed]}), flush=True)
    world = monitoring_world(work / "drift", args.customers, 1, drift_at=drift_at)
    result["drift"] = check_world(world, drift_at, work / "drift")
    result["false_alarms"] = sum(
        1 for s in result["steady"].values() for alarms in s["alarms_by_week"].values() if alarms
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
