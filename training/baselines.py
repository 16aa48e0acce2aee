"""Baselines the omnichannel classifier is measured against.

- **RFM**: a logistic regression on recency, frequency and monetary features only, the
  classic single-view score (:func:`fit_rfm_baseline`).
- **Single channel**: one LightGBM per channel on that channel's features only, and one on
  every feature fitted the same way, so the omnichannel gain compares models trained alike
  (:func:`single_channel_baselines`).
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd

from feature_repo.catalog import RFM_FEATURES
from training import evaluate as ev
from training.datasets import channel_features

ALL_CHANNELS = "all"
"""Channel name of the all-feature comparator in :func:`single_channel_baselines`."""


def rfm_matrix(frame: pd.DataFrame) -> np.ndarray:
    """RFM inputs for the logistic baseline: log1p of counts and money, capped recency."""
    cols = []
    for name in RFM_FEATURES:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        if name.startswith("days_since"):
            values = np.where(np.isfinite(values), np.minimum(values, 365.0), 365.0)
            cols.append(values / 365.0)
        else:
            cols.append(np.log1p(np.clip(np.nan_to_num(values, nan=0.0), 0, None)))
    return np.column_stack(cols)


def fit_rfm_baseline(fit: pd.DataFrame, y: np.ndarray):
    """Logistic regression on RFM features only (standardised); returns a fitted pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        rfm_matrix(fit), y
    )


def single_channel_baselines(
    params: dict,
    ts_names: Sequence[str],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> pd.DataFrame:
    """A LightGBM per channel on that channel's features only (tuned omnichannel params,
    early-stopped on validation), and one on every feature (channel ``ALL_CHANNELS``) fitted
    the same way on the same rows, for an equal-footing omnichannel gain. One row per model:
    valid and test AUC, rounds; single channels sorted by validation AUC, then the all-channel
    row. ``params["num_threads"]`` sets the LightGBM threads."""
    rows = []
    index = {n: i for i, n in enumerate(ts_names)}
    groups = {**channel_features(ts_names), ALL_CHANNELS: list(ts_names)}
    threads = params["num_threads"]
    for channel, names in groups.items():
        cols = [index[n] for n in names]
        train = lgb.Dataset(
            x_train[:, cols],
            label=y_train,
            feature_name=names,
            params={"verbosity": -1, "feature_pre_filter": False, "num_threads": threads},
        )
        valid = lgb.Dataset(x_valid[:, cols], label=y_valid, reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=2000,
            valid_sets=[valid],
            valid_names=["valid"],
            callbacks=[lgb.early_stopping(40, verbose=False)],
        )
        best = booster.best_iteration or booster.current_iteration()
        rows.append(
            {
                "channel": channel,
                "n_features": len(names),
                "rounds": best,
                "valid_auc": ev.auc(y_valid, booster.predict(x_valid[:, cols], num_iteration=best)),
                "test_auc": ev.auc(y_test, booster.predict(x_test[:, cols], num_iteration=best)),
            }
        )
    table = pd.DataFrame(rows)
    singles = table[table["channel"] != ALL_CHANNELS].sort_values("valid_auc", ascending=False)
    return pd.concat([singles, table[table["channel"] == ALL_CHANNELS]], ignore_index=True)


def baseline_metrics(
    params: dict,
    names: Sequence[str],
    x: dict[str, np.ndarray],
    y: dict[str, np.ndarray],
    sample: np.ndarray,
    fit_rows: pd.DataFrame,
    y_fit: np.ndarray,
    test_rows: pd.DataFrame,
) -> tuple[dict[str, float], pd.DataFrame, np.ndarray]:
    """Fit every baseline and report them against each other.

    Single channels and their all-channel comparator fit on the tuning ``sample`` of the
    training rows, each early-stopped on validation; RFM fits on ``fit_rows`` (train and
    validation), like the final model. Returns the metrics (``rfm_test_roc_auc``,
    ``best_single_channel_test_roc_auc``, ``all_channels_baseline_test_roc_auc``,
    ``gain_over_best_single_channel``, ``single_<channel>_test_roc_auc``), the
    single-channel table and the RFM test probabilities (for the charts).
    """
    table = single_channel_baselines(
        params, names, x["train"][sample], y["train"][sample], x["valid"], y["valid"],
        x["test"], y["test"],
    )  # fmt: skip
    everything = table[table["channel"] == ALL_CHANNELS].iloc[0]
    singles = table[table["channel"] != ALL_CHANNELS]
    best_single = singles.iloc[0]
    rfm = fit_rfm_baseline(fit_rows, y_fit)
    p_rfm = rfm.predict_proba(rfm_matrix(test_rows))[:, 1]
    metrics = {
        "rfm_test_roc_auc": ev.auc(y["test"], p_rfm),
        "best_single_channel_test_roc_auc": float(best_single["test_auc"]),
        "all_channels_baseline_test_roc_auc": float(everything["test_auc"]),
        "gain_over_best_single_channel": float(everything["test_auc"] - best_single["test_auc"]),
        **{f"single_{r.channel}_test_roc_auc": r.test_auc for r in singles.itertuples()},
    }
    return metrics, table, p_rfm
