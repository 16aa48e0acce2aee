"""Backtests: the label-free AUC estimate, the quality score, and a backtest of a served
champion from the score log and from past snapshots (real Feast, MLflow, event store)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from training_home import copy_home

from training.backtest import (
    BACKTEST_TAG,
    expected_auc,
    fit_recalibration,
    quality_score,
    reference_recalibration,
    score_metrics,
)


def test_expected_auc_is_the_mean_auc_of_outcomes_drawn_from_the_probabilities():
    rng = np.random.default_rng(3)
    p = rng.beta(1.2, 6.0, size=4000)
    realized = [roc_auc_score(rng.random(p.size) < p, p) for _ in range(40)]
    assert expected_auc(p) == pytest.approx(np.mean(realized), abs=0.005)
    # Ties count one half, as in the AUC.
    tied = np.round(p, 1)
    realized = [roc_auc_score(rng.random(tied.size) < tied, tied) for _ in range(40)]
    assert expected_auc(tied) == pytest.approx(np.mean(realized), abs=0.005)
    assert np.isnan(expected_auc(np.array([0.3])))


def test_the_estimate_recalibrated_on_a_labelled_reference_undoes_squeezed_probabilities():
    """Served probabilities half as dispersed as the truth (logit halved, shifted) make the
    raw estimate far too low; the recalibration fitted on a labelled reference recovers the
    map (slope 2, intercept 1.6) and the estimate lands near the realized AUC."""
    rng = np.random.default_rng(0)

    def scored(n):
        z = rng.normal(-1.5, 1.2, n)  # the true log-odds
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
        return 1 / (1 + np.exp(-(0.5 * z - 0.8))), y

    p_ref, y_ref = scored(2000)
    p, y = scored(4000)
    recalibration = fit_recalibration(p_ref, y_ref)
    assert recalibration.slope == pytest.approx(2.0, abs=0.15)
    assert recalibration.intercept == pytest.approx(1.6, abs=0.15)
    raw, fixed = score_metrics(y, p), score_metrics(y, p, recalibration)
    assert raw["expected_auc_error"] < -0.08
    assert abs(fixed["expected_auc_error"]) < 0.02
    assert fixed["expected_auc_raw"] == raw["expected_auc"]
    assert fixed["auc"] == raw["auc"]  # a monotone map: the ranking is the served one
    # The same from a stored reference; none without labels, few positives or no ranking.
    reference = pd.DataFrame({"probability": p_ref, "label": y_ref})
    assert reference_recalibration(reference) == recalibration
    assert reference_recalibration(reference.drop(columns="label")) is None
    assert fit_recalibration(p_ref[:100], np.arange(100) < 9) is None  # 9 positives
    assert fit_recalibration(p_ref, 1 - y_ref) is None


def test_quality_score_gives_80_points_to_ranking_and_20_to_calibration():
    assert quality_score(0.5, 0.10) == 0.0
    assert quality_score(0.9, 0.0) == 100.0
    assert quality_score(0.95, 0.0) == 100.0
    assert quality_score(0.7, 0.05) == pytest.approx(80 * 0.5 + 20 * 0.5)
    assert quality_score(0.4, 0.0) == 20.0
    assert np.isnan(quality_score(float("nan"), 0.0))


@pytest.mark.slow
def test_backtest_from_the_score_log_and_from_past_snapshots(serving_home, tmp_path):
    from data_layer.score_log import read_scores
    from serving.batch import score_batch
    from training.backtest import backtest, fitted_cutoffs, outcomes_seen
    from training.datasets import snapshot_cutoffs
    from training.model_io import registry_client

    home = copy_home(serving_home, tmp_path / "home")
    # Scores issued nine and five weeks before the end, as a batch scoring then would have.
    cutoffs = snapshot_cutoffs(home)
    issued = [cutoffs[-10], cutoffs[-6]]
    for t in issued:
        score_batch(home, tmp_path / "scores.parquet", as_of=t.to_pydatetime())
    assert len(read_scores(home, "omniscore-propensity")) > 0

    result = backtest(home, "propensity", out=tmp_path / "report")
    assert result.source == "score_log"
    [(version, bt)] = result.versions.items()
    assert bt.cutoffs == [t.date().isoformat() for t in issued]
    rows = result.rows
    y, p = rows["label"].to_numpy(), rows["probability"].to_numpy()
    assert bt.metrics["auc"] == pytest.approx(roc_auc_score(y, p))
    assert bt.metrics["n"] == len(rows) and 0.5 < bt.metrics["auc"] <= 1.0
    assert 0 <= bt.metrics["quality"] <= 100
    # The label-free estimate is of the probabilities recalibrated on the version's labelled
    # reference (its test rows), and says so.
    assert bt.estimate_from.startswith("reference-recalibrated"), bt.estimate_from
    assert bt.metrics["expected_auc"] == pytest.approx(expected_auc(bt.recalibration(p)))
    assert bt.metrics["expected_auc_raw"] == pytest.approx(expected_auc(p))
    assert set(bt.bands["band"]) <= {"low", "medium", "high"}
    assert bt.bands["n"].sum() == len(rows)
    assert list(bt.deciles["decile"]) == list(range(1, 11))
    assert bt.segments["n"].sum() == len(rows)
    assert (tmp_path / "report" / "index.html").exists()
    assert (tmp_path / "report" / f"v{version}-calibration.png").stat().st_size > 1000

    client = registry_client(home)
    run = client.get_run(result.run_id)
    assert run.data.tags["omniscore.model_version"] == version
    assert run.data.metrics[f"v{version}.auc"] == pytest.approx(bt.metrics["auc"])
    mv = client.get_model_version("omniscore-propensity", version)
    assert mv.tags[BACKTEST_TAG] == result.run_id
    assert run.data.tags[f"v{version}.expected_auc_from"] == bt.estimate_from
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "backtest")}
    assert "backtest/index.html" in artifacts

    # Without a log: the champion scores past snapshots itself, except those it was fitted
    # on (its train and valid cutoffs), which it names; the same cutoffs agree.
    again = backtest(home, "propensity", out=tmp_path / "snap", source="snapshots",
                     snapshots=6, log_run=False)  # fmt: skip
    assert again.source == "snapshots"
    snap = again.versions[version]
    fitted = {t.date().isoformat() for t in fitted_cutoffs(mv.tags)}
    assert fitted and not fitted & set(snap.cutoffs)
    # So are those whose outcome window overlaps a fitted cutoff's (within the horizon).
    learned = fitted_cutoffs(mv.tags)
    seen = {t.date().isoformat() for t in cutoffs if outcomes_seen(t, learned, 14)}
    assert seen > fitted and not seen & set(snap.cutoffs)
    assert set(again.skipped_cutoffs) <= seen
    assert again.summary()["skipped_cutoffs"] == again.skipped_cutoffs
    common = set(snap.cutoffs) & set(bt.cutoffs)
    assert common and common == set(bt.cutoffs) - seen, (bt.cutoffs, seen, snap.cutoffs)
    logged = rows[rows["cutoff"].dt.date.astype(str).isin(common)]
    logged = logged.set_index(["customer_id", "cutoff"])["probability"]
    scored = again.rows.set_index(["customer_id", "cutoff"])["probability"]
    joined = pd.concat([logged, scored], axis=1, join="inner")
    assert len(joined) == len(logged)
    np.testing.assert_allclose(joined.iloc[:, 0], joined.iloc[:, 1], rtol=1e-9, atol=1e-12)

    # A score log without old enough scores, asked for explicitly, is a clear error.
    late = copy_home(serving_home, tmp_path / "late")
    score_batch(late, tmp_path / "late.parquet", as_of=datetime(2026, 6, 29, tzinfo=UTC))
    with pytest.raises(ValueError, match="--source snapshots"):
        backtest(late, "propensity", source="score_log", log_run=False)
    with pytest.raises(ValueError, match="only classifiers"):
        backtest(late, "segments")
