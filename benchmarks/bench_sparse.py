"""Benchmark of OmniScore against the classical baselines on a sparse, purchase-only world.

Usage:

    .venv/bin/python -m benchmarks.bench_sparse --customers 20000 --trials 10 \
        --home /tmp/omniscore-bench-sparse [--reuse] [--json benchmarks/results/sparse.json]

It generates the ``sparse-retail`` world (purchases only, one channel, most customers buying
one to three times in three years; docs/synthetic.md) unless ``--reuse`` finds it in
``--home``, builds the default snapshots (weekly over the whole history), applies Feast, then
trains purchase propensity at 14, 28 and 90-day horizons with the product's own training job
(``training.train.train_model``, nothing registered, an in-memory Optuna study). Every run
scores OmniScore, BG/NBD (fitted on the purchases before the test cutoff) and RFM-logistic on
the same out-of-time test cutoff; the benchmark reports the three AUCs, the margins of
OmniScore over each, and the generator's oracle AUC (the true purchase probabilities: the
ceiling any model can reach on these labels).

The results go to ``--json`` (default ``benchmarks/results/sparse.json``, the file
``python -m benchmarks.run --render`` reads) after every horizon, in the runner's format
(command, machine, time, result), with the load average before and after each horizon: a
run stopped part-way still leaves the horizons it finished, and the shared machine's load
stands beside each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from data_layer.settings import Settings

HORIZONS: tuple[int, ...] = (14, 28, 90)
RESULT = Path(__file__).resolve().parent / "results" / "sparse.json"


def load_average() -> float:
    """The 1-minute load average (the machine is shared: it says how busy it was)."""
    return round(os.getloadavg()[0], 2)


def prepare(settings: Settings, customers: int, seed: int, reuse: bool) -> dict[str, float]:
    """Generate the sparse world, build the default snapshots and apply Feast (each skipped
    with ``reuse`` when its output exists); seconds per stage run."""
    from data_layer.event_store import event_files
    from data_layer.feast_store import apply
    from data_layer.feature_pipeline import build_features
    from data_layer.synthetic import SPARSE_DEFAULT_DAYS, generate, write_generated

    seconds: dict[str, float] = {}
    settings.ensure_dirs()
    if not (reuse and event_files(settings)):
        started = time.perf_counter()
        world = generate(customers, SPARSE_DEFAULT_DAYS, seed, profile="sparse-retail")
        write_generated(settings, world)
        seconds["generate"] = time.perf_counter() - started
    if not (reuse and (settings.features_dir / "transactions.parquet").exists()):
        started = time.perf_counter()
        report = build_features(settings)
        seconds["features"] = time.perf_counter() - started
        seconds["snapshots"] = len(report.snapshots)
        seconds["snapshot_rows"] = report.rows
    started = time.perf_counter()
    apply(settings)
    seconds["apply"] = time.perf_counter() - started
    return seconds


def compare(settings: Settings, horizon: int, trials: int, seed: int) -> dict[str, float | str]:
    """One propensity run at ``horizon`` days: the three AUCs on its test cutoff, and margins."""
    from training.train import MEMORY_STORAGE, train_model

    started = time.perf_counter()
    load_before = load_average()
    result = train_model(
        settings,
        "propensity",
        trials=trials,
        seed=seed,
        horizon_days=horizon,
        register=False,
        storage_url=MEMORY_STORAGE,
    )
    m = result.metrics
    omni, rfm = m["test_roc_auc"], m["rfm_test_roc_auc"]
    bgnbd = m.get("bgnbd_test_roc_auc", float("nan"))
    out: dict[str, float | str] = {
        "test_cutoff": result.cutoffs.split("test=")[-1],
        "training_cutoffs": result.cutoffs.split(";")[0].count(",") + 1,
        "train_rows": m["n_train_rows"],
        "test_rows": m["n_test_rows"],
        "test_positive_rate": m["test_base_rate"],  # classification_metrics' base_rate
        "omniscore_auc": omni,
        "bgnbd_auc": bgnbd,
        "rfm_logistic_auc": rfm,
        "margin_over_bgnbd": omni - bgnbd,
        "margin_over_rfm_logistic": omni - rfm,
        "beats_both": bool(omni > bgnbd and omni > rfm),
        "observed_channels": m.get("observed_channels", float("nan")),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_average_before": load_before,
        "load_average_after": load_average(),
    }
    if "oracle_auc" in m:
        out["oracle_auc"] = m["oracle_auc"]
        out["gap_to_oracle"] = m["oracle_auc"] - omni
    return out


def render(results: dict) -> str:
    """A Markdown table: one row per horizon."""
    lines = [
        f"sparse-retail, {results['customers']} customers, {results['trials']} trials",
        "",
        "| horizon | OmniScore | BG/NBD | RFM-logistic | margin vs BG/NBD | margin vs RFM "
        "| oracle | beats both |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for h, r in results["horizons"].items():
        lines.append(
            f"| {h} | {r['omniscore_auc']:.4f} | {r['bgnbd_auc']:.4f} | "
            f"{r['rfm_logistic_auc']:.4f} | {r['margin_over_bgnbd']:+.4f} | "
            f"{r['margin_over_rfm_logistic']:+.4f} | {r.get('oracle_auc', float('nan')):.4f} | "
            f"{'yes' if r['beats_both'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=20000)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--home", type=Path, default=Path("/tmp/omniscore-bench-sparse"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing generated home")
    parser.add_argument("--horizons", default=",".join(str(h) for h in HORIZONS))
    parser.add_argument("--json", type=Path, default=RESULT, help="where results go")
    args = parser.parse_args()

    began = time.perf_counter()
    stored = {
        "benchmark": "sparse",
        "command": " ".join(["python", "-m", "benchmarks.bench_sparse", *sys.argv[1:]]),
        "ran_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    settings = Settings.from_env(args.home)
    results: dict = {"customers": args.customers, "trials": args.trials, "seed": args.seed}
    results["load_average_at_start"] = load_average()
    results["prepare"] = prepare(settings, args.customers, args.seed, args.reuse)
    results["horizons"] = {}
    for horizon in (int(h) for h in args.horizons.split(",")):
        results["horizons"][f"{horizon}d"] = compare(settings, horizon, args.trials, args.seed)
        print(json.dumps({f"{horizon}d": results["horizons"][f"{horizon}d"]}), flush=True)
        results["beats_both_everywhere"] = all(
            r["beats_both"] for r in results["horizons"].values()
        )
        _write(args.json, stored, results, time.perf_counter() - began)
    print(render(results))
    # Last line: one JSON object, as benchmarks/run.py expects.
    print(json.dumps(results, default=float))


def _write(path: Path, stored: dict, results: dict, seconds: float) -> None:
    """The results so far, in the format of ``benchmarks.run`` (which renders the page)."""
    from benchmarks.run import machine

    document = {**stored, "wall_seconds": round(seconds, 1), "machine": machine()}
    document["result"] = results
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=2, default=float) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
