"""Pure training logic on tiny hand-made inputs: metrics, cutoffs, gate, segments, encoding.

Expected values are worked out by hand in the comments; nothing here needs Feast or MLflow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.catalog import SEGMENT_FEATURES
from training.datasets import IneligibleError, check_history, plan_cutoffs
from training.evaluate import (
    expected_calibration_error,
    mean_abs_shap,
    shap_by_channel,
    top_decile_lift,
)
from training.model_io import ClassifierPackage, encode_frame, population_stats
from training.registry import GatePolicy, gate
from training.segments import SegmentModel, fit_segment_model, match_ids

UTC = "UTC"


def test_expected_calibration_error_by_hand():
    # Bins of width 0.1: {0.05, 0.05} observed 0/2 -> |0 - 0.1| = 0.1 summed gap;
    # {0.95, 0.95} observed 2/2 -> |2 - 1.9| = 0.1. ECE = (0.1 + 0.1) / 4 = 0.05.
    y = np.array([0, 0, 1, 1])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    assert expected_calibration_error(y, p) == pytest.approx(0.05)
    # Perfectly calibrated bin: p = 0.5 for two rows, one positive -> 0.
    assert expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.5])) == 0.0


def test_top_decile_lift_by_hand():
    # 20 rows, base rate 4/20 = 0.2; top 10% = 2 highest scores, both positive -> rate 1.0.
    y = np.zeros(20)
    y[[0, 1, 10, 11]] = 1
    p = np.linspace(0, 1, 20)[::-1].copy()  # row 0 highest
    assert top_decile_lift(y, p) == pytest.approx(5.0)


def test_shap_grouped_by_channel():
    names = ["web_events_7d", "web_events_30d", "store_events_7d", "purchases_90d"]
    contrib = np.array([[1.0, -1.0, 2.0, 0.5, 9.0], [-3.0, 1.0, 0.0, -0.5, 9.0]])
    per_feature = mean_abs_shap(contrib, names)
    assert per_feature["web_events_7d"] == pytest.approx(2.0)
    by_channel = shap_by_channel(per_feature)
    # web: 2 + 1 = 3; store: 1; purchases_90d is cross-channel RFM: 0.5.
    assert by_channel.to_dict() == pytest.approx({"web": 3.0, "store": 1.0, "cross_channel": 0.5})
    with pytest.raises(ValueError):
        mean_abs_shap(contrib[:, :3], names)


def _weekly(start: str, n: int) -> list[pd.Timestamp]:
    return list(pd.date_range(start, periods=n, freq="7D", tz=UTC))


def test_plan_cutoffs_keeps_label_windows_apart():
    snaps = _weekly("2024-01-01", 40)
    start, end = pd.Timestamp("2023-09-01", tz=UTC), pd.Timestamp("2024-10-01", tz=UTC)
    plan = plan_cutoffs(snaps, start, end, horizon_days=60, lookback_days=90, n_cutoffs=6)
    h = pd.Timedelta(days=60)
    assert plan.test + h <= end
    assert plan.valid + h <= plan.test
    assert all(t + h <= plan.valid for t in plan.train)
    assert len(plan.train) == 4 and list(plan.train) == sorted(plan.train)
    # The test cutoff is the latest label-complete snapshot.
    assert not any(plan.test < t and t + h <= end for t in snaps)


def test_plan_cutoffs_refuses_short_history():
    start, end = pd.Timestamp("2024-01-01", tz=UTC), pd.Timestamp("2024-04-01", tz=UTC)
    with pytest.raises(IneligibleError, match="lookback \\+ horizon = 90 \\+ 14 = 104"):
        check_history(start, end, 90, 14)
    snaps = _weekly("2024-04-01", 10)
    with pytest.raises(IneligibleError, match="not enough history for an out-of-time split"):
        plan_cutoffs(snaps, start - pd.Timedelta(days=90), snaps[-1], 60, 90)


def test_gate_rules():
    policy = GatePolicy(auc_tolerance=0.01, max_ece=0.05, min_auc=0.6)
    good = {"roc_auc": 0.80, "ece": 0.02}
    assert gate("classifier", good, None, policy)[0]
    assert not gate("classifier", {"roc_auc": 0.55, "ece": 0.02}, None, policy)[0]
    assert gate("classifier", {"roc_auc": 0.795, "ece": 0.02}, good, policy)[0]
    ok, why = gate("classifier", {"roc_auc": 0.78, "ece": 0.02}, good, policy)
    assert not ok and "champion" in why
    ok, why = gate("classifier", {"roc_auc": 0.9, "ece": 0.08}, good, policy)
    assert not ok and "calibration" in why
    assert not gate("segments", {"silhouette": 0.01}, None, policy)[0]
    assert gate("segments", {"silhouette": 0.2}, {"silhouette": 0.22}, policy)[0]


def _blobs(seed: int, n: int = 600) -> tuple[pd.DataFrame, np.ndarray]:
    """Three clear groups: store-heavy big spenders, web-heavy, near-inactive."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    frame = pd.DataFrame({f: np.zeros(n) for f in SEGMENT_FEATURES})
    frame["tenure_days"] = rng.uniform(300, 400, n)
    frame.loc[group == 0, "store_events_90d"] = rng.uniform(40, 60, (group == 0).sum())
    frame.loc[group == 0, "revenue_90d"] = rng.uniform(2000, 3000, (group == 0).sum())
    frame.loc[group == 1, "web_events_90d"] = rng.uniform(40, 60, (group == 1).sum())
    frame.loc[group == 1, "revenue_90d"] = rng.uniform(200, 300, (group == 1).sum())
    frame.loc[group == 2, "revenue_90d"] = rng.uniform(0, 10, (group == 2).sum())
    frame.loc[group == 2, "days_since_last_purchase"] = rng.uniform(100, 200, (group == 2).sum())
    frame.loc[group != 2, "days_since_last_purchase"] = rng.uniform(1, 10, (group != 2).sum())
    return frame, group


