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


# --- the sparse retail world (issue 12) ------------------------------------------------------
# Imports are local: this section is appended to a file whose head other work edits.

SPARSE_N, SPARSE_DAYS = 1500, 730


@pytest.fixture(scope="module")
def sparse_world() -> GeneratedData:
    return generate(SPARSE_N, SPARSE_DAYS, seed=21, profile="sparse-retail")


def test_sparse_retail_is_a_purchase_only_log_on_one_channel(sparse_world) -> None:
    frame = sparse_world.events.to_pandas()
    assert sparse_world.events.schema == EVENT_SCHEMA
    assert set(frame["event_type"]) == {"purchase"} and set(frame["channel"]) == {"store"}
    stamps = frame["event_timestamp"]
    assert (stamps == stamps.dt.normalize()).all()  # dated by day, like a retail export
    assert stamps.max() < DEFAULT_END and stamps.min() >= DEFAULT_END - pd.Timedelta(days=730)
    assert frame[["session_id", "device", "rating", "campaign_id"]].isna().all().all()
    # Sparse: most customers buy one to three times in two years; a few buy often.
    per_customer = frame.groupby("customer_id").size()
    assert per_customer.index.size == SPARSE_N  # everyone bought at least once
    assert 0.6 <= (per_customer <= 3).mean() <= 0.85
    assert per_customer.max() >= 20
    assert 0.5 <= len(frame) / SPARSE_N / 2 <= 3.0  # purchases per customer-year
    # The customers table is what a purchase log can tell: the first purchase day only.
    customers = sparse_world.customers
    assert list(customers.columns) == CUSTOMER_SCHEMA.names
    first = frame.groupby("customer_id")["event_timestamp"].min()
    assert (customers.set_index("customer_id")["signup_date"] == first).all()
    assert customers.drop(columns=["customer_id", "signup_date"]).isna().all().all()


def test_sparse_retail_keeps_zero_orders_and_identical_lines_as_distinct_events(
    sparse_world, tmp_path
) -> None:
    frame = sparse_world.events.to_pandas()
    assert (frame["amount"] >= 0).all()
    assert 0 < (frame["amount"] == 0).sum() < 0.01 * len(frame)
    content = ["customer_id", "event_timestamp", "channel", "amount"]
    repeats = frame.duplicated(content)
    assert 0 < repeats.sum() < 0.02 * len(frame)
    # Every line is its own event; a first occurrence has the id ingest computes.
    assert frame["event_id"].is_unique
    firsts = (~repeats).to_numpy()
    np.testing.assert_array_equal(
        compute_event_ids(frame)[firsts], frame["event_id"].to_numpy()[firsts]
    )
    # So the store keeps every line, and the home says which world it holds.
    from data_layer.synthetic import load_scenario

    settings = Settings.from_env(tmp_path)
    counts = write_generated(settings, sparse_world)
    assert counts["events"] == len(frame) and counts["duplicates"] == 0
    assert counts["profile"] == "sparse-retail"
    assert load_scenario(settings) == {"profile": "sparse-retail", "channel": "store"}
    assert len(read_events(settings)) == len(frame)


