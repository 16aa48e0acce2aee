"""The live state serves exactly the batch pipeline's features (issue 11, the core property).

A generated world's events before a random intra-day instant t are folded into a fresh live
state in shuffled order, with repeated duplicates, in several batches and two phases (the
second one moves the horizon, so recent events leave the state for the lifetime slots); then
``LiveState.features(all ids, t)`` must equal ``compute_snapshots(all events, customers, [t])``
for every customer and feature. Run on the embedded SQLite state and on Redis.

The BG/NBD features take the population's parameters from the build (``bgnbd_params.json``):
the tests store a build's fit at t, between fits at other instants, and the live path must
pick t's (the latest at or before t) to equal the batch.
"""

from __future__ import annotations

import math
from urllib.parse import urlparse

import duckdb
import numpy as np
import pandas as pd
import pytest

from data_layer.bgnbd import BGNBDFit, BGNBDParams
from data_layer.event_store import write_customers, write_events
from data_layer.feature_pipeline import (
    HISTORY_NEEDED,
    bgnbd_population,
    compute_snapshots,
    write_bgnbd_params,
)
from data_layer.live_state import LIVE_HORIZON, REDIS_TTL_MARGIN, LiveState, redis_key_prefix
from data_layer.schema import to_canonical_table
from data_layer.settings import Settings
from data_layer.synthetic import generate
from feature_repo.catalog import FEATURE_NAMES

REDIS_DB = 11
SEED = 20261130


@pytest.fixture(scope="module")
def world() -> tuple[pd.DataFrame, pd.DataFrame, pd.Timestamp]:
    """300 customers over 170 days, and a random intra-day instant in the last 20 days (so
    the 130-day horizon cuts every long history: lifetime slots are exercised)."""
    data = generate(300, 170, seed=SEED)
    events = data.events.to_pandas()
    rng = np.random.default_rng(SEED)
    newest = events["event_timestamp"].max()
    offset_us = int(rng.integers(0, 20 * 86_400_000_000))
    at = newest.floor("D") - pd.Timedelta(days=20) + pd.Timedelta(microseconds=offset_us)
    assert at != at.normalize()
    return events, data.customers, at


def _sqlite_settings(tmp_path) -> Settings:
    return Settings.from_env(tmp_path, env={})


def _redis_settings(tmp_path, services) -> Settings:
    url = urlparse(services["redis"])
    spec = f"{url.scheme}://{url.netloc}/{REDIS_DB}"
    return Settings.from_env(tmp_path, env={"OMNISCORE_ONLINE_STORE": spec})


@pytest.fixture(params=["sqlite", "redis"])
def state(request, tmp_path):
    if request.param == "redis":
        import redis

        settings = _redis_settings(tmp_path, request.getfixturevalue("services"))
        client = redis.Redis.from_url(settings.online_store)
        client.flushdb()
        client.close()
    else:
        settings = _sqlite_settings(tmp_path)
    live = LiveState.open(settings)
    yield live
    live.close()


def _store_population(settings: Settings, events: pd.DataFrame, at: pd.Timestamp) -> None:
    """What ``features build`` stores: the population fit at ``at``, and at a week before and
    after it (the live path must take ``at``'s, never a later one)."""
    con = duckdb.connect()
    try:
        con.register("events_in", events)
        week = pd.Timedelta(days=7)
        fits = bgnbd_population("events_in", [at - week, at, at + week], connection=con)
    finally:
        con.close()
    assert all(fitted is not None for fitted in fits.values())
    assert fits[at].params != fits[at + week].params
    write_bgnbd_params(settings, fits)


def _mismatches(live: pd.DataFrame, batch: pd.DataFrame) -> list[str]:
    """Every (customer, feature) whose values differ: floats beyond 1e-9, nulls vs values."""
    assert list(live.columns) == list(batch.columns)
    assert list(live["customer_id"]) == list(batch["customer_id"])
    assert (live["event_timestamp"] == batch["event_timestamp"]).all()
    found = []
    for name in FEATURE_NAMES:
        for customer, a, b in zip(batch["customer_id"], live[name], batch[name], strict=True):
            if pd.isna(a) or pd.isna(b):
                same = pd.isna(a) and pd.isna(b)
            elif isinstance(b, str):
                same = a == b
            else:
                same = math.isclose(a, b, rel_tol=0, abs_tol=1e-9)
            if not same:
                found.append(f"{customer} {name}: live {a!r}, batch {b!r}")
    return found


def _shuffled_batches(frame: pd.DataFrame, rng, batches: int) -> list[pd.DataFrame]:
    """The rows in random order, a third of them repeated, split into ``batches`` parts."""
    repeated = frame.sample(frac=0.33, random_state=int(rng.integers(1 << 31)))
    mixed = pd.concat([frame, repeated]).sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
    return [mixed.iloc[part] for part in np.array_split(np.arange(len(mixed)), batches)]


