"""Issue 12, training from the whole history: automatic cutoffs, `train all` that trains every
model it can and names the others, the classical baselines and the single-channel statement."""

from __future__ import annotations

from datetime import UTC

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from data_layer.event_store import write_events
from data_layer.schema import to_canonical_table
from data_layer.settings import Settings
from omniscore.cli import app
from tests.training_home import build_home
from training.baselines import bgnbd_scores, observed_channels, single_channel_note
from training.datasets import MAX_AUTO_TRAIN_CUTOFFS, auto_train_cutoffs, plan_cutoffs


def _weekly(start: str, n: int) -> list[pd.Timestamp]:
    return list(pd.date_range(start, periods=n, freq="7D", tz=UTC))


def test_automatic_cutoffs_span_the_whole_history_and_widen_with_the_horizon():
    # Three years of weekly snapshots: 157 of them.
    snaps = _weekly("2023-07-03", 157)
    start, end = snaps[0] - pd.Timedelta(days=1), snaps[-1]
    short = plan_cutoffs(snaps, start, end, horizon_days=14, lookback_days=90, n_cutoffs=None)
    long = plan_cutoffs(snaps, start, end, horizon_days=90, lookback_days=90, n_cutoffs=None)
    for plan, h in ((short, 14), (long, 90)):
        gap = pd.Timedelta(days=h)
        assert plan.test + gap <= end and plan.valid + gap <= plan.test
        assert all(t + gap <= plan.valid for t in plan.train)
        steps = np.diff([t.value for t in plan.train]) / pd.Timedelta(days=1).value
        assert steps.min() >= max(7, h / 2)
        # The first training cutoff is within one step of the start of the usable history
        # (after the 90-day lookback), not in its last months.
        first_usable = start + pd.Timedelta(days=90)
        assert plan.train[0] - first_usable < pd.Timedelta(days=steps.max())
    # 14 days: at most 30 cutoffs, so spread 5 weeks apart over the 2.5 usable years.
    assert len(short.train) == 28 <= MAX_AUTO_TRAIN_CUTOFFS
    assert set(np.diff([t.value for t in short.train]) // pd.Timedelta(days=1).value) == {35}
    # 90 days: at least 45 days apart (7 weeks on a weekly grid), and the validation and
    # test windows take 180 days off the end, so fewer.
    assert len(long.train) == 15
    assert set(np.diff([t.value for t in long.train]) // pd.Timedelta(days=1).value) == {49}
    # A given number keeps the latest ones, as before.
    fixed = plan_cutoffs(snaps, start, end, horizon_days=14, lookback_days=90, n_cutoffs=6)
    assert len(fixed.train) == 4 and fixed.train[-1] == short.train[-1]


def test_automatic_cutoffs_of_a_short_pool_take_every_week():
    pool = _weekly("2024-01-01", 5)
    assert auto_train_cutoffs(pool, horizon_days=14) == tuple(pool)
    assert auto_train_cutoffs(pool, horizon_days=28) == (pool[0], pool[2], pool[4])
    assert auto_train_cutoffs([], horizon_days=14) == ()


def test_a_single_channel_log_has_no_omnichannel_gain_to_report():
    names = ["store_purchases_90d", "web_purchases_90d", "purchases_90d"]
    x = np.array([[1.0, 0.0, 1.0], [0.0, np.nan, 0.0], [3.0, 0.0, 3.0]])
    assert observed_channels(names, x) == ["store"]
    note = single_channel_note({"observed_channels": 1.0})
    assert note is not None and "zero by construction" in note and "1 channel:" in note
    assert single_channel_note({"observed_channels": 2.0}) is None
    assert single_channel_note({}) is None  # segments carry no channel count


def test_bgnbd_baseline_reads_only_purchases_before_the_cutoff(tmp_path):
    settings = Settings.from_env(tmp_path, env={})
    settings.ensure_dirs()
    cutoff = pd.Timestamp("2026-03-01", tz=UTC)
    rows = []
    # Ten regulars who bought every two weeks for a year, ten who bought once a year ago.
    for i in range(10):
        for k in range(26):
            day = cutoff - pd.Timedelta(days=365 - 14 * k)
            rows.append((f"R{i}", day, 20.0))
        rows.append((f"O{i}", cutoff - pd.Timedelta(days=360 + i), 15.0))
    frame = pd.DataFrame(rows, columns=["customer_id", "event_timestamp", "amount"])
    frame = frame.assign(channel="store", event_type="purchase")
    write_events(settings, to_canonical_table(frame))
    ids = ["R0", "O0", "never"]
    before = bgnbd_scores(settings, cutoff, ids, 14)
    assert before[0] > 0.5 > before[1] > 0 and before[2] == 0.0
    # A purchase at or after the cutoff changes nothing: the fit reads only what came before.
    late = pd.DataFrame(
        [("O0", cutoff, 99.0), ("O0", cutoff + pd.Timedelta(days=3), 5.0)],
        columns=["customer_id", "event_timestamp", "amount"],
    ).assign(channel="store", event_type="purchase")
    write_events(settings, to_canonical_table(late))
    assert np.array_equal(bgnbd_scores(settings, cutoff, ids, 14), before)
    lapse = bgnbd_scores(settings, cutoff, ids, 14, outcome="lapse")
    assert np.allclose(lapse, 1.0 - before)


@pytest.mark.slow
def test_train_all_trains_what_it_can_and_exits_non_zero_naming_the_failure(tmp_path, mlflow_db):
    # 150 days: enough for propensity (90-day lookback + three 14-day label windows) and
    # segments, not for churn (90 + 60 = 150 days of history needed, 149 held).
    home = build_home(tmp_path / "home", n_customers=200, days=150, seed=5)
    mlflow_db(home.home / "mlflow.db")
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["train", "all", "--trials", "1", "--min-class", "5", "--home", str(home.home)],
        env={"OMNISCORE_LGBM_THREADS": "1"},
    )
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert "not trained: churn: not enough history" in output
    assert "1 of 3 models could not be trained (churn); trained: propensity, segments" in output
    assert "test AUC" in output and "RFM-logistic" in output and "BG/NBD" in output
    client = MlflowClient(tracking_uri=home.tracking_uri)
    registered = {m.name for m in client.search_registered_models()}
    assert registered == {"omniscore-propensity", "omniscore-segments"}
    (run,) = client.search_runs(
        [client.get_experiment_by_name("omniscore").experiment_id],
        "tags.`omniscore.model` = 'propensity'",
    )
    metrics = run.data.metrics
    for key in ("bgnbd_test_roc_auc", "rfm_test_roc_auc", "gain_over_best_baseline"):
        assert np.isfinite(metrics[key]), key
    assert metrics["beats_baselines"] in (0.0, 1.0)
