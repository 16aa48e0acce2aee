"""Benchmark of the training side: all three models, timed stage by stage, with quality.

Usage (moderate size; the issue's target is 100k customers, 6 cutoffs, 30 trials, 2 cores):

    .venv/bin/python -m benchmarks.bench_training --customers 8000 --trials 20 \
        --home /tmp/bench-home [--reuse] [--json out.json]

It generates a world (unless ``--reuse`` finds one in ``--home``), builds weekly snapshots,
applies Feast, then trains propensity, churn and segments with an in-memory Optuna study
(so a re-run tunes again). It prints a Markdown table: wall time per model and stage, the
tuning + logging overhead against pure LightGBM trial time, and the quality figures against
the generator's truth (oracle AUC gap, omnichannel gain, segment ARI).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from data_layer.settings import Settings

SNAPSHOT_WEEKS = 40


def prepare(
    settings: Settings, customers: int, days: int, seed: int, rerun: bool = True
) -> dict[str, float]:
    """Run the pipeline's generate, features and apply stages (with ``rerun=False``, only
    those whose output is missing); seconds per stage run."""
    from omniscore.pipeline import PipelineOptions, run_pipeline

    options = PipelineOptions(
        customers=customers, days=days, seed=seed, snapshot_weeks=SNAPSHOT_WEEKS
    )
    outcomes = run_pipeline(settings, "apply", options, rerun=rerun)
    return {o.stage.name: o.seconds for o in outcomes if o.status == "ran"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=8000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--home", type=Path, default=Path("/tmp/omniscore-bench"))
    parser.add_argument("--reuse", action="store_true", help="keep an existing generated home")
    parser.add_argument("--models", default="propensity,churn,segments")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from training.train import MEMORY_STORAGE, train_model

    settings = Settings.from_env(args.home)
    prep = prepare(settings, args.customers, args.days, args.seed, rerun=not args.reuse)
    results = {"customers": args.customers, "trials": args.trials, "prepare": prep, "models": {}}
    results["lgbm_threads"] = os.environ.get("OMNISCORE_LGBM_THREADS", "2")
    total = time.perf_counter()
    for model in args.models.split(","):
        started = time.perf_counter()
        r = train_model(
            settings, model, trials=args.trials, seed=args.seed, storage_url=MEMORY_STORAGE
        )
        m = dict(r.metrics)
        m["wall_seconds"] = time.perf_counter() - started
        results["models"][model] = m
        print(json.dumps({"model": model, **r.summary(), "wall": round(m["wall_seconds"], 1)}))
    results["train_all_seconds"] = time.perf_counter() - total
    results["scoring_100k_seconds"] = scoring_seconds(settings, 100_000)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
    # Last line: one JSON object, as benchmarks/run.py expects.
    print(json.dumps(results, default=float))


def scoring_seconds(settings: Settings, rows: int) -> dict[str, float]:
    """Seconds to score ``rows`` customers with each registered challenger, loaded as serving
    loads it (features fetched once from Feast, then replicated to ``rows``)."""
    import pandas as pd

    from training.datasets import segment_frame
    from training.model_io import load_champion

    frame, _ = segment_frame(settings, "propensity_v1")
    big = pd.concat([frame] * (rows // len(frame) + 1), ignore_index=True).head(rows)
    out = {}
    for model in ("propensity", "churn", "segments"):
        loaded = load_champion(settings, model, alias="challenger")
        started = time.perf_counter()
        if loaded.kind == "segments":
            loaded.assign(big)
        else:
            p = loaded.predict_proba(big)
            loaded.score_percentile(p)
            loaded.band(p)
        out[model] = time.perf_counter() - started
    out["all"] = sum(out.values())
    return out


def render(results: dict) -> str:
    """Markdown summary of one benchmark run."""
    lines = [
        f"customers={results['customers']} trials={results['trials']} "
        f"lgbm_threads={results['lgbm_threads']} prepare={results['prepare']}",
        "",
        "| model | wall s | dataset s | tuning s | trial LightGBM s | overhead % | logging s "
        "| test AUC | oracle AUC | gain vs single channel | ARI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model, m in results["models"].items():
        tuning, trial = m.get("time_tuning", 0.0), m.get("time_trial_training", 0.0)
        overhead = 100 * (tuning - trial) / trial if trial else float("nan")
        cells = [
            model,
            f"{m['wall_seconds']:.1f}",
            f"{m.get('time_dataset', 0):.1f}",
            f"{tuning:.1f}",
            f"{trial:.1f}",
            f"{overhead:.1f}",
            f"{m.get('time_logging', 0):.1f}",
            f"{m.get('test_roc_auc', float('nan')):.4f}",
            f"{m.get('oracle_auc', float('nan')):.4f}",
            f"{m.get('gain_over_best_single_channel', float('nan')):.4f}",
            f"{m.get('ari_archetypes', float('nan')):.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\ntrain all: {results['train_all_seconds']:.1f} s")
    lines.append(f"scoring 100k rows (s): {results.get('scoring_100k_seconds')}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