def test_sparse_retail_truth_is_the_probability_sampled(sparse_world) -> None:
    frame = sparse_world.events.to_pandas()
    daily = sparse_world.truth_daily
    assert daily["p_purchase"].dtype == np.float32
    np.testing.assert_array_equal(daily["p_purchase"], daily["p_active"])
    # Purchase days as a (customer, day) matrix in truth_daily's order (customer-major).
    start = daily["date"].min()
    codes = pd.Categorical(frame["customer_id"], categories=daily["customer_id"].cat.categories)
    days = ((frame["event_timestamp"] - start) / pd.Timedelta(days=1)).astype(int)
    matrix = np.zeros((SPARSE_N, SPARSE_DAYS), dtype=bool)
    matrix[codes.codes, days.to_numpy()] = True
    bought = pd.Series(matrix.ravel(), index=daily.index)
    expected = daily["p_purchase"].astype(float)
    se = np.sqrt((expected * (1 - expected)).sum()) / len(expected)
    assert abs(bought.mean() - expected.mean()) < 4 * se
    alive = (expected > 0) & (expected < 1)
    bins = pd.qcut(expected[alive], 5)
    calib = pd.DataFrame({"r": bought[alive], "p": expected[alive]}).groupby(bins, observed=True)
    # Within 4 standard errors in each fifth of the probability range.
    stats = calib.agg(r=("r", "mean"), p=("p", "mean"), n=("p", "size"))
    assert ((stats["r"] - stats["p"]).abs() < 4 * np.sqrt(stats["p"] / stats["n"])).all()
    # Nothing before the first purchase or after the drop-out, which truth marks with p = 0.
    truth = sparse_world.truth_customers.set_index("customer_id")
    assert set(truth["archetype"]) == {
        "one_timer",
        "occasional",
        "replenisher",
        "holiday_gifter",
        "loyal_regular",
    }
    gone = frame["event_timestamp"] >= frame["customer_id"].map(truth["churn_date"])
    assert not gone.any()
    assert (expected[~alive & bought] == 1).all()  # only first purchases are certain
    assert truth["churn_date"].notna().mean() > 0.3  # one-timers leave after one order


def test_sparse_retail_has_structure_that_recency_and_frequency_miss(sparse_world) -> None:
    """Regular replenishment cycles and holiday buying: what a model can beat BG/NBD with."""
    frame = sparse_world.events.to_pandas()
    frame = frame.drop_duplicates(["customer_id", "event_timestamp"])
    frame["archetype"] = frame["customer_id"].map(
        sparse_world.truth_customers.set_index("customer_id")["archetype"]
    )
    gaps = frame.groupby("customer_id")["event_timestamp"].diff().dt.days
    spread = gaps.groupby(frame["customer_id"]).agg(["mean", "std", "size"])
    spread = spread[spread["size"] >= 4]
    kind = frame.groupby("customer_id")["archetype"].first().reindex(spread.index)
    cv = (spread["std"] / spread["mean"]).groupby(kind).median()
    assert cv["replenisher"] < 0.6 < cv["occasional"]  # a cycle, against memoryless buying
    # Repeat purchases in the holiday weeks (Nov 15 - Dec 24, 11% of the year).
    repeat = frame[frame.duplicated("customer_id")]
    month_day = repeat["event_timestamp"].dt.month * 100 + repeat["event_timestamp"].dt.day
    share = month_day.between(1115, 1224).groupby(repeat["archetype"]).mean()
    assert share["holiday_gifter"] > 0.3 and share["replenisher"] < 0.16


def test_sparse_retail_is_deterministic_and_checks_its_arguments(sparse_world) -> None:
    again = generate(SPARSE_N, SPARSE_DAYS, seed=21, profile="sparse-retail")
    assert again.events.equals(sparse_world.events)
    np.testing.assert_array_equal(
        again.truth_daily["p_purchase"].to_numpy(), sparse_world.truth_daily["p_purchase"]
    )
    web = generate(200, 365, seed=21, profile="sparse-retail", end=DEFAULT_END)
    assert not web.events.equals(sparse_world.events)
    from data_layer.synthetic import generate_sparse_retail

    on_web = generate_sparse_retail(200, 365, seed=21, channel="web")
    assert set(on_web.events.column("channel").to_pylist()) == {"web"}
    with pytest.raises(ValueError, match="store or web"):
        generate_sparse_retail(10, 30, seed=1, channel="email")
    with pytest.raises(ValueError, match="unknown profile"):
        generate(10, 30, seed=1, profile="clickstream")
    with pytest.raises(ValueError, match="omnichannel profile only"):
        generate(10, 30, seed=1, profile="sparse-retail", drift_at="2026-06-15")


# --- the drift scenario (issue 14) -----------------------------------------------------------

DRIFT_AT = DEFAULT_END - pd.Timedelta(days=60)