def test_segments_recover_groups_with_names_and_json_round_trip(tmp_path):
    frame, group = _blobs(0)
    model = fit_segment_model(frame, SEGMENT_FEATURES, "kmeans", 3, seed=1)
    ids, names = model.assign(frame)
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(group, ids) > 0.95
    by_group = {g: names[group == g][0] for g in range(3)}
    assert by_group[0].startswith("store-first") and "high value" in by_group[0]
    assert by_group[1].startswith("web-first")
    assert len(set(model.names)) == 3
    loaded = SegmentModel.load(model.save(tmp_path / "s.json"))
    assert (loaded.assign(frame)[0] == ids).all()
    gmm = fit_segment_model(frame, SEGMENT_FEATURES, "gmm", 3, seed=1)
    assert adjusted_rand_score(group, gmm.assign(frame)[0]) > 0.95


def test_segment_ids_stay_stable_across_retrains():
    frame, group = _blobs(0)
    champion = fit_segment_model(frame, SEGMENT_FEATURES, "kmeans", 3, seed=1)
    # A retrain on fresh customers, with another seed, whose clusters come out in another
    # order, must give each group the champion's id.
    fresh, fresh_group = _blobs(7)
    retrained = fit_segment_model(fresh, SEGMENT_FEATURES, "kmeans", 3, seed=9, champion=champion)
    old_ids = {g: champion.assign(frame)[0][group == g][0] for g in range(3)}
    new_ids = {g: retrained.assign(fresh)[0][fresh_group == g][0] for g in range(3)}
    assert old_ids == new_ids
    # A new fourth cluster gets a fresh id, never a reused one.
    ids = match_ids(
        np.asarray(retrained.centroids_raw + [retrained.centroids_raw[0]]),
        np.asarray(champion.centroids_raw),
        champion.ids,
        retrained.preprocessor,
        np.array([3.0, 2.0, 1.0, 0.5]),
    )
    assert sorted(ids) == [0, 1, 2, 3]


def test_encoding_uses_a_fixed_vocabulary():
    frame = pd.DataFrame({"x": [1.0, None, 3.0], "region": ["north", "mars", None]})
    out = encode_frame(frame, ["x", "region"], {"region": ["east", "north"]})
    assert out[0].tolist() == [1.0, 1.0]
    assert np.isnan(out[1, 0]) and np.isnan(out[1, 1])  # unknown category -> missing
    assert np.isnan(out[2, 1])
    with pytest.raises(KeyError):
        encode_frame(frame, ["x", "missing_feature"], {})


def test_percentiles_bands_and_cold_start():
    p = np.linspace(0.0, 1.0, 101)
    quantiles, thresholds, cold = population_stats(p)
    assert thresholds == pytest.approx([0.7, 0.9])
    assert cold == {"probability": 0.5, "percentile": 50.0, "band": "low"}
    pkg = ClassifierPackage(None, [], {}, {"a": 1.0, "b": 0.0}, quantiles, thresholds, cold)
    assert pkg.score_percentile(np.array([0.25, 0.95])) == pytest.approx([25.0, 95.0])
    assert pkg.band(np.array([0.1, 0.75, 0.95])).tolist() == ["low", "medium", "high"]
    assert pkg.calibrate(np.array([0.0]))[0] == pytest.approx(0.5)


def test_optimize_counts_only_the_trials_this_process_ran(tmp_path):
    # Two study objects on one storage stand for two workers; "the other worker" finishes
    # three trials while our first trial runs. Our count must leave those out.
    from training.tune import create_study, finished_trials, optimize

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    ours = create_study(url, "shared", seed=1, heartbeat=None)
    other = create_study(url, "shared", seed=2, heartbeat=None)

    def objective(trial) -> float:
        if trial.number == 0:
            assert optimize(other, lambda t: 2.0, n_trials=3) == 3
        return 1.0

    assert optimize(ours, objective, n_trials=6) == 3
    assert finished_trials(ours) == 6
    assert optimize(ours, objective, n_trials=6) == 0  # a complete study runs nothing


def test_tuning_sample_is_stratified_deterministic_and_whole_when_small():
    from training.classifier_job import tuning_sample

    y = np.r_[np.zeros(9000, dtype=int), np.ones(1000, dtype=int)]
    sample = tuning_sample(y, limit=2000)
    assert len(sample) == 2000 and len(set(sample.tolist())) == 2000
    assert np.all(np.diff(sample) > 0)  # sorted, so rows keep their order
    assert y[sample].sum() == 200  # the positive rate of the whole, 10%
    assert np.array_equal(sample, tuning_sample(y, limit=2000))  # every worker: same rows
    assert np.array_equal(tuning_sample(y, limit=10_000), np.arange(10_000))
    assert np.array_equal(tuning_sample(y, limit=0), np.arange(10_000))


def test_churn_lookback_changes_only_the_churn_label():
    from training.labels import label_spec

    churn = label_spec("churn", active_lookback_days=45)
    assert (churn.horizon_days, churn.active_lookback_days) == (60, 45)
    assert "[T-45d, T)" in churn.definition()
    # `train all --churn-lookback-days 45` must not shorten the history propensity needs.
    assert label_spec("propensity", active_lookback_days=45) == label_spec("propensity")
    assert label_spec("propensity", horizon_days=21, active_lookback_days=45).lookback_days == 90
