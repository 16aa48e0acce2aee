"""The monitor: its measures on hand-made data, then the proof on generated worlds whose truth
we know: a steady world crosses no threshold; a drift is flagged within three weekly
snapshots, the champion's AUC drops in the backtest, and the label-free AUC lands near the
realized. The five-seed steady proof is benchmarks/bench_monitor.py's (docs/monitoring.md)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.monitor import (
    drifted_groups,
    feature_drift,
    history_cutoffs,
    psi,
    write_reference,
)


def test_psi_is_zero_on_the_same_population_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.beta(2, 8, 5000)
    assert psi(reference, rng.beta(2, 8, 5000)) < 0.02
    assert psi(reference, rng.beta(4, 8, 5000)) > 0.2


def test_feature_drift_is_grouped_by_signal_family_and_channel():
    rng = np.random.default_rng(1)
    n = 2000
    reference = pd.DataFrame(
        {
            "store_events_30d": rng.poisson(3, n).astype(float),
            "app_events_30d": rng.poisson(2, n).astype(float),
            "email_events_30d": rng.poisson(1, n).astype(float),
        }
    )
    current = reference.copy()
    current["store_events_30d"] = rng.poisson(1, n).astype(float)  # store activity moved
    current["app_events_30d"] = rng.poisson(4, n).astype(float)  # to the app
    drift = feature_drift(reference, current, list(reference.columns))
    table = drift["features"].set_index("feature")
    assert table.loc["store_events_30d", "drifted"] and table.loc["app_events_30d", "drifted"]
    assert not table.loc["email_events_30d", "drifted"]
    assert drift["share"] == pytest.approx(2 / 3)
    groups = drift["groups"].set_index(["family", "channel"])
    assert groups.loc[("channel_activity", "store"), "drifted"] == 1
    assert groups.loc[("channel_activity", "app"), "drifted"] == 1


def test_a_channel_that_moves_as_a_whole_is_flagged_and_a_campaign_channel_is_not():
    rng = np.random.default_rng(2)
    n = 3000
    windows = ("events_7d", "active_days_7d", "events_30d", "active_days_30d")

    def frame(store: float, sms: float) -> pd.DataFrame:
        columns = {f"store_{w}": rng.poisson(store, n) for w in windows}
        columns |= {f"sms_{w}": rng.poisson(sms, n) for w in windows}
        return pd.DataFrame(columns).astype(float)

    reference = frame(store=3, sms=1)
    # Before the reference the store was steady, and an SMS campaign moved the SMS counts.
    history = [frame(store=3, sms=1), frame(store=3, sms=3)]
    current = frame(store=1, sms=3)  # the store's visits fell; another campaign week
    drift = feature_drift(reference, current, list(reference.columns), history)
    groups = drift["groups"].set_index(["family", "channel"])
    store = groups.loc[("channel_activity", "store")]
    assert store["drifted"] == 4 and store["seasonal_ratio"] > 5
    # The SMS counts moved as far as the campaign once moved them: a feature or two may edge
    # past its seasonal range by chance, the group as a whole does not.
    assert groups.loc[("channel_activity", "sms"), "seasonal_ratio"] < 1.2
    (alarm,) = drifted_groups(drift["groups"], ratio=2.0)
    assert alarm.startswith("channel_activity/store (4 of 4 features")
    # Without history there is nothing to compare with: no group alarm, only the share.
    alone = feature_drift(reference, current, list(reference.columns))
    assert alone["groups"]["seasonal_ratio"].isna().all()
    assert drifted_groups(alone["groups"], ratio=2.0) == []


def test_the_seasonal_range_looks_back_week_to_week_and_over_the_same_span():
    weeks = list(pd.date_range("2026-01-05", periods=20, freq="7D", tz="UTC"))
    anchor = weeks[12]
    # Current 5 weeks after the reference: the 3 weeks before it, and 4 to 6 weeks before it.
    assert history_cutoffs(weeks, anchor, weeks[17]) == [weeks[i] for i in (6, 7, 8, 9, 10, 11)]
    # One week after: the spans overlap the week-to-week ones.
    assert history_cutoffs(weeks, anchor, weeks[13]) == [weeks[i] for i in (9, 10, 11)]
    # Never a snapshot at or after the reference's, and none before the first.
    assert history_cutoffs(weeks, weeks[2], weeks[19]) == [weeks[0], weeks[1]]
    assert history_cutoffs(weeks, anchor, weeks[5]) == [weeks[i] for i in (9, 10, 11)]


def test_the_reference_sample_holds_no_customer_id(tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": [f"C{i}" for i in range(20)],
            "event_timestamp": pd.Timestamp("2026-06-01", tz="UTC"),
            "x": np.arange(20.0),
        }
    )
    labels = np.arange(20) % 2
    path = write_reference(
        frame, ["x"], tmp_path, seed=1, probability=np.linspace(0, 1, 20), label=labels
    )
    stored = pd.read_parquet(path)
    assert list(stored.columns) == ["x", "probability", "label"]
    assert len(stored) == 20
    np.testing.assert_allclose(stored["probability"], stored["x"] / 19)
    np.testing.assert_array_equal(stored["label"], stored["x"].astype(int) % 2)


PROOF_CUSTOMERS = 1000
"""Customers of the drift proof world: the benchmark's size (benchmarks/bench_monitor.py,
``python -m benchmarks.run monitor_proof``: five steady seeds and this drifted world)."""
PROOF_MODELS = ("propensity", "segments")
"""Churn is left out here (the benchmark monitors all three): the drift is flagged through the
segments and the backtest is of propensity."""


@pytest.mark.slow  # the serving home's champions are trained
def test_a_steady_world_crosses_no_threshold(serving_home, tmp_path):
    """The session's steady world (no drift scenario) against its champions' references:
    nothing may ring. The five-seed proof at 1,000 customers is the benchmark's."""
    from training.monitor import monitor

    result = monitor(serving_home, out=tmp_path / "monitor", log_run=False)
    assert set(result.models) == {"propensity", "churn", "segments"}
    assert result.alarms == [], result.summary()
    assert result.models["segments"]["refit_ari_reference"] > 0
    # The label-free estimate recalibrates on the reference's labels (CBPE): on the
    # reference itself it then moves from the raw estimate towards the AUC it realized.
    from sklearn.metrics import roc_auc_score

    from training.backtest import expected_auc
    from training.model_io import load_champion
    from training.monitor import load_reference

    propensity = result.models["propensity"]
    assert propensity["expected_auc_from"].startswith("reference-recalibrated"), propensity
    reference = load_reference(serving_home, load_champion(serving_home, "propensity"))
    realized = roc_auc_score(reference["label"], reference["probability"])
    raw = expected_auc(reference["probability"])
    recalibrated = propensity["expected_auc_reference"]
    assert abs(recalibrated - realized) < abs(raw - realized), (raw, recalibrated, realized)


