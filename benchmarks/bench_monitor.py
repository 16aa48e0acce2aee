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
import os
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
BUILT_MARKER = ".monitoring-world.json"
"""Written last in a built world's home, so a ``--workdir`` re-run reuses it."""
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
    models: tuple[str, ...] = ("propensity", "churn", "segments"),
) -> Settings:
    """The world's home at ``path / "world"`` whose champions were trained at
    ``path / "trained"`` on the events before ``trained_until`` (see the module docstring)."""
    from training.registry import promote
    from training.train import train_model

    built = path / "world" / BUILT_MARKER
    if built.exists():  # --workdir reuse: the world and its champions are already there
        return Settings.from_env(path / "world", env={})
    data = generate(customers, days, seed, drift_at=drift_at)
    trained = Settings.from_env(path / "trained", env={})
    _build(trained, _truncate(data, trained_until))
    for model in models:
        extra = {"horizon_days": 30} if model == "churn" else {}
        train_model(trained, model, seed=seed, **TRAINING, **extra)
        promote(trained, model, force=True, reason="monitoring world")
    world = Settings.from_env(path / "world", env={})
    _build(world, data)
    shutil.copyfile(trained.home / "mlflow.db", world.home / "mlflow.db")
    built.write_text(json.dumps({"customers": customers, "seed": seed, "drift_at": str(drift_at)}))
    return Settings.from_env(world.home, env={})


def timed(function, *args, **kwargs):
    """(result, seconds)."""
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return result, round(time.perf_counter() - began, 2)


def check_world(
    settings: Settings,
    drift_at: pd.Timestamp | None,
    out: Path,
    models: tuple[str, ...] | None = None,
    stop_at_first_alarm: bool = False,
    snapshots: int = 8,
) -> dict:
    """Monitor each weekly snapshot after the training end (up to three; ``models``: all by
    default) and backtest the propensity champion over the ``snapshots`` latest snapshots it
    was not fitted on, on both sides of that day; returns the figures and the timings."""
    from training.backtest import backtest, score_metrics
    from training.monitor import monitor

    weeks, seconds, figures = {}, [], {}
    for k in (1, 2, 3):
        as_of = TRAINED_UNTIL + pd.Timedelta(days=7 * k)
        result, took = timed(monitor, settings, as_of=as_of, models=models,
                             out=out / f"monitor-{k}")  # fmt: skip
        seconds.append(took)
        day = as_of.date().isoformat()
        weeks[day] = result.alarms
        figures[day] = {
            model: {key: (round(v, 4) if isinstance(v, float) else v) for key, v in f.items()
                    if key in ("feature_drift_share", "score_psi", "expected_auc_drop",
                               "segment_share_shift", "refit_ari", "refit_ari_reference",
                               "rows_current", "group_alarms")}
            for model, f in result.models.items()
        }  # fmt: skip
        if stop_at_first_alarm and result.alarms:
            break
    bt, bt_seconds = timed(backtest, settings, "propensity", out=out / "backtest",
                           source="snapshots", snapshots=snapshots)  # fmt: skip
    champion = next(iter(bt.versions.values()))
    by_cutoff = champion.by_cutoff
    # The label-free estimate assumes the calibration still holds: judged where it should
    # (outcome windows closed before the training end: held out, before any drift).
    rows = bt.rows
    held_out = rows[pd.to_datetime(rows["cutoff"], utc=True) + pd.Timedelta(days=bt.horizon_days)
                    <= TRAINED_UNTIL]  # fmt: skip
    held = score_metrics(held_out["label"].to_numpy(), held_out["probability"].to_numpy(),
                         champion.recalibration)  # fmt: skip
    return {
        "drift_at": None if drift_at is None else str(pd.Timestamp(drift_at).date()),
        "alarms_by_week": weeks,
        "figures_by_week": figures,
        "first_flagged": next((w for w, a in weeks.items() if a), None),
        "auc_by_cutoff": {str(r.cutoff.date()): round(r.auc, 4) for r in by_cutoff.itertuples()},
        "expected_auc_by_cutoff": {
            str(r.cutoff.date()): round(r.expected_auc, 4) for r in by_cutoff.itertuples()
        },
        "backtest_skipped_fitted_cutoffs": bt.skipped_cutoffs,
        "expected_auc_error": round(champion.metrics["expected_auc_error"], 4),
        "expected_auc_from": champion.estimate_from,
        "expected_auc_raw_error": round(champion.metrics["expected_auc_raw_error"], 4),
        "held_out_before_training_end": {
            "cutoffs": sorted({str(pd.Timestamp(t).date()) for t in held_out["cutoff"]}),
            "rows": len(held_out),
            "auc": round(held["auc"], 4),
            "expected_auc": round(held["expected_auc"], 4),
            "expected_auc_error": round(held["expected_auc_error"], 4),
            "expected_auc_raw_error": round(held["expected_auc_raw_error"], 4),
        },
        "backtest_rows": int(champion.metrics["n"]),
        "monitor_seconds": seconds,
        "backtest_seconds": bt_seconds,
        "report": str(bt.report),
    }


