"""Baselines the omnichannel classifier is measured against.

- **RFM**: a logistic regression on recency, frequency and monetary features only, the
  classic single-view score (:func:`fit_rfm_baseline`).
- **BG/NBD**: the classical probabilistic purchase model (:mod:`data_layer.bgnbd`), fitted on
  the purchases before the test cutoff only, scoring P(at least one purchase within the
  horizon) (:func:`bgnbd_scores`).
- **Single channel**: one LightGBM per channel on that channel's features only, and one on
  every feature fitted the same way, so the omnichannel gain compares models trained alike
  (:func:`single_channel_baselines`). Only channels the training rows show any activity on
  are fitted: on a single-channel log the omnichannel gain is zero by construction, and the
  metrics say so (``observed_channels`` = 1, no single-channel AUCs) instead of reporting
  models of all-zero features.
"""

from __future__ import annotations

from collections.abc import Sequence

import lightgbm as lgb
import numpy as np
import pandas as pd

from data_layer.bgnbd import scores_at_cutoff
from data_layer.event_store import events_relation_sql
from data_layer.settings import Settings
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


def observed_channels(names: Sequence[str], x: np.ndarray) -> list[str]:
    """Channels whose features are not all zero or missing in ``x`` (the training rows): the
    channels the log shows any activity on."""
    index = {n: i for i, n in enumerate(names)}
    seen = []
    for channel, members in channel_features(names).items():
        values = x[:, [index[n] for n in members]].astype(float)
        if np.any(np.nan_to_num(values, nan=0.0) != 0):
            seen.append(channel)
    return seen


def purchases_before(settings: Settings, cutoff: pd.Timestamp) -> pd.DataFrame:
    """Purchase events strictly before ``cutoff`` from the event store (the BG/NBD input)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(
            "SELECT customer_id, event_timestamp, event_type, amount "
            f"FROM {events_relation_sql(settings)} "
            "WHERE event_type = 'purchase' AND event_timestamp < ?",
            [pd.Timestamp(cutoff).to_pydatetime()],
        ).df()
    finally:
        con.close()


def bgnbd_scores(
    settings: Settings,
    cutoff: pd.Timestamp,
    customer_ids: Sequence[str],
    horizon_days: int,
    outcome: str = "purchase",
) -> np.ndarray | None:
    """The BG/NBD baseline's score of each customer at ``cutoff``.

    Fitted on the purchases strictly before the cutoff (no leakage), it scores P(at least one
    purchase in the next ``horizon_days`` days); a customer with no purchase yet scores 0. For
    a ``lapse`` outcome (churn) the score is 1 - that. ``None`` when there is no purchase to
    fit on, or the fit fails (every customer first bought on the cutoff's day, say).
    """
    events = purchases_before(settings, cutoff)
    if events.empty:
        return None
    try:
        scores, _ = scores_at_cutoff(events, pd.Timestamp(cutoff), (int(horizon_days),))
    except ValueError:
        return None
    column = scores[f"bgnbd_p_purchase_{int(horizon_days)}d"]
    p = column.reindex(pd.Index([str(c) for c in customer_ids])).fillna(0.0).to_numpy(float)
    return 1.0 - p if outcome == "lapse" else p


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
    the same way on the same rows, for an equal-footing omnichannel gain; channels without
    any activity in the training rows (:func:`observed_channels`) get no model. One row per model:
    valid and test AUC, rounds; single channels sorted by validation AUC, then the all-channel
    row. ``params["num_threads"]`` sets the LightGBM threads."""
    rows = []
    index = {n: i for i, n in enumerate(ts_names)}
    seen = set(observed_channels(ts_names, x_train))
    # With one channel the comparison is empty by construction: fit only the all-feature model.
    groups = {c: f for c, f in channel_features(ts_names).items() if c in seen and len(seen) > 1}
    groups[ALL_CHANNELS] = list(ts_names)
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
    ``observed_channels``, ``best_single_channel_test_roc_auc``,
    ``all_channels_baseline_test_roc_auc``, ``gain_over_best_single_channel``,
    ``single_<channel>_test_roc_auc``), the single-channel table and the RFM test
    probabilities (for the charts). With one observed channel the single channel *is* every
    channel: the gain is 0 by construction, and no single-channel AUC is reported.
    """
    table = single_channel_baselines(
        params, names, x["train"][sample], y["train"][sample], x["valid"], y["valid"],
        x["test"], y["test"],
    )  # fmt: skip
    everything = table[table["channel"] == ALL_CHANNELS].iloc[0]
    singles = table[table["channel"] != ALL_CHANNELS]
    rfm = fit_rfm_baseline(fit_rows, y_fit)
    p_rfm = rfm.predict_proba(rfm_matrix(test_rows))[:, 1]
    metrics = {
        "rfm_test_roc_auc": ev.auc(y["test"], p_rfm),
        "observed_channels": float(len(observed_channels(names, x["train"][sample]))),
        "all_channels_baseline_test_roc_auc": float(everything["test_auc"]),
    }
    if len(singles) >= 2:
        best_single = singles.iloc[0]
        metrics["best_single_channel_test_roc_auc"] = float(best_single["test_auc"])
        metrics["gain_over_best_single_channel"] = float(
            everything["test_auc"] - best_single["test_auc"]
        )
        metrics.update(
            {f"single_{r.channel}_test_roc_auc": r.test_auc for r in singles.itertuples()}
        )
    else:
        # One channel (or none): its model is the all-feature model, so there is no gain.
        metrics["gain_over_best_single_channel"] = 0.0
    return metrics, table, p_rfm


def single_channel_note(metrics: dict[str, float]) -> str | None:
    """The plain statement for a log with fewer than two channels, else ``None``."""
    observed = int(metrics.get("observed_channels", 2))
    if observed >= 2:
        return None
    return (
        f"the log holds activity on {observed} channel{'s' if observed != 1 else ''}: the "
        "omnichannel gain is zero by construction, so no single-channel baseline was fitted; "
        "compare with RFM-logistic and BG/NBD instead"
    )
