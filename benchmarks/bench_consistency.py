"""Train/serve consistency (issue 11, section 5): AUC at intra-day instants against midnights.

Models are trained on UTC-midnight cutoffs, as the batch pipeline trains them; the live path
serves features at any instant. This measures what that costs. On a generated world, per
classifier (propensity, churn; the contract's labels and feature services):

1. training rows at ``--train-cutoffs`` weekly midnights before the test period, labels from
   :func:`training.labels.label_frame`, features from
   :func:`data_layer.feature_pipeline.compute_snapshots` (the code the live path runs);
   LightGBM with fixed parameters (no tuning: the same model for both test sets);
2. two test sets over the same ``--test-days`` days after the test cutoff: the midnight of
   each day, and one random instant within each day (seeded), each labelled at its own
   instant with the same horizon;
3. the test AUC of each and their difference. When intra-day costs more than
   :data:`TOLERANCE`, the model is trained again on the same midnights plus one random
   instant within the day of each, and both test sets are scored again.

Prints one JSON object (the last line).

    .venv/bin/python -m benchmarks.bench_consistency --customers 8000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from data_layer.event_store import events_relation_sql, read_customers
from data_layer.feature_pipeline import compute_snapshots
from data_layer.settings import Settings
from data_layer.synthetic import generate, write_generated
from feature_repo.catalog import CATEGORICAL_FEATURES, service_features
from training.contract import contract
from training.labels import LabelSpec, label_frame, observed_range

TOLERANCE = 0.005
"""Test AUC intra-day may lose against midnights before training on intra-day cutoffs."""
PARAMS = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 50,
    "feature_fraction": 0.8,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "verbose": -1,
    "seed": 7,
    "num_threads": 1,
}
ROUNDS = 300


def intra_day(midnights: list[pd.Timestamp], rng: np.random.Generator) -> list[pd.Timestamp]:
    """One instant strictly inside each day (at least a minute from either midnight)."""
    minutes = rng.integers(1, 24 * 60 - 1, size=len(midnights))
    seconds = rng.integers(0, 60, size=len(midnights))
    return [
        t + pd.Timedelta(minutes=int(m), seconds=int(s))
        for t, m, s in zip(midnights, minutes, seconds, strict=True)
    ]


class Features:
    """Snapshots of the world at any instants, computed once per instant."""

    def __init__(self, settings: Settings) -> None:
        self.events = events_relation_sql(settings)
        self.customers = read_customers(settings)
        self.cache: dict[pd.Timestamp, pd.DataFrame] = {}

    def at(self, times: list[pd.Timestamp]) -> pd.DataFrame:
        missing = sorted({t for t in times if t not in self.cache})
        if missing:
            frame = compute_snapshots(self.events, self.customers, missing)
            frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
            for t, part in frame.groupby("event_timestamp"):
                self.cache[pd.Timestamp(t)] = part
        return pd.concat([self.cache[t] for t in times], ignore_index=True)


def rows(settings, features: Features, spec: LabelSpec, times: list[pd.Timestamp]):
    labels = label_frame(settings, spec, times)
    frame = labels.merge(features.at(times), on=["customer_id", "event_timestamp"], how="left")
    if len(frame) != len(labels):
        raise RuntimeError("features are not one row per labelled (customer, instant)")
    return frame


def matrix(frame: pd.DataFrame, names: list[str], categories: dict) -> pd.DataFrame:
    x = frame[names].copy()
    for name in names:
        if name in CATEGORICAL_FEATURES:
            x[name] = pd.Categorical(x[name].astype(object), categories=categories[name])
        else:
            x[name] = pd.to_numeric(x[name], errors="coerce").astype("float64")
    return x


def auc_difference_ci(
    mid: pd.DataFrame, intra: pd.DataFrame, p_mid, p_intra, repeats: int, seed: int
) -> list[float]:
    """95% interval of AUC(intra) - AUC(midnight), resampling customers (both sets together)."""
    rng = np.random.default_rng(seed)
    customers = np.union1d(mid["customer_id"].unique(), intra["customer_id"].unique())
    by_mid = mid.groupby("customer_id").indices
    by_intra = intra.groupby("customer_id").indices
    diffs = []
    for _ in range(repeats):
        pick = rng.choice(customers, size=len(customers))
        im = np.concatenate([by_mid.get(c, np.array([], dtype=int)) for c in pick])
        ii = np.concatenate([by_intra.get(c, np.array([], dtype=int)) for c in pick])
        ym, yi = mid["label"].to_numpy()[im], intra["label"].to_numpy()[ii]
        if ym.min() == ym.max() or yi.min() == yi.max():
            continue
        diffs.append(roc_auc_score(yi, p_intra[ii]) - roc_auc_score(ym, p_mid[im]))
    return [round(float(q), 4) for q in np.quantile(diffs, [0.025, 0.975])]


def measure(settings, features, model: str, args, rng) -> dict:
    import lightgbm as lgb

    spec = LabelSpec.default(model)
    names = service_features(contract(model).feature_service)
    start, end = observed_range(settings)
    h = pd.Timedelta(days=spec.horizon_days)
    first_test = (end - h - pd.Timedelta(days=args.test_days)).normalize()
    test_mid = [first_test + pd.Timedelta(days=k) for k in range(args.test_days)]
    test_intra = intra_day(test_mid, rng)
    last_train = (first_test - h).normalize()
    train_mid = [last_train - pd.Timedelta(weeks=k) for k in range(args.train_cutoffs)][::-1]
    earliest = start + pd.Timedelta(days=spec.lookback_days)
    train_mid = [t for t in train_mid if t >= earliest]
    began = time.perf_counter()
    train = rows(settings, features, spec, train_mid)
    tests = {
        "midnight": rows(settings, features, spec, test_mid),
        "intra_day": rows(settings, features, spec, test_intra),
    }
    result: dict = {
        "horizon_days": spec.horizon_days,
        "train_cutoffs": [str(t) for t in train_mid],
        "test_midnights": [str(t) for t in test_mid],
        "test_instants": [str(t) for t in test_intra],
        "train_rows": len(train),
    }

    def run(train_frame: pd.DataFrame) -> dict:
        categories = {
            n: sorted(train_frame[n].dropna().astype(str).unique())
            for n in names
            if n in CATEGORICAL_FEATURES
        }
        booster = lgb.train(
            PARAMS,
            lgb.Dataset(matrix(train_frame, names, categories), train_frame["label"].to_numpy()),
            ROUNDS,
        )
        scored = {k: booster.predict(matrix(t, names, categories)) for k, t in tests.items()}
        out = {}
        for k, t in tests.items():
            y = t["label"].to_numpy()
            out[k] = {
                "rows": len(t),
                "positive_rate": round(float(y.mean()), 4),
                "auc": round(float(roc_auc_score(y, scored[k])), 4),
            }
        out["intra_minus_midnight"] = round(out["intra_day"]["auc"] - out["midnight"]["auc"], 4)
        out["difference_95ci"] = auc_difference_ci(
            tests["midnight"], tests["intra_day"], scored["midnight"], scored["intra_day"],
            args.bootstrap, seed=3,
        )  # fmt: skip
        return out

    result["trained_on_midnights"] = run(train)
    if args.always_retrain or result["trained_on_midnights"]["intra_minus_midnight"] < -TOLERANCE:
        instants = intra_day(train_mid, rng)
        both = pd.concat([train, rows(settings, features, spec, instants)], ignore_index=True)
        result["trained_on_midnights_and_intra_day"] = {
            "train_rows": len(both),
            **run(both),
        }
    result["seconds"] = round(time.perf_counter() - began, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=8000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--train-cutoffs", type=int, default=8)
    parser.add_argument("--test-days", type=int, default=7)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--always-retrain",
        action="store_true",
        help="train on midnights plus intra-day instants even when intra-day costs nothing",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="omniscore-bench-consistency-"))
    settings = Settings.from_env(work)
    settings.ensure_dirs()
    began = time.perf_counter()
    write_generated(settings, generate(args.customers, args.days, seed=args.seed))
    result: dict = {
        "customers": args.customers,
        "days": args.days,
        "generate_seconds": round(time.perf_counter() - began, 1),
        "tolerance": TOLERANCE,
    }
    features = Features(settings)
    rng = np.random.default_rng(args.seed)
    for model in ("propensity", "churn"):
        result[model] = measure(settings, features, model, args, rng)
    result["met"] = {
        model: result[model]["trained_on_midnights"]["intra_minus_midnight"] >= -TOLERANCE
        or result[model]["trained_on_midnights_and_intra_day"]["intra_minus_midnight"] >= -TOLERANCE
        for model in ("propensity", "churn")
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