def _fingerprint(world: GeneratedData) -> str:
    import hashlib

    digest = hashlib.sha256()
    # The first 16 hex digits of a 128-bit id are the 64-bit id the digest was taken with.
    ids = [event_id[:16] for event_id in world.events.column("event_id").to_pylist()]
    digest.update("\n".join(ids).encode())
    for column in ("p_purchase", "p_active"):
        digest.update(world.truth_daily[column].to_numpy().tobytes())
    digest.update(world.customers.to_csv(index=False).encode())
    digest.update(world.truth_customers.to_csv(index=False).encode())
    return digest.hexdigest()


def test_without_drift_the_world_is_the_one_generated_before_the_option_existed() -> None:
    # Event ids hash every column of every event; the digest was taken with the generator as
    # it was before the drift scenario and the sparse profile were added (commit ac29af6).
    world = generate(200, 90, seed=5)
    assert _fingerprint(world) == (
        "38099984abfda293a2e895bea83c65a655b870f79d85d03730994bead674d01f"
    )
    assert _fingerprint(generate(200, 90, seed=5, drift_at=None)) == _fingerprint(world)
    assert world.scenario == {"profile": "omnichannel", "drift_at": None}
    assert _fingerprint(generate(200, 90, seed=5, drift_at="2026-05-01")) != _fingerprint(world)


def _purchase_channel_shares(world: GeneratedData) -> pd.DataFrame:
    frame = world.events.to_pandas()
    purchases = frame[frame["event_type"] == "purchase"]
    after = (purchases["event_timestamp"] >= DRIFT_AT).map({False: "before", True: "after"})
    return pd.crosstab(after, purchases["channel"], normalize="index")


def _daily_purchase_rate(world: GeneratedData, archetype: str) -> pd.Series:
    """Mean truth p_purchase of an archetype's customers before and after DRIFT_AT."""
    daily = world.truth_daily
    kind = world.truth_customers.set_index("customer_id")["archetype"]
    mine = daily["customer_id"].astype(str).map(kind).eq(archetype).to_numpy()
    rows = daily[mine & (daily["p_active"] > 0).to_numpy()]  # customers' lifetimes only
    after = (rows["date"] >= DRIFT_AT).map({False: "before", True: "after"})
    return rows["p_purchase"].astype(float).groupby(after).mean()


def _rate_persistence(world: GeneratedData) -> float:
    """Correlation, over customers, of their log mean truth p_purchase before and after
    DRIFT_AT: how far a customer's past purchase rate tells their future one."""
    daily = world.truth_daily[(world.truth_daily["p_active"] > 0).to_numpy()]
    after = (daily["date"] >= DRIFT_AT).to_numpy()
    rates = daily.groupby([daily["customer_id"].astype(str).to_numpy(), after])["p_purchase"]
    both = rates.mean().unstack().dropna()
    return float(np.corrcoef(np.log(both[False]), np.log(both[True]))[0, 1])


def test_drift_reshuffles_who_buys_moves_store_to_app_and_slows_deal_seekers(tmp_path) -> None:
    drifted = generate(600, 150, seed=8, drift_at=DRIFT_AT)
    steady = generate(600, 150, seed=8)
    # Half the customers take another's purchase rates: the past tells the future far less
    # (measured 0.53 against 0.87 without the drift).
    assert _rate_persistence(steady) > 0.8
    assert _rate_persistence(drifted) < 0.65
    moved, same = _purchase_channel_shares(drifted), _purchase_channel_shares(steady)
    # DRIFT_STORE_TO_APP = 0.6 of the store's third of purchases: about 20 points move.
    assert moved.loc["before", "store"] - moved.loc["after", "store"] > 0.12
    assert moved.loc["after", "app"] - moved.loc["before", "app"] > 0.12
    assert (same.loc["after"] - same.loc["before"]).abs().max() < 0.05
    # Deal seekers buy at half their former daily rate; other archetypes keep theirs.
    slowed = _daily_purchase_rate(drifted, "deal_seeker")
    assert 0.4 < slowed["after"] / slowed["before"] < 0.65
    kept = _daily_purchase_rate(drifted, "digital_first")
    assert 0.85 < kept["after"] / kept["before"] < 1.15
    unchanged = _daily_purchase_rate(steady, "deal_seeker")
    assert 0.85 < unchanged["after"] / unchanged["before"] < 1.15
    # The home records the drift, for monitoring tests to find.
    from data_layer.synthetic import load_scenario

    settings = Settings.from_env(tmp_path)
    assert write_generated(settings, drifted)["drift_at"] == f"{DRIFT_AT:%Y-%m-%d}"
    scenario = load_scenario(settings)
    assert scenario["drift_at"] == f"{DRIFT_AT:%Y-%m-%d}"
    assert scenario["archetype"] == "deal_seeker" and scenario["store_to_app"] == 0.6
    assert scenario["reshuffled"] == 0.5


