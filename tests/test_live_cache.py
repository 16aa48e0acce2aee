"""The serving cache of live features (``serving/live.py``) against the live state itself.

A small generated world is folded into a real embedded live state; at a series of instants
(minutes to days apart, some on the exact boundaries where an event leaves a window) the
cached features must equal ``LiveState.features`` computed afresh, and the cache must have
served most of them without recomputing. New events stored by another writer (the accept
path in this process, seen through the live segment's sequence numbers) must be visible at
the next read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data_layer.event_store import events_relation_sql, read_customers, read_events
from data_layer.feature_pipeline import bgnbd_population, write_bgnbd_params
from data_layer.live_ingest import accept_events
from data_layer.live_state import LiveState
from data_layer.settings import Settings
from data_layer.synthetic import generate, write_generated
from serving.live import NUMERIC, STRINGS, LiveFeatures

END = pd.Timestamp("2026-06-29T00:00:00Z")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    settings = Settings.from_env(tmp_path_factory.mktemp("live-cache"))
    settings.ensure_dirs()
    write_generated(settings, generate(40, 150, seed=9, end=END))
    # BG/NBD parameters as builds at END and three days later would store them: the cache must
    # follow the switch at END + 3 d, and the BG/NBD values that move at every UTC midnight.
    fits = bgnbd_population(events_relation_sql(settings), [END, END + pd.Timedelta(days=3)])
    assert all(fitted is not None for fitted in fits.values())
    write_bgnbd_params(settings, fits)
    state = LiveState.open(settings)
    state.upsert_profiles(read_customers(settings))
    state.fold(read_events(settings), END)
    yield settings, state
    state.close()


def same(cached: pd.DataFrame, fresh: pd.DataFrame) -> None:
    cached = cached.set_index("customer_id").sort_index()
    fresh = fresh.set_index("customer_id").sort_index()
    assert list(cached.index) == list(fresh.index)
    np.testing.assert_array_equal(
        cached[list(NUMERIC)].to_numpy(dtype="float64"),
        fresh[list(NUMERIC)].to_numpy(dtype="float64"),
    )
    for name in STRINGS:
        left = cached[name].astype(object).where(cached[name].notna(), None).tolist()
        right = fresh[name].astype(object).where(fresh[name].notna(), None).tolist()
        assert left == right, name


def test_cached_features_equal_fresh_ones_at_every_instant(world):
    settings, state = world
    cache = LiveFeatures(state, settings)
    ids = sorted(read_customers(settings)["customer_id"])[:25]
    events = read_events(settings)
    # Instants a few minutes to a day apart over ten days, plus the exact instants where one
    # of these customers' events leaves the 7- and 30-day windows, and a microsecond later.
    rng = np.random.default_rng(3)
    steps = np.cumsum(rng.integers(60, 86_400, size=20)) * 1_000_000
    instants = [END + pd.Timedelta(microseconds=int(s)) for s in steps if s < 10 * 86_400e6]
    mine = events[events["customer_id"].isin(ids)]
    for days in (7, 30):
        leaving = mine["event_timestamp"] + pd.Timedelta(days=days)
        leaving = leaving[(leaving > END) & (leaving < END + pd.Timedelta(days=10))]
        for at in leaving.sort_values().head(3):
            instants += [at, at + pd.Timedelta(microseconds=1)]
    # Either side of two midnights and of the parameters' switch.
    for edge in (
        END + pd.Timedelta(days=1),
        END + pd.Timedelta(days=3),
        END + pd.Timedelta(days=4),
    ):
        instants += [edge - pd.Timedelta(microseconds=1), edge]
    for at in sorted(instants):
        same(cache.features_frame(ids, at), state.features(ids, at))
    assert cache.hits > cache.misses  # most instants were served from the cache
    assert state.features(ids, instants[0])["bgnbd_p_alive"].notna().any()


def test_events_stored_elsewhere_drop_the_cached_customer(world):
    settings, state = world
    cache = LiveFeatures(state, settings)
    at = END + pd.Timedelta(hours=5)
    customer = sorted(read_customers(settings)["customer_id"])[0]
    before = cache.features_frame([customer], at).iloc[0]
    event = {
        "customer_id": customer,
        "event_timestamp": (at - pd.Timedelta(minutes=1)).isoformat(),
        "channel": "sms",
        "event_type": "sms_click",
    }
    # Another writer (here the accept path with its own handle on the same state).
    other = LiveState.open(settings)
    try:
        assert accept_events(settings, [event], at, other).results[0].status == "accepted"
    finally:
        other.close()
    after = cache.features_frame([customer], at).iloc[0]
    assert after["sms_events_7d"] == before["sms_events_7d"] + 1
    same(cache.features_frame([customer], at), state.features([customer], at))
