"""Training sets on a small generated home: one row per entity row, no leakage, eligibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from training_home import build_home, rebuild_features

from data_layer.event_store import read_events, write_events
from data_layer.schema import to_canonical_table
from feature_repo.catalog import FEATURE_NAMES
from training.datasets import IneligibleError, build_training_set, fetch_features
from training.labels import LabelSpec, label_frame


@pytest.fixture(scope="module")
def home(copy_world, tmp_path_factory):
    return copy_world(tmp_path_factory.mktemp("data-home"))  # test 2 adds events to it


def test_one_row_per_entity_row_even_without_features(home):
    ts = build_training_set(home, "propensity", min_class=20)
    real = ts.frame[["customer_id", "event_timestamp", "label"]].head(5)
    long_before = real["event_timestamp"].min() - pd.Timedelta(days=400)
    extra = pd.DataFrame(
        {
            # A customer Feast has never seen, and a known one at a time before any snapshot
            # (all its feature rows lie in the future): Feast's file store would drop both.
            "customer_id": ["nobody-knows-me", real["customer_id"].iloc[0]],
            "event_timestamp": [real["event_timestamp"].iloc[0], long_before],
            "label": [0, 1],
        }
    )
    entity = pd.concat([real, extra, real.head(1)], ignore_index=True)
    out = fetch_features(home, "propensity_v1", entity)
    assert len(out) == len(entity)
    assert out["customer_id"].tolist() == entity["customer_id"].tolist()
    assert out["label"].tolist() == entity["label"].tolist()
    assert out.loc[5:6, list(FEATURE_NAMES)].isna().all().all()
    assert out.loc[0, "purchases_90d"] == out.loc[7, "purchases_90d"]  # the duplicate row
    assert ts.frame[list(FEATURE_NAMES)].notna().any(axis=1).all()


def test_events_after_the_latest_cutoff_change_no_training_feature(home):
    ts = build_training_set(home, "propensity", min_class=20)
    before = ts.frame.copy()
    last = ts.plan.test
    customers = before["customer_id"].unique()[:200]
    # Purchases one and two days after the latest cutoff: inside its label window.
    fresh = pd.DataFrame(
        {
            "customer_id": np.repeat(customers, 2),
            "event_timestamp": np.tile(
                [last + pd.Timedelta(hours=30), last + pd.Timedelta(hours=50)], len(customers)
            ),
            "channel": "web",
            "event_type": "purchase",
            "amount": 99.0,
        }
    )
    write_events(home, to_canonical_table(fresh))
    rebuild_features(home)
    after = build_training_set(home, "propensity", min_class=20)
    assert after.plan == ts.plan
    key = ["customer_id", "event_timestamp"]
    merged = before.merge(after.frame, on=key, suffixes=("", "_new"))
    assert len(merged) == len(before)
    for name in FEATURE_NAMES:
        old, new = merged[name], merged[f"{name}_new"]
        same = (old == new) | (old.isna() & new.isna())
        assert same.all(), f"{name} changed after adding events past the last cutoff"
    # The new events did reach the labels: every touched customer now buys at the test cutoff.
    test_new = merged[(merged["event_timestamp"] == last) & merged["customer_id"].isin(customers)]
    assert (test_new["label_new"] == 1).all() and (test_new["label"] == 0).any()


def test_eligibility_refuses_with_a_clear_message(home, tmp_path):
    with pytest.raises(IneligibleError, match="each class needs at least 1000000"):
        build_training_set(home, "propensity", min_class=1_000_000)
    short = build_home(tmp_path / "short", n_customers=80, days=60)
    with pytest.raises(IneligibleError, match="not enough history"):
        build_training_set(short, "churn", min_class=1)


def test_labels_follow_their_definitions(home):
    cutoff = build_training_set(home, "churn", min_class=20).plan.test
    churn = label_frame(home, LabelSpec.default("churn"), [cutoff])
    events = read_events(home)
    own = events[events["family"] != "contextual"]
    active = own[
        (own["event_timestamp"] >= cutoff - pd.Timedelta(days=90))
        & (own["event_timestamp"] < cutoff)
    ]["customer_id"].unique()
    kept = own[
        (own["event_timestamp"] >= cutoff)
        & (own["event_timestamp"] < cutoff + pd.Timedelta(days=60))
    ]["customer_id"].unique()
    assert set(churn["customer_id"]) == set(active)
    expected = (~churn["customer_id"].isin(kept)).astype(int)
    assert (churn["label"].to_numpy() == expected.to_numpy()).all()
    assert 0 < churn["label"].sum() < len(churn)