@pytest.fixture(scope="module")
def drift_world(tmp_path_factory):
    from benchmarks.bench_monitor import TRAINED_UNTIL, monitoring_world

    path = tmp_path_factory.mktemp("drift-world")
    return monitoring_world(
        path, PROOF_CUSTOMERS, seed=1, drift_at=TRAINED_UNTIL, models=PROOF_MODELS
    )


@pytest.mark.slow
def test_drift_is_flagged_within_three_weeks_and_the_backtest_auc_drops(drift_world, tmp_path):
    from benchmarks.bench_monitor import TRAINED_UNTIL, auc_before_and_after, check_world

    found = check_world(drift_world, TRAINED_UNTIL, tmp_path, models=PROOF_MODELS,
                        stop_at_first_alarm=True, snapshots=8)  # fmt: skip
    assert found["first_flagged"] is not None, found["figures_by_week"]
    # The drift is a concept drift (half the customers' purchase rates are reshuffled): the
    # champion trained before it loses AUC (measured 0.720 -> 0.645 on this world; cutoffs
    # scatter by about 0.02 at 1,000 customers, hence the margin).
    before, after = auc_before_and_after(found["auc_by_cutoff"])
    assert before - after >= 0.03, found["auc_by_cutoff"]
    # Cutoffs the version was fitted on are not backtested (they would flatter it).
    assert found["backtest_skipped_fitted_cutoffs"], found
    assert not set(found["backtest_skipped_fitted_cutoffs"]) & set(found["auc_by_cutoff"])
    # The label-free estimate lands near the truth where its assumption (the calibration still
    # holds) does: on the held-out cutoffs before the drift. After it, it is off, and the
    # backtest says by how much. Recalibrated on the reference's labels it is nearer than the
    # raw probabilities (measured +0.029 against +0.041 raw on this world; +0.033 / +0.049 on
    # the previous scenario's draw of the same days: docs/monitoring.md, Open), so the bound
    # here is what the reference's ~930 labelled rows support.
    held = found["held_out_before_training_end"]
    assert abs(held["expected_auc_error"]) < abs(held["expected_auc_raw_error"]), held
    assert abs(held["expected_auc_error"]) <= 0.04, held