def test_live_features_equal_the_batch_at_a_random_intra_day_instant(state, world) -> None:
    events, customers, at = world
    rng = np.random.default_rng(SEED + 1)
    before = events[events["event_timestamp"] < at]
    # Phase 1, as of 15 days before t; phase 2 (the last 15 days, and phase 1's events again)
    # as of t: the horizon moves and the customers' oldest recent events go to the slots.
    early = at - pd.Timedelta(days=15)
    phase1 = before[before["event_timestamp"] < early]
    phase2 = pd.concat([before[before["event_timestamp"] >= early], phase1.sample(frac=0.2)])
    state.upsert_profiles(customers)
    _store_population(state.settings, events, at)
    folded = already = too_old = 0
    for now, frame in ((early, phase1), (at, phase2)):
        for part in _shuffled_batches(frame, rng, 4):
            report = state.fold(part, now)
            folded, already, too_old = (
                folded + report.folded,
                already + report.already_folded,
                too_old + report.too_old,
            )
    # Every event inside the horizon was folded once; the older ones only fed the slots.
    inside = (before["event_timestamp"] >= at - LIVE_HORIZON).sum()
    assert folded <= len(before) and folded >= inside
    assert too_old > 0 and already > 0

    ids = sorted(customers["customer_id"])
    live = state.features([*ids, "nobody"], at)
    batch = compute_snapshots(events, customers, [at])
    assert len(batch) >= 250
    assert batch["bgnbd_p_alive"].notna().sum() >= 100
    mismatches = _mismatches(live.reset_index(drop=True), batch.reset_index(drop=True))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"
    if state.settings.online_store.startswith("redis"):
        _assert_redis_expiry(state.settings.online_store, state.settings.feast_project)


def _assert_redis_expiry(url: str, project: str) -> None:
    """Recent events expire a little after the horizon; slots and profiles never do."""
    import redis

    prefix = redis_key_prefix(project)
    client = redis.Redis.from_url(url)
    try:
        recent = next(client.scan_iter(match=f"{prefix}*:recent", count=1000))
        customer = recent.decode()[len(prefix) :].rsplit(":", 1)[0]
        ttl = pd.Timedelta(seconds=client.ttl(recent))
        assert LIVE_HORIZON < ttl <= LIVE_HORIZON + REDIS_TTL_MARGIN
        assert client.ttl(f"{prefix}{customer}:slots") == -1
        assert client.ttl(f"{prefix}{customer}:profile") == -1
    finally:
        client.close()


def test_bootstrap_continues_from_the_event_store(state, world, tmp_path) -> None:
    events, customers, at = world
    settings = state.settings
    write_events(settings, to_canonical_table(events[events["event_timestamp"] < at]))
    write_customers(settings, customers)
    _store_population(settings, events, at)
    assert state.bootstrap(at) == (events["event_timestamp"] < at).sum()
    assert state.horizon() == at - LIVE_HORIZON
    some = sorted(customers["customer_id"])[::7]
    live = state.features(some, at)
    batch = compute_snapshots(events, customers[customers["customer_id"].isin(some)], [at])
    batch = batch[batch["customer_id"].isin(some)].reset_index(drop=True)
    assert not _mismatches(live.reset_index(drop=True), batch)


# --- late, old and repeated events, on hand-made events -----------------------------------------

T = pd.Timestamp("2026-06-10 14:25:00.000007", tz="UTC")


def _events(*rows: tuple) -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            {
                "customer_id": "K",
                "event_timestamp": T - pd.Timedelta(days=days),
                "channel": channel,
                "event_type": event_type,
                "amount": amount,
            }
            for days, channel, event_type, amount in rows
        ]
    )
    return to_canonical_table(frame).to_pandas()


RECENT = [
    (0.5, "web", "page_view", None),
    (3.0, "app", "purchase", 20.0),
    (12.0, "store", "purchase", 35.0),
    (40.0, "web", "product_view", None),
]
PROFILE = pd.DataFrame(
    {
        "customer_id": ["K", "P"],
        "signup_date": pd.to_datetime(["2025-06-01", "2026-06-01"], utc=True),
        "region": ["north", "south"],
        "age_band": ["25-34", "35-44"],
        "loyalty_tier": ["gold", "none"],
        "preferred_device": ["mobile", "desktop"],
    }
)


POPULATION = BGNBDParams(r=0.243, alpha=30.9, a=0.793, b=2.426)
"""BG/NBD parameters stored for T in the hand-made tests' home, as a build would."""


def _batch(events: pd.DataFrame) -> pd.DataFrame:
    """The batch features at T with the population parameters the live state reads."""
    return compute_snapshots(events, PROFILE, [T], bgnbd_params={T: POPULATION})


@pytest.fixture
def sqlite_state(tmp_path):
    settings = _sqlite_settings(tmp_path)
    write_bgnbd_params(settings, {T: BGNBDFit(POPULATION, 0.0, 1000, True, "stored by the test")})
    live = LiveState.open(settings)
    live.upsert_profiles(PROFILE)
    yield live
    live.close()


def _features(live: LiveState, customer: str = "K") -> pd.Series:
    rows = live.features([customer], T)
    assert len(rows) == 1
    return rows.iloc[0]