def test_drift_date_must_fall_inside_the_period() -> None:
    with pytest.raises(ValueError, match="after the first simulated day"):
        generate(10, 30, seed=1, drift_at="2020-01-01")
    with pytest.raises(ValueError, match="after the first simulated day"):
        generate(10, 30, seed=1, drift_at=DEFAULT_END)  # the day after the last
    with pytest.raises(ValueError, match="not a date"):
        generate(10, 30, seed=1, drift_at="next tuesday")


def test_generate_command_takes_the_profile_and_the_drift_date(tmp_path) -> None:
    from typer.testing import CliRunner

    from data_layer.synthetic import load_scenario
    from omniscore.cli import app

    runner = CliRunner()
    home = tmp_path / "home"
    drift = f"{DEFAULT_END - pd.Timedelta(days=20):%Y-%m-%d}"
    args = ["generate", "--customers", "80", "--days", "40", "--seed", "3", "--home", str(home)]
    result = runner.invoke(app, [*args, "--drift-at", drift])
    assert result.exit_code == 0, result.output
    assert load_scenario(Settings.from_env(home))["drift_at"] == drift
    stored = read_events(Settings.from_env(home))
    expected = generate(80, 40, seed=3, drift_at=drift).events
    assert set(stored["event_id"]) == set(expected.column("event_id").to_pylist())

    result = runner.invoke(app, [*args, "--drift-at", "1999-01-01"])
    assert result.exit_code == 2 and "drift date 1999-01-01" in result.output
    result = runner.invoke(app, [*args, "--profile", "nope"])
    assert result.exit_code == 2 and "unknown profile" in result.output

    result = runner.invoke(app, [*args, "--profile", "sparse-retail"])
    assert result.exit_code == 0, result.output
    assert load_scenario(Settings.from_env(home))["profile"] == "sparse-retail"
    stored = read_events(Settings.from_env(home))
    assert set(stored["event_type"]) == {"purchase"}


def test_generate_into_writes_what_generate_writes_block_by_block(tmp_path):
    """The streaming writer (bounded memory at 1M customers) stores the same world."""
    from data_layer.event_store import stored_files
    from data_layer.synthetic import generate_into

    whole = Settings.from_env(tmp_path / "whole", env={})
    streamed = Settings.from_env(tmp_path / "streamed", env={})
    end = DEFAULT_END
    expected = write_generated(whole, generate(N, 60, seed=3, end=end, drift_at="2026-06-01"))
    # Tiny flushes and four buckets: several staged files per bucket, merged per month.
    counts = generate_into(
        streamed, N, 60, seed=3, end=end, drift_at="2026-06-01", flush_events=4_000, buckets=4
    )
    assert counts == expected
    key = ["customer_id", "event_timestamp"]
    a = read_events(whole).sort_values(key).reset_index(drop=True)
    b = read_events(streamed).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    files = stored_files(streamed)
    assert {f.bucket for f in files} == {0, 1, 2, 3}
    assert len(files) == len({(f.month, f.bucket) for f in files})  # one file per month, bucket
    pd.testing.assert_frame_equal(read_customers(whole), read_customers(streamed))
    for left, right in zip(load_truth(whole), load_truth(streamed), strict=True):
        left, right = left.astype({"customer_id": str}), right.astype({"customer_id": str})
        pd.testing.assert_frame_equal(left, right, check_exact=True)
    assert not list((streamed.home / "tmp").glob("generate-*"))