def auc_before_and_after(auc_by_cutoff: dict[str, float], horizon_days: int = 14) -> tuple:
    """Mean realized AUC of the cutoffs whose outcome window closed before the training end,
    and of those at or after it."""
    auc = pd.Series(auc_by_cutoff)
    when = pd.to_datetime(auc.index).tz_localize("UTC")
    before = auc[when + pd.Timedelta(days=horizon_days) <= TRAINED_UNTIL]
    after = auc[when >= TRAINED_UNTIL]
    return float(before.mean()), float(after.mean())


def load() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--seeds", type=int, default=5, help="steady worlds (0: none)")
    parser.add_argument("--no-drift", action="store_true", help="skip the drifted world")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the worlds here and reuse those already built")  # fmt: skip
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="omniscore-bench-monitor-"))
    result: dict = {"customers": args.customers, "days": DAYS, "steady": {}, "drift": None}
    drift_at = TRAINED_UNTIL
    for seed in range(1, args.seeds + 1):
        began = time.perf_counter()
        world = monitoring_world(work / f"steady-{seed}", args.customers, seed)
        build = round(time.perf_counter() - began, 1)
        load_before = load()
        found = check_world(world, None, work / f"steady-{seed}" / "out")
        result["steady"][seed] = {"build_seconds": build, "load_1m_before": load_before,
                                  "load_1m_after": load(), **found}  # fmt: skip
        print(json.dumps({"seed": seed, **result["steady"][seed]}), flush=True)
    if not args.no_drift:
        began = time.perf_counter()
        world = monitoring_world(work / "drift", args.customers, 1, drift_at=drift_at)
        build = round(time.perf_counter() - began, 1)
        load_before = load()
        found = check_world(world, drift_at, work / "drift" / "out")
        before, after = auc_before_and_after(found["auc_by_cutoff"])
        result["drift"] = {"build_seconds": build, "load_1m_before": load_before,
                           "load_1m_after": load(), "auc_before": round(before, 4),
                           "auc_after": round(after, 4), **found}  # fmt: skip
    if result["steady"]:
        errors = [s["expected_auc_error"] for s in result["steady"].values()]
        result["steady_expected_auc_error_max_abs"] = max(abs(e) for e in errors)
        raw = [s["expected_auc_raw_error"] for s in result["steady"].values()]
        result["steady_expected_auc_raw_error_max_abs"] = max(abs(e) for e in raw)
    result["steady_false_alarms"] = sum(
        1 for s in result["steady"].values() for alarms in s["alarms_by_week"].values() if alarms
    )
    if result["drift"]:
        d = result["drift"]
        result["drift_flagged_within_3_weeks"] = d["first_flagged"] is not None
        result["drift_auc_dropped"] = d["auc_after"] < d["auc_before"]
        held = d["held_out_before_training_end"]["expected_auc_error"]
        result["drift_held_out_expected_auc_error_within_0.03"] = abs(held) <= 0.03
    print(json.dumps(result))


if __name__ == "__main__":
    main()