def test_a_purchase_older_than_the_horizon_changes_only_long_and_lifetime_values(
    sqlite_state,
) -> None:
    sqlite_state.fold(_events(*RECENT), T)
    before = _features(sqlite_state)
    assert before["purchase_gap_mean_days"] == 9.0  # purchase days T-12 and T-3
    # 200 days before T: far older than the horizon and every short window. It is the
    # customer's only web purchase: "last web purchase" moves, and so do the 365-day and
    # lifetime purchase features (the state keeps every purchase); nothing else.
    old = _events((200.0, "web", "purchase", 99.0))
    report = sqlite_state.fold(old, T)
    assert (report.folded, report.already_folded, report.too_old) == (0, 0, 1)
    assert report.customers == ["K"]
    after = _features(sqlite_state)
    changed = [
        n
        for n in FEATURE_NAMES
        if not ((pd.isna(before[n]) and pd.isna(after[n])) or before[n] == after[n])
    ]
    assert changed == [
        "web_days_since_last_purchase",
        "purchases_365d",
        "revenue_365d",
        "purchases_lifetime",
        "revenue_lifetime",
        "purchase_days_lifetime",
        "purchase_gap_mean_days",
        "purchase_gap_std_days",
        "purchase_recency_ratio",
        "bgnbd_p_alive",
        "bgnbd_expected_purchases_30d",
    ]
    assert after["web_days_since_last_purchase"] == 200.0
    assert after["purchases_90d"] == 2.0 and after["revenue_90d"] == 55.0
    assert after["purchases_180d"] == 2.0 and after["revenue_365d"] == 154.0
    # Gaps of 188 and 9 days between the purchase days T-200, T-12 and T-3.
    assert after["purchase_gap_mean_days"] == 98.5
    assert after["purchase_gap_std_days"] == 89.5
    assert after["purchase_recency_ratio"] == pytest.approx(3.0 / 98.5)
    # The old event is kept as a lifetime scalar, and the batch agrees.
    everything = pd.concat([_events(*RECENT), old])
    batch = _batch(everything)
    assert not _mismatches(sqlite_state.features(["K", "P"], T), batch)
    # Folding it again changes nothing.
    assert sqlite_state.fold(old, T).too_old == 1
    assert not _mismatches(sqlite_state.features(["K", "P"], T), batch)


def test_late_and_out_of_order_events_fold_into_their_period(sqlite_state) -> None:
    # The newest events first, then ones from 9 days and 8 hours before T arriving late.
    sqlite_state.fold(_events(*RECENT[:1]), T)
    late = _events((9.0, "app", "purchase", 15.0), (8 / 24, "app", "app_open", None))
    sqlite_state.fold(late, T)
    sqlite_state.fold(_events(*RECENT[1:]), T)
    row = _features(sqlite_state)
    assert row["app_purchases_90d"] == 2.0  # 3 d and the late 9 d purchase
    assert row["app_events_7d"] == 2.0  # the 3 d purchase and the 8 h open; not the 9 d one
    assert row["app_events_30d"] == 3.0
    assert row["app_days_since_last"] == pytest.approx(8 / 24)
    everything = pd.concat([_events(*RECENT), late])
    assert not _mismatches(sqlite_state.features(["K", "P"], T), _batch(everything))


def test_folding_is_idempotent_and_reports_duplicates(sqlite_state) -> None:
    batch = _events(*RECENT)
    first = sqlite_state.fold(pd.concat([batch, batch.iloc[:1]]), T)
    assert (first.folded, first.already_folded, first.too_old) == (4, 1, 0)
    assert first.customers == ["K"]
    values = _features(sqlite_state)
    again = sqlite_state.fold(batch.iloc[::-1], T)
    assert (again.folded, again.already_folded, again.customers) == (0, 4, [])
    pd.testing.assert_series_equal(_features(sqlite_state), values)
    recent = sqlite_state.recent_events("K", limit=2)
    assert list(recent["event_timestamp"]) == [T - pd.Timedelta(days=0.5), T - pd.Timedelta(days=3)]
    assert list(recent.columns)[:3] == ["event_id", "customer_id", "event_timestamp"]


def test_known_customers_and_a_profile_without_events(sqlite_state) -> None:
    sqlite_state.fold(_events(*RECENT), T)
    assert sqlite_state.known(["K", "P", "nobody"]) == [True, True, False]
    rows = sqlite_state.features(["P", "nobody"], T)
    assert list(rows["customer_id"]) == ["P"]
    p = rows.iloc[0]
    assert p["purchases_90d"] == 0.0 and pd.isna(p["days_since_last_purchase"])
    assert p["region"] == "south"


def test_features_before_the_kept_history_are_refused(sqlite_state) -> None:
    sqlite_state.fold(_events(*RECENT), T)
    assert sqlite_state.horizon() == T - LIVE_HORIZON
    earliest = T - LIVE_HORIZON + HISTORY_NEEDED
    assert len(sqlite_state.features(["K"], earliest)) == 1
    with pytest.raises(ValueError, match="keeps them only from"):
        sqlite_state.features(["K"], earliest - pd.Timedelta(microseconds=1))
