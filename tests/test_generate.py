"""The synthetic generator: deterministic, canonical, and carrying the signal it claims.

Small worlds (hundreds of customers over 120 days) keep each test to about a second.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_layer.event_store import read_customers, read_events
from data_layer.schema import (
    CHANNELS,
    CUSTOMER_SCHEMA,
    EVENT_SCHEMA,
    EVENT_TYPES,
    compute_event_ids,
)
from data_layer.settings import Settings
from data_layer.synthetic import (
    ARCHETYPE_NAMES,
    DEFAULT_END,
    GeneratedData,
    generate,
    load_truth,
    write_generated,
)

N, DAYS = 300, 120


@pytest.fixture(scope="module")
def world() -> GeneratedData:
    return generate(N, DAYS, seed=11)


@pytest.fixture(scope="module")
def events(world: GeneratedData) -> pd.DataFrame:
    frame = world.events.to_pandas()
    lives = world.truth_customers[["customer_id", "signup_date", "churn_date", "archetype"]]
    return frame.merge(lives, on="customer_id", how="left", validate="many_to_one")


def _customer_initiated(events: pd.DataFrame) -> pd.Series:
    return events["family"] != "contextual"


def _preceded_share(targets: pd.DataFrame, sources: pd.DataFrame, hours: int) -> tuple[float, int]:
    """Share of target events with a source event of the same customer in the hours before."""
    t = targets[["customer_id", "event_timestamp"]].reset_index(drop=True).reset_index()
    s = sources[["customer_id", "event_timestamp"]].rename(columns={"event_timestamp": "src"})
    pairs = t.merge(s, on="customer_id")
    window = pd.Timedelta(hours=hours)
    hit = pairs[(pairs.src < pairs.event_timestamp) & (pairs.src >= pairs.event_timestamp - window)]
    return float(t["index"].isin(hit["index"]).mean()), len(t)


# --- determinism ---------------------------------------------------------------------------


def test_same_seed_gives_identical_frames(world: GeneratedData) -> None:
    again = generate(N, DAYS, seed=11)
    assert again.events.equals(world.events)
    pd.testing.assert_frame_equal(again.customers, world.customers)
    pd.testing.assert_frame_equal(again.truth_customers, world.truth_customers)
    pd.testing.assert_frame_equal(again.truth_daily, world.truth_daily)


def test_different_seed_gives_different_world(world: GeneratedData) -> None:
    other = generate(N, DAYS, seed=12)
    assert not other.events.equals(world.events)
    assert not np.array_equal(
        other.truth_daily["p_purchase"].to_numpy(), world.truth_daily["p_purchase"].to_numpy()
    )
    assert (other.truth_customers["archetype"] != world.truth_customers["archetype"]).any()


def test_period_ends_at_the_fixed_default_or_the_given_end(world: GeneratedData) -> None:
    dates = world.truth_daily["date"]
    assert dates.max() == DEFAULT_END - pd.Timedelta(days=1)
    assert dates.min() == DEFAULT_END - pd.Timedelta(days=DAYS)
    assert world.events.column("event_timestamp").to_pandas().max() < DEFAULT_END
    end = pd.Timestamp("2025-03-01", tz="UTC")
    shifted = generate(50, 30, seed=11, end=end)
    stamps = shifted.events.column("event_timestamp").to_pandas()
    assert stamps.max() < end
    assert stamps.min() >= end - pd.Timedelta(days=30)


def test_rejects_empty_worlds() -> None:
    with pytest.raises(ValueError, match="n_customers"):
        generate(0, 10, seed=1)
    with pytest.raises(ValueError, match="days"):
        generate(10, 0, seed=1)


# --- canonical schema and vocabulary -------------------------------------------------------


def test_events_conform_to_the_canonical_schema(world: GeneratedData, events) -> None:
    assert world.events.schema == EVENT_SCHEMA
    assert set(events["channel"]) <= set(CHANNELS)
    assert set(events["event_type"]) <= set(EVENT_TYPES)
    families = events["event_type"].map({k: v.value for k, v in EVENT_TYPES.items()})
    assert (events["family"] == families).all()
    # Every family and most of the vocabulary are exercised.
    assert set(events["family"]) == {"behavioral", "transactional", "attitudinal", "contextual"}
    assert len(set(events["event_type"])) >= 20


def test_event_ids_are_unique_and_canonical(events) -> None:
    assert events["event_id"].is_unique
    # The generator's fast hashing path gives exactly the ids ingest would compute.
    assert (compute_event_ids(events) == events["event_id"].to_numpy()).all()


def test_money_ratings_sessions_devices_and_campaigns(events) -> None:
    purchases = events[events["event_type"] == "purchase"]
    returns = events[events["event_type"] == "return"]
    assert len(purchases) > 500
    assert (purchases["amount"] > 0).all()
    assert (returns["amount"] > 0).all()
    assert 0.04 <= len(returns) / len(purchases) <= 0.12
    assert events["amount"].notna().sum() == len(purchases) + len(returns)
    # Each return refunds at most what the customer spent before it.
    spent = purchases.groupby("customer_id")["amount"].sum()
    refunded = returns.groupby("customer_id")["amount"].sum()
    assert (refunded <= spent.reindex(refunded.index)).all()

    rated = events[events["rating"].notna()]
    assert set(rated["event_type"]) == {"review", "survey_response"}
    assert set(rated["rating"]) <= {1.0, 2.0, 3.0, 4.0, 5.0}

    own = _customer_initiated(events)
    web_app = own & events["channel"].isin(["web", "app"])
    assert events.loc[web_app, "session_id"].notna().all()
    assert events.loc[~events["channel"].isin(["web", "app"]), "session_id"].isna().all()
    per_session = events[web_app].groupby("session_id").size()
    assert per_session.mean() > 1.8  # several events share a session
    digital = own & events["channel"].isin(["web", "app", "email", "social", "sms", "push"])
    assert set(events.loc[digital, "device"]) == {"mobile", "desktop", "tablet"}
    assert events.loc[events["channel"].isin(["store", "call_center"]), "device"].isna().all()

    sends = events["event_type"].isin(["email_send", "push_send", "sms_send"])
    answers = events["event_type"].isin(["email_open", "email_click", "push_open", "sms_click"])
    assert events.loc[sends | answers, "campaign_id"].notna().all()
    sent = set(zip(events.loc[sends, "customer_id"], events.loc[sends, "campaign_id"], strict=True))
    answered = zip(
        events.loc[answers, "customer_id"], events.loc[answers, "campaign_id"], strict=True
    )
    assert all(pair in sent for pair in answered)


def test_customers_table(world: GeneratedData) -> None:
    customers = world.customers
    assert list(customers.columns) == CUSTOMER_SCHEMA.names
    assert len(customers) == N and customers["customer_id"].is_unique
    assert customers["customer_id"].str.fullmatch(r"C\d{6}").all()
    assert customers.notna().all().all()
    # Value shows in the loyalty programme: VIPs hold the top tiers far more than others.
    tiers = customers["loyalty_tier"].where(world.truth_customers["archetype"] == "omnichannel_vip")
    assert tiers.isin(["gold", "platinum"]).sum() >= 0.6 * tiers.notna().sum()


# --- lifetimes -------------------------------------------------------------------------------


def test_no_event_before_signup(events) -> None:
    assert (events["event_timestamp"] >= events["signup_date"]).all()
    # Some customers sign up during the period, so the rule is exercised.
    assert (
        events.groupby("customer_id")["signup_date"].first() > DEFAULT_END - pd.Timedelta(days=DAYS)
    ).sum() >= 20


def test_churned_customers_go_silent_but_still_receive_sends(world, events) -> None:
    churned = world.truth_customers["churn_date"].notna()
    assert churned.sum() >= 15
    after = events["event_timestamp"] >= events["churn_date"]
    assert not (after & _customer_initiated(events)).any()
    assert (after & ~_customer_initiated(events)).sum() > 0
    # Churn is concentrated in the drifting archetype and preceded by a drift.
    by_type = world.truth_customers.groupby("archetype")["churn_date"].apply(
        lambda s: s.notna().mean()
    )
    assert by_type["drifting_churner"] > 3 * by_type.drop("drifting_churner").max()
    truth = world.truth_customers[churned]
    assert (truth["drift_start"] < truth["churn_date"]).all()


def test_complaints_and_low_ratings_come_before_churn(events) -> None:
    """Churners contact support and rate low far more often than customers who stay."""
    own = events[_customer_initiated(events)]
    churner = own["churn_date"].notna()
    support = own["event_type"].isin(["support_contact", "complaint"])
    per_customer = support.groupby(own["customer_id"]).sum() / own.groupby("customer_id").size()
    churned_ids = own.loc[churner, "customer_id"].unique()
    assert per_customer[churned_ids].mean() > 3 * per_customer.drop(churned_ids).mean()
    rated = own[own["rating"].notna()]
    assert rated.loc[rated["churn_date"].notna(), "rating"].mean() < (
        rated.loc[rated["churn_date"].isna(), "rating"].mean() - 0.7
    )


# --- ground truth ----------------------------------------------------------------------------


def test_truth_tables(world: GeneratedData) -> None:
    truth = world.truth_customers
    assert list(truth["customer_id"]) == list(world.customers["customer_id"])
    assert set(truth["archetype"]) == set(ARCHETYPE_NAMES)
    assert (truth["archetype"] == truth["archetype_id"].map(dict(enumerate(ARCHETYPE_NAMES)))).all()
    shares = truth["archetype"].value_counts(normalize=True)
    assert shares.between(0.1, 0.25).all()
    daily = world.truth_daily
    assert len(daily) == N * DAYS
    assert daily["p_purchase"].dtype == np.float32 and daily["p_active"].dtype == np.float32
    assert daily["p_purchase"].between(0, 1).all() and daily["p_active"].between(0, 1).all()
    # Buying is a customer action, so a purchase day is an active day.
    assert (daily["p_purchase"] <= daily["p_active"] + 1e-6).all()
    assert (daily["date"] == daily["date"].dt.normalize()).all()


def _realised_days(world: GeneratedData, events: pd.DataFrame, mask: pd.Series) -> pd.Series:
    """Whether each (customer, day) of truth_daily had at least one event in ``mask``."""
    hit = events.loc[mask, ["customer_id", "event_timestamp"]]
    keys = set(zip(hit["customer_id"], hit["event_timestamp"].dt.floor("D"), strict=True))
    daily = world.truth_daily
    return pd.Series(
        [k in keys for k in zip(daily["customer_id"].astype(str), daily["date"], strict=True)],
        index=daily.index,
    )


def test_truth_probabilities_are_the_ones_sampled(world: GeneratedData, events) -> None:
    daily = world.truth_daily
    bought = _realised_days(world, events, events["event_type"] == "purchase")
    active = _realised_days(world, events, _customer_initiated(events))
    for realised, p in ((bought, daily["p_purchase"]), (active, daily["p_active"])):
        expected = p.astype(float)
        # Mean realised rate matches the mean probability within 4 standard errors.
        se = np.sqrt((expected * (1 - expected)).sum()) / len(expected)
        assert abs(realised.mean() - expected.mean()) < 4 * se
        # And it holds across the probability range, not only on average.
        bins = pd.qcut(expected, 5, duplicates="drop")
        calib = pd.DataFrame({"r": realised, "p": expected}).groupby(bins, observed=True).mean()
        assert (calib["r"] - calib["p"]).abs().max() < 0.03
    # Outside a customer's lifetime both probabilities are zero and nothing happens.
    truth = world.truth_customers.set_index("customer_id")
    signup = daily["customer_id"].astype(str).map(truth["signup_date"])
    churn = daily["customer_id"].astype(str).map(truth["churn_date"])
    outside = (daily["date"] < signup.dt.floor("D")) | (daily["date"] >= churn)
    assert outside.sum() > 1000
    assert (daily.loc[outside, "p_active"] == 0).all() and not active[outside].any()


# --- behaviour that carries signal -----------------------------------------------------------


def test_archetypes_are_separable_from_simple_aggregates() -> None:
    world = generate(900, DAYS, seed=3)
    frame = world.events.to_pandas()
    own = frame[_customer_initiated(frame)]
    share = pd.crosstab(own["customer_id"], own["channel"], normalize="index")
    purchases = frame[frame["event_type"] == "purchase"].groupby("customer_id")["amount"]
    sent = (frame["event_type"] == "email_send").groupby(frame["customer_id"]).sum()
    opened = (frame["event_type"] == "email_open").groupby(frame["customer_id"]).sum()
    x = share.join(
        pd.DataFrame(
            {
                "events": np.log1p(own.groupby("customer_id").size()),
                "purchases": np.log1p(purchases.size()),
                "revenue": np.log1p(purchases.sum()),
                "open_rate": opened / sent.where(sent > 0),
                "support": own["family"].eq("attitudinal").groupby(own["customer_id"]).mean(),
            }
        ),
        how="outer",
    )
    truth = world.truth_customers.set_index("customer_id")
    x = x.reindex(truth.index).fillna(0)
    x["tenure"] = (DEFAULT_END - truth["signup_date"]).dt.days.clip(upper=365)
    x_train, x_test, y_train, y_test = train_test_split(
        x, truth["archetype"], test_size=0.3, random_state=0, stratify=truth["archetype"]
    )
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    accuracy = model.fit(x_train, y_train).score(x_test, y_test)
    assert accuracy >= 0.8  # chance is about 0.2


def test_cross_channel_journeys_exist(events) -> None:
    purchases = events[events["event_type"] == "purchase"]
    own = events[_customer_initiated(events)]
    store_after_web, n_store = _preceded_share(
        purchases[purchases["channel"] == "store"], own[own["channel"] == "web"], 72
    )
    app = purchases[purchases["channel"] == "app"]
    app_after_click, n_app = _preceded_share(app, events[events["event_type"] == "email_click"], 72)
    app_after_sms, _ = _preceded_share(app, events[events["event_type"] == "sms_click"], 24)
    assert n_store > 100 and n_app > 100
    assert store_after_web >= 0.2
    assert app_after_click >= 0.25
    assert app_after_sms >= 0.03
    # A recovered cart: an app cart, then a reminder SMS, a click and the app purchase.
    reminder = events[
        (events["event_type"] == "sms_send")
        & events["campaign_id"].str.startswith("sms-cart", na=False)
    ]
    carts = events[(events["event_type"] == "add_to_cart") & (events["channel"] == "app")]
    assert _preceded_share(reminder, carts, 3)[0] > 0.95


def test_deal_seekers_respond_to_email_and_loyalists_buy_in_store(events) -> None:
    sent = events[events["event_type"] == "email_send"].groupby("archetype").size()
    opened = events[events["event_type"] == "email_open"].groupby("archetype").size()
    open_rate = opened / sent
    assert open_rate["deal_seeker"] > 1.5 * open_rate.drop("deal_seeker").median()
    purchases = events[events["event_type"] == "purchase"]
    store_share = (purchases["channel"] == "store").groupby(purchases["archetype"]).mean()
    assert store_share["store_loyalist"] > 0.8
    assert store_share["digital_first"] < 0.2


# --- runner ----------------------------------------------------------------------------------


def test_write_generated_and_load_truth_round_trip(tmp_path, world: GeneratedData) -> None:
    settings = Settings.from_env(tmp_path)
    counts = write_generated(settings, world)
    assert counts["events"] == world.events.num_rows and counts["duplicates"] == 0
    assert counts["customers"] == N
    assert counts["churned"] == int(world.truth_customers["churn_date"].notna().sum())
    stored = read_events(settings)
    assert len(stored) == world.events.num_rows
    assert set(stored["event_id"]) == set(world.events.column("event_id").to_pylist())
    pd.testing.assert_frame_equal(
        read_customers(settings).reset_index(drop=True),
        pq.read_table(settings.customers_path).to_pandas(),
    )
    assert len(read_customers(settings)) == N
    truth_customers, truth_daily = load_truth(settings)
    pd.testing.assert_frame_equal(truth_customers, world.truth_customers, check_dtype=False)
    assert len(truth_daily) == N * DAYS
    np.testing.assert_array_equal(
        truth_daily["p_active"].to_numpy(), world.truth_daily["p_active"].to_numpy()
    )
    # Writing the same world again replaces the store instead of duplicating it.
    assert write_generated(settings, world)["events"] == world.events.num_rows
    assert len(read_events(settings)) == world.events.num_rows


def test_load_truth_explains_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="omniscore generate"):
        load_truth(Settings.from_env(tmp_path))
