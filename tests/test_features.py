"""Point-in-time feature pipeline: hand-computed snapshots, a leakage property, the runner.

Every expected value below was worked out by hand from the catalog's definitions (the arithmetic
is in the comment next to it), never by calling the pipeline. Snapshot T is 2024-06-01 00:00 UTC,
so T-7d = 05-25, T-30d = 05-02, T-60d = 04-02 and T-90d = 03-03 (all UTC midnights).
"""

from __future__ import annotations

import math

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import hyp2f1

from data_layer.bgnbd import BGNBDParams
from data_layer.event_store import write_customers, write_events
from data_layer.feature_pipeline import build_features, compute_snapshots, snapshot_times
from data_layer.schema import CHANNELS, EVENT_TYPES, to_canonical_table
from data_layer.settings import Settings
from feature_repo.catalog import FEATURE_NAMES, VIEWS, features_of_view

T = pd.Timestamp("2024-06-01", tz="UTC")
T2 = pd.Timestamp("2024-06-15", tz="UTC")
NAN = float("nan")


def _ev(cid, ts, channel, event_type, amount=None, session=None, rating=None):
    return {
        "customer_id": cid,
        "event_timestamp": pd.Timestamp(ts, tz="UTC"),
        "channel": channel,
        "event_type": event_type,
        "amount": amount,
        "session_id": session,
        "rating": rating,
    }


# Customer A: the fully worked customer (has a customers row, signed up 2024-01-01).
EVENTS_A = [
    _ev("A", "2024-02-20 09:00", "store", "purchase", 40.0),  # a1: before the 90d window
    _ev("A", "2024-03-02 23:59:59", "app", "app_open", session="a-app0"),  # a2: 1 s before T-90d
    _ev("A", "2024-03-03 00:00", "web", "page_view", session="a-w1"),  # a3: exactly T-90d
    _ev("A", "2024-03-10 12:00", "email", "email_send"),  # a4: contextual
    _ev("A", "2024-03-10 15:00", "email", "email_open"),  # a5
    _ev("A", "2024-03-11 10:00", "app", "purchase", 60.0, "a-app1"),  # a6: email open 19 h before
    _ev("A", "2024-04-10 12:00", "web", "add_to_cart", session="a-w2"),  # a7: never recovered
    _ev("A", "2024-04-15 08:00", "email", "email_send"),  # a8
    _ev("A", "2024-04-20 10:00", "call_center", "support_contact"),  # a9
    _ev("A", "2024-04-20 10:30", "call_center", "purchase", 100.0),  # a10: same-channel touch only
    _ev("A", "2024-05-02 00:00", "web", "product_view"),  # a11: exactly T-30d, no session id
    _ev("A", "2024-05-02 09:00", "web", "page_view"),  # a12: same (web, day) session as a11
    _ev("A", "2024-05-05 14:00", "web", "product_view", session="a-w3"),  # a13
    _ev("A", "2024-05-05 14:10", "web", "add_to_cart", session="a-w3"),  # a14: recovered by a15
    _ev("A", "2024-05-06 09:00", "store", "purchase", 120.0),  # a15: web touch 18h50 before
    _ev("A", "2024-05-06 18:00", "store", "return", 30.0),  # a16
    _ev("A", "2024-05-10 11:00", "store", "review", rating=2.0),  # a17
    _ev("A", "2024-05-15 08:00", "email", "email_send"),  # a18
    _ev("A", "2024-05-15 09:00", "email", "email_click"),  # a19
    _ev("A", "2024-05-18 20:00", "push", "push_send"),  # a20
    _ev("A", "2024-05-19 07:00", "push", "push_open"),  # a21
    _ev("A", "2024-05-20 10:00", "app", "product_view", session="a-app2"),  # a22
    _ev("A", "2024-05-20 10:05", "app", "purchase", 45.0, "a-app2"),  # a23: email click 5 d before
    _ev("A", "2024-05-25 00:00", "web", "page_view", session="a-w4"),  # a24: exactly T-7d
    _ev("A", "2024-05-27 13:00", "social", "social_engagement"),  # a25
    _ev("A", "2024-05-28 16:00", "sms", "sms_click"),  # a26: a click with no send
    _ev("A", "2024-05-29 19:00", "web", "complaint", session="a-w5"),  # a27
    _ev("A", "2024-05-30 12:00", "store", "survey_response", rating=4.0),  # a28
    _ev("A", "2024-05-31 22:00", "web", "product_view", session="a-w6"),  # a29
    _ev("A", "2024-05-31 22:20", "web", "add_to_cart", session="a-w6"),  # a30: recovered only at T
    _ev("A", "2024-05-31 23:00", "social", "ad_impression"),  # a33: contextual, not activity
    _ev("A", "2024-06-01 00:00", "web", "purchase", 999.0, "a-w6"),  # a31: exactly T, excluded
    _ev("A", "2024-06-03 10:00", "store", "purchase", 500.0),  # a32: after T
]

# Customer B: no customers row; purchases with touches inside and outside 72 h.
EVENTS_B = [
    _ev("B", "2024-04-01 08:00", "sms", "sms_send"),  # b1: first event (contextual)
    _ev("B", "2024-04-01 09:00", "sms", "sms_click"),  # b2
    _ev("B", "2024-04-05 10:00", "sms", "sms_send"),  # b3
    _ev("B", "2024-05-10 12:00", "web", "product_view", session="b-w1"),  # b4
    _ev("B", "2024-05-14 12:00", "store", "purchase", 200.0),  # b5: web touch 96 h before
    _ev("B", "2024-05-20 09:00", "email", "complaint"),  # b6: email channel, not an open/click
    _ev("B", "2024-05-21 10:00", "app", "purchase", 30.0, "b-a1"),  # b7: b6 25 h before
    _ev("B", "2024-05-22 10:00", "web", "page_view", session="b-w2"),  # b8
    _ev("B", "2024-05-23 10:00", "store", "purchase", 70.0),  # b9: web touch 24 h before
    _ev("B", "2024-05-23 11:00", "store", "return", 70.0),  # b10
    _ev("B", "2024-05-25 10:00", "app", "add_to_cart", session="b-a2"),  # b11
    _ev("B", "2024-05-25 20:00", "web", "purchase", 55.0),  # b12: recovers b11 on another channel
]

# Customer C: signs up after T; events only at T and later.
EVENTS_C = [
    _ev("C", "2024-06-01 00:00", "web", "page_view"),
    _ev("C", "2024-06-12 08:00", "app", "app_open", session="c-a1"),
    _ev("C", "2024-06-12 09:00", "app", "purchase", 25.0, "c-a1"),
]

# Customer D: no customers row, only contextual events (things sent to them).
EVENTS_D = [
    _ev("D", "2024-05-01 12:00", "email", "email_send"),
    _ev("D", "2024-05-20 08:00", "push", "push_send"),
    _ev("D", "2024-05-30 08:00", "social", "ad_impression"),
]

# Customer F: no customers row, first event exactly at T.
EVENTS_F = [_ev("F", "2024-06-01 00:00", "web", "page_view")]

CUSTOMERS = pd.DataFrame(
    {
        "customer_id": ["A", "C", "E"],
        "signup_date": pd.to_datetime(
            ["2024-01-01 00:00", "2024-06-10 00:00", "2024-05-31 12:00"], utc=True
        ),
        "region": ["north", "south", "east"],
        "age_band": ["35-44", "18-24", "55-64"],
        "loyalty_tier": ["gold", "none", "silver"],
        "preferred_device": ["mobile", "desktop", "tablet"],
    }
)


def _events(rows: list[dict]):
    return to_canonical_table(pd.DataFrame(rows))


# BG/NBD population parameters given to the hand-worked snapshots (the paper's CDNOW estimates,
# alpha in days), so the per-customer values can be worked out by hand; the population fit
# itself is checked in tests/test_bgnbd.py and by the leakage property below.
POPULATION = BGNBDParams(r=0.243, alpha=4.414 * 7, a=0.793, b=2.426)


def _bgnbd_by_hand(x: float, t_x: float, age: float, horizon: float = 30) -> tuple[float, float]:
    """P(alive) and expected purchases in ``horizon`` days (equations 13 and 10 of Fader,
    Hardie & Lee 2005) at :data:`POPULATION`."""
    r, alpha, a, b = POPULATION.r, POPULATION.alpha, POPULATION.a, POPULATION.b
    alive = 1 / (1 + a / (b + x - 1) * ((alpha + age) / (alpha + t_x)) ** (r + x)) if x else 1.0
    z = horizon / (alpha + age + horizon)
    tail = ((alpha + age) / (alpha + age + horizon)) ** (r + x) * hyp2f1(
        r + x, b + x, a + b + x - 1, z
    )
    return alive, (a + b + x - 1) / (a - 1) * (1 - tail) * alive


@pytest.fixture(scope="module")
def snapshots() -> pd.DataFrame:
    rows = EVENTS_A + EVENTS_B + EVENTS_C + EVENTS_D + EVENTS_F
    return compute_snapshots(
        _events(rows), CUSTOMERS, [T, T2], bgnbd_params={T: POPULATION, T2: POPULATION}
    )


def _row(frame: pd.DataFrame, customer: str, at: pd.Timestamp) -> pd.Series:
    hit = frame[(frame["customer_id"] == customer) & (frame["event_timestamp"] == at)]
    assert len(hit) == 1, f"expected one row for {customer} at {at}, got {len(hit)}"
    return hit.iloc[0]


def _assert_features(row: pd.Series, expected: dict) -> None:
    mismatches = []
    for name, want in expected.items():
        got = row[name]
        if want is None:
            ok = pd.isna(got)
        elif isinstance(want, str):
            ok = not pd.isna(got) and got == want
        elif math.isnan(want):
            ok = pd.isna(got)
        else:
            ok = not pd.isna(got) and got == pytest.approx(want, rel=1e-12, abs=0)
        if not ok:
            mismatches.append(f"{name}: expected {want!r}, got {got!r}")
    assert not mismatches, "\n".join(mismatches)


# Sessions of A (all channels, customer-initiated only), in start order, used by
# channel_switches: store 02-20 | app a-app0 | web a-w1 (T-90d) | email 03-10 | app a-app1 |
# web a-w2 | call_center 04-20 | web day 05-02 | web a-w3 | store 05-06 | store 05-10 |
# email 05-15 | push 05-19 | app a-app2 | web a-w4 | social 05-27 | sms 05-28 | web a-w5 |
# store 05-30 | web a-w6.
EXPECTED_A = {
    # web, initiated: a3 a7 a11 a12 a13 a14 a24 a27 a29 a30 (a31 at T excluded)
    "web_events_7d": 4.0,  # a24 (exactly T-7d) a27 a29 a30
    "web_active_days_7d": 3.0,  # 05-25 05-29 05-31
    "web_events_30d": 8.0,  # a11 (exactly T-30d) a12 a13 a14 + the 4 above
    "web_active_days_30d": 5.0,  # 05-02 05-05 05-25 05-29 05-31
    "web_events_90d": 10.0,  # + a3 (exactly T-90d) a7
    "web_active_days_90d": 7.0,  # + 03-03 04-10
    "web_days_since_last": 100 / 1440,  # a30 at 05-31 22:20 → 1 h 40 min
    # app: a6 a22 a23 (a2 is 1 s before T-90d)
    "app_events_7d": 0.0,
    "app_active_days_7d": 0.0,
    "app_events_30d": 2.0,  # a22 a23
    "app_active_days_30d": 1.0,  # 05-20
    "app_events_90d": 3.0,  # + a6
    "app_active_days_90d": 2.0,  # 03-11 05-20
    "app_days_since_last": 11 + 835 / 1440,  # a23 05-20 10:05 → 11 d 13 h 55 min
    # email, initiated: a5 open, a19 click (sends are contextual)
    "email_events_7d": 0.0,
    "email_active_days_7d": 0.0,
    "email_events_30d": 1.0,  # a19
    "email_active_days_30d": 1.0,
    "email_events_90d": 2.0,  # a5 a19
    "email_active_days_90d": 2.0,
    "email_days_since_last": 16.625,  # a19 05-15 09:00 → 16 d 15 h
    # store: a15 a16 a17 a28 (a1 outside 90d)
    "store_events_7d": 1.0,  # a28
    "store_active_days_7d": 1.0,
    "store_events_30d": 4.0,
    "store_active_days_30d": 3.0,  # 05-06 05-10 05-30
    "store_events_90d": 4.0,
    "store_active_days_90d": 3.0,
    "store_days_since_last": 1.5,  # a28 05-30 12:00
    # call_center: a9 a10 on 04-20
    "call_center_events_7d": 0.0,
    "call_center_active_days_7d": 0.0,
    "call_center_events_30d": 0.0,
    "call_center_active_days_30d": 0.0,
    "call_center_events_90d": 2.0,
    "call_center_active_days_90d": 1.0,
    "call_center_days_since_last": 41.5625,  # a10 04-20 10:30 → 41 d 13 h 30 min
    # social: a25 (a33 ad_impression is contextual)
    "social_events_7d": 1.0,
    "social_active_days_7d": 1.0,
    "social_events_30d": 1.0,
    "social_active_days_30d": 1.0,
    "social_events_90d": 1.0,
    "social_active_days_90d": 1.0,
    "social_days_since_last": 4 + 11 / 24,  # a25 05-27 13:00 → 4 d 11 h
    # sms: a26
    "sms_events_7d": 1.0,
    "sms_active_days_7d": 1.0,
    "sms_events_30d": 1.0,
    "sms_active_days_30d": 1.0,
    "sms_events_90d": 1.0,
    "sms_active_days_90d": 1.0,
    "sms_days_since_last": 3 + 8 / 24,  # a26 05-28 16:00 → 3 d 8 h
    # push: a21 (05-19, before T-7d)
    "push_events_7d": 0.0,
    "push_active_days_7d": 0.0,
    "push_events_30d": 1.0,
    "push_active_days_30d": 1.0,
    "push_events_90d": 1.0,
    "push_active_days_90d": 1.0,
    "push_days_since_last": 12 + 17 / 24,  # a21 05-19 07:00 → 12 d 17 h
    # purchases in 90d: a6 app 60, a10 call_center 100, a15 store 120, a23 app 45
    # (a1 store 40 too old, a31 at T, a32 after T); one return a16 on store
    "purchases_90d": 4.0,
    "revenue_90d": 325.0,  # 60 + 100 + 120 + 45
    "avg_order_value_90d": 81.25,  # 325 / 4
    "returns_90d": 1.0,
    "return_rate_90d": 0.25,  # 1 / 4
    "days_since_last_purchase": 11 + 835 / 1440,  # a23
    "web_purchases_90d": 0.0,  # a31 is exactly at T
    "web_revenue_90d": 0.0,
    "web_avg_order_value_90d": NAN,
    "web_returns_90d": 0.0,
    "web_return_rate_90d": NAN,
    "web_days_since_last_purchase": NAN,
    "app_purchases_90d": 2.0,  # a6 a23
    "app_revenue_90d": 105.0,  # 60 + 45
    "app_avg_order_value_90d": 52.5,
    "app_returns_90d": 0.0,
    "app_return_rate_90d": 0.0,
    "app_days_since_last_purchase": 11 + 835 / 1440,
    "store_purchases_90d": 1.0,  # a15
    "store_revenue_90d": 120.0,
    "store_avg_order_value_90d": 120.0,
    "store_returns_90d": 1.0,  # a16
    "store_return_rate_90d": 1.0,
    "store_days_since_last_purchase": 25.625,  # a15 05-06 09:00 → 25 d 15 h
    "call_center_purchases_90d": 1.0,  # a10
    "call_center_revenue_90d": 100.0,
    "call_center_avg_order_value_90d": 100.0,
    "call_center_returns_90d": 0.0,
    "call_center_return_rate_90d": 0.0,
    "call_center_days_since_last_purchase": 41.5625,
    # long windows and lifetime: every purchase before T (a1 included), all inside 180 days
    "purchases_180d": 5.0,
    "revenue_180d": 365.0,  # 40 + 60 + 100 + 120 + 45
    "purchases_365d": 5.0,
    "revenue_365d": 365.0,
    "purchases_lifetime": 5.0,
    "revenue_lifetime": 365.0,
    "purchase_days_lifetime": 5.0,
    # purchase days 02-20, 03-11, 04-20, 05-06, 05-20 (2024 is a leap year): gaps 20, 40, 16, 14
    "purchase_gap_mean_days": 22.5,  # 90 / 4
    "purchase_gap_std_days": math.sqrt(106.75),  # (2.5² + 17.5² + 6.5² + 8.5²) / 4
    "purchase_recency_ratio": (11 + 835 / 1440) / 22.5,
    # BG/NBD: 4 repeat purchase days, the last 90 days after the first (02-20 → 05-20), and
    # 102 days from the first to T's day (02-20 → 06-01: 10 + 31 + 30 + 31)
    "bgnbd_p_alive": _bgnbd_by_hand(4, 90, 102)[0],
    "bgnbd_expected_purchases_30d": _bgnbd_by_hand(4, 90, 102)[1],
    # engagement
    "email_open_rate_90d": 1 / 3,  # 1 open (a5) / 3 sends (a4 a8 a18)
    "email_click_rate_90d": 1 / 3,  # 1 click (a19) / 3 sends
    "push_open_rate_90d": 1.0,  # a21 / a20
    "sms_click_rate_90d": NAN,  # a click but no sms_send
    "cart_abandonment_rate_90d": 2 / 3,  # a7 never, a14 by a15 (18h50), a30 only at T → 2 of 3
    "sessions_30d": 6.0,  # web: day 05-02, a-w3, a-w4, a-w5, a-w6; app: a-app2
    "product_views_per_session_30d": 4 / 6,  # a11 a13 a22 a29 / 6 sessions
    # attitudinal
    "support_contacts_90d": 1.0,  # a9
    "complaints_90d": 1.0,  # a27
    "avg_rating_90d": 3.0,  # (2 + 4) / 2
    "low_ratings_90d": 1.0,  # a17 rated 2
    # cross-channel; 90d initiated counts: web 10 app 3 email 2 store 4 cc 2 social 1 sms 1
    # push 1 (24 in all)
    "active_channels_90d": 8.0,
    # -(10/24 log2 10/24 + 3/24 log2 3/24 + 4/24 log2 4/24 + 2·2/24 log2 2/24 + 3·1/24 log2 1/24)
    "channel_entropy_90d": 2.502705481927944,
    "online_revenue_share_90d": 105 / 325,  # app 105 online; store 120 + cc 100 offline
    "preferred_channel_90d": "web",
    # a6 (email open 19 h before) yes, a10 (only call_center touches) no, a15 (web 18h50 before)
    # yes, a23 (push open 27 h before) yes → 3 / 4
    "cross_channel_purchase_rate_90d": 0.75,
    "web_to_store_purchase_rate_90d": 1.0,  # a15 / 1 store purchase
    "email_to_app_purchase_rate_90d": 0.5,  # a6 yes (open 19 h); a23 no (click 5 d before)
    # sessions from a-w1 (T-90d) onward whose channel differs from the previous one, started at
    # most 30 d before: all but web a-w3 (after web day 05-02), store 05-10 (after store 05-06)
    # and web a-w2 (04-10 12:00; app a-app1 began 30 d 2 h before) → 18 - 3
    "channel_switches_90d": 15.0,
    # initiated in [05-02, T): web 8 app 2 email 1 store 4 social 1 sms 1 push 1 = 18;
    # in [04-02, 05-02): a7 a9 a10 = 3 → ln(19 / 4)
    "events_trend_30d": 1.55814461804655,
    # revenue in [05-02, T): 120 + 45; in [04-02, 05-02): 100 → ln(166 / 101)
    "revenue_trend_30d": 0.4968672715152837,
    "tenure_days": 152.0,  # 2024-01-01 → 06-01: 31 + 29 + 31 + 30 + 31
    "region": "north",
    "age_band": "35-44",
    "loyalty_tier": "gold",
    "preferred_device": "mobile",
}


def test_expected_values_cover_the_whole_catalog() -> None:
    assert list(EXPECTED_A) == list(FEATURE_NAMES)
    assert len(EXPECTED_A) == 124


def test_customer_a_every_feature_at_t(snapshots: pd.DataFrame) -> None:
    assert list(snapshots.columns) == ["customer_id", "event_timestamp", *FEATURE_NAMES]
    _assert_features(_row(snapshots, "A", T), EXPECTED_A)


def test_customer_a_later_snapshot_sees_events_at_and_after_t(snapshots: pd.DataFrame) -> None:
    # T2 = 06-15, T2-90d = 03-17: a3, a5, a6 drop out; a31 (at T) and a32 (06-03) come in.
    _assert_features(
        _row(snapshots, "A", T2),
        {
            "web_days_since_last": 14.0,  # a31 at 06-01 00:00
            "web_purchases_90d": 1.0,
            "web_revenue_90d": 999.0,
            "web_days_since_last_purchase": 14.0,
            "days_since_last_purchase": 11 + 14 / 24,  # a32 06-03 10:00 → 11 d 14 h
            "purchases_90d": 5.0,  # a10 a15 a23 a31 a32 (a6 on 03-11 dropped out)
            "revenue_90d": 1764.0,  # 100 + 120 + 45 + 999 + 500
            # carts a7 (never), a14 (a15), a30 (a31, 1 h 40 min later, now before T2) → 1 / 3
            "cart_abandonment_rate_90d": 1 / 3,
            "web_events_7d": 0.0,  # a31 06-01 < T2-7d = 06-08
            "web_events_90d": 10.0,  # a7 a11 a12 a13 a14 a24 a27 a29 a30 a31 (a3 dropped out)
            "app_events_90d": 2.0,  # a22 a23 (a6 dropped out)
            "tenure_days": 166.0,  # 152 + 14
            # purchase days now also 06-01 (a31) and 06-03 (a32): 6 repeats, the last 104 days
            # after the first, T2's day 116 days after it
            "bgnbd_p_alive": _bgnbd_by_hand(6, 104, 116)[0],
            "bgnbd_expected_purchases_30d": _bgnbd_by_hand(6, 104, 116)[1],
        },
    )


def test_customer_without_profile_row(snapshots: pd.DataFrame) -> None:
    row = _row(snapshots, "B", T)
    _assert_features(
        row,
        {
            "tenure_days": 60 + 16 / 24,  # first event b1 04-01 08:00 → 60 d 16 h
            "region": None,
            "age_band": None,
            "loyalty_tier": None,
            "preferred_device": None,
            "purchases_90d": 4.0,  # b5 b7 b9 b12
            "revenue_90d": 355.0,  # 200 + 30 + 70 + 55
            "online_revenue_share_90d": 85 / 355,  # web 55 + app 30
            "store_return_rate_90d": 0.5,  # b10 / (b5 b9)
            # b5: only web touch 96 h before → no; b7: email complaint 25 h → yes; b9: app and
            # web → yes; b12: app cart and store → yes
            "cross_channel_purchase_rate_90d": 0.75,
            "web_to_store_purchase_rate_90d": 0.5,  # b9 (b8 24 h before) yes, b5 (96 h) no
            # b7's only email event is a complaint, not an email open or click
            "email_to_app_purchase_rate_90d": 0.0,
            "cart_abandonment_rate_90d": 0.0,  # b11 recovered by web purchase b12 10 h later
            "sms_click_rate_90d": 0.5,  # 1 click / 2 sends
            "email_open_rate_90d": NAN,  # no email_send
            "complaints_90d": 1.0,
            "sessions_30d": 5.0,  # web b-w1 b-w2 day 05-25; app b-a1 b-a2
            "product_views_per_session_30d": 0.2,  # b4 / 5
            # sms | web | store | email | app | web | store | app | web: 8 changes, less web
            # b-w1 (05-10), whose previous session (sms b2 04-01 09:00) began 39 d before → 7
            "channel_switches_90d": 7.0,
            "active_channels_90d": 5.0,
            # web 3 and store 3 tie; the alphabetically first wins
            "preferred_channel_90d": "store",
            # counts 3 3 2 1 1 of 10: -(2·.3 log2 .3 + .2 log2 .2 + 2·.1 log2 .1)
            "channel_entropy_90d": 2.1709505944546685,
            "events_trend_30d": math.log(10),  # 9 events in [05-02, T), 0 before → ln(10 / 1)
            "revenue_trend_30d": math.log(356),  # ln((355 + 1) / (0 + 1))
        },
    )


def test_customer_signed_up_after_t_is_absent_until_signup(snapshots: pd.DataFrame) -> None:
    at_t = snapshots[snapshots["event_timestamp"] == T]
    # C signed up 06-10 and its first event is exactly at T; F has no row and one event at T.
    assert "C" not in set(at_t["customer_id"])
    assert "F" not in set(at_t["customer_id"])
    assert sorted(at_t["customer_id"]) == ["A", "B", "D", "E"]
    _assert_features(
        _row(snapshots, "C", T2),
        {
            "tenure_days": 14.0,  # first event 06-01 precedes signup 06-10 → from 06-01
            "region": "south",
            "app_events_7d": 2.0,  # 06-12
            "web_events_7d": 0.0,  # 06-01 < 06-08
            "web_events_30d": 1.0,
            "days_since_last_purchase": 2.625,  # 06-12 09:00 → 2 d 15 h
            "cross_channel_purchase_rate_90d": 0.0,  # only an app touch; web 11 d before
        },
    )
    _assert_features(_row(snapshots, "F", T2), {"tenure_days": 14.0, "region": None})


def test_customer_with_only_contextual_events(snapshots: pd.DataFrame) -> None:
    expected = {
        "tenure_days": 30.5,  # first send 05-01 12:00
        "active_channels_90d": 0.0,
        "channel_entropy_90d": NAN,
        "preferred_channel_90d": None,
        "email_open_rate_90d": 0.0,  # 0 opens / 1 send
        "email_click_rate_90d": 0.0,
        "push_open_rate_90d": 0.0,
        "sms_click_rate_90d": NAN,
        "sessions_30d": 0.0,
        "product_views_per_session_30d": NAN,
        "channel_switches_90d": 0.0,
        "events_trend_30d": 0.0,  # ln(1 / 1)
        "revenue_trend_30d": 0.0,
        "purchases_90d": 0.0,
        "avg_order_value_90d": NAN,
        "cart_abandonment_rate_90d": NAN,
        "avg_rating_90d": NAN,
        "online_revenue_share_90d": NAN,
        "cross_channel_purchase_rate_90d": NAN,
    }
    for ch in CHANNELS:
        expected |= {f"{ch}_events_90d": 0.0, f"{ch}_days_since_last": NAN}
    _assert_features(_row(snapshots, "D", T), expected)


def test_signed_up_customer_without_events(snapshots: pd.DataFrame) -> None:
    _assert_features(
        _row(snapshots, "E", T),
        {
            "tenure_days": 0.5,  # signup 05-31 12:00
            "loyalty_tier": "silver",
            "purchases_90d": 0.0,
            "web_events_90d": 0.0,
            "days_since_last_purchase": NAN,
            "preferred_channel_90d": None,
        },
    )


# --- intra-day instants ----------------------------------------------------------------------
# TI = 2024-06-01 15:30 UTC, so TI-7d = 05-25 15:30, TI-30d = 05-02 15:30, TI-60d = 04-02 15:30
# and TI-90d = 03-03 15:30: every window edge falls inside a UTC day.
TI = pd.Timestamp("2024-06-01 15:30", tz="UTC")
EVENTS_G = [
    _ev("G", "2024-03-03 09:00", "app", "app_open", session="g-a0"),  # g1: before TI-90d
    _ev("G", "2024-03-03 16:00", "app", "app_open", session="g-a1"),  # g2: same day, inside
    _ev("G", "2024-03-20 12:00", "store", "purchase", 80.0),  # g3: no touch within 72 h
    _ev("G", "2024-05-02 15:00", "web", "page_view"),  # g4: 30 min before TI-30d
    _ev("G", "2024-05-02 16:00", "web", "product_view"),  # g5: same (web, day) session as g4
    _ev("G", "2024-05-25 15:29:59.999999", "web", "add_to_cart", session="g-w1"),  # g6: 1 µs
    _ev("G", "2024-05-25 15:30", "web", "page_view", session="g-w1"),  # g7: exactly TI-7d
    _ev("G", "2024-05-26 10:00", "app", "purchase", 50.0, "g-a2"),  # g8: recovers g6 (18 h 30)
    _ev("G", "2024-05-27 08:00", "web", "page_view", session="g-w1"),  # g14: g-w1 again, 40.5 h
    _ev("G", "2024-06-01 09:00", "web", "add_to_cart", session="g-w2"),  # g9
    _ev("G", "2024-06-01 15:00", "store", "purchase", 40.0),  # g10: recovers g9; web 6 h before
    _ev("G", "2024-06-01 15:20", "app", "add_to_cart", session="g-a3"),  # g13
    _ev("G", "2024-06-01 15:30", "web", "purchase", 999.0),  # g11: exactly TI, excluded
]
CUSTOMERS_TI = pd.DataFrame(
    {
        "customer_id": ["G", "H", "I"],
        "signup_date": pd.to_datetime(
            ["2024-01-01 00:00", "2024-06-01 12:00", "2024-06-01 15:30"], utc=True
        ),
        "region": ["west", "north", "south"],
        "age_band": ["25-34", "45-54", "18-24"],
        "loyalty_tier": ["bronze", "none", "gold"],
        "preferred_device": ["desktop", "mobile", "mobile"],
    }
)


@pytest.fixture(scope="module")
def intraday() -> pd.DataFrame:
    return compute_snapshots(_events(EVENTS_G), CUSTOMERS_TI, [TI])


def test_windows_at_an_intra_day_instant(intraday: pd.DataFrame) -> None:
    # Initiated counts in [TI-90d, TI): web g4 g5 g6 g7 g14 g9 = 6, app g2 g8 g13 = 3,
    # store g3 g10 = 2 (g1 is 6 h 30 before the edge, g11 is at TI).
    web, app, store = 6 / 11, 3 / 11, 2 / 11
    _assert_features(
        _row(intraday, "G", TI),
        {
            "web_events_7d": 3.0,  # g7 (exactly TI-7d) g14 g9; g6 is 1 µs before the edge
            # a UTC day counts when it holds an event inside the window: 05-25 (g7), 05-27, 06-01
            "web_active_days_7d": 3.0,
            "web_events_30d": 5.0,  # g5 (g4 is 30 min before the edge) g6 g7 g14 g9
            "web_active_days_30d": 4.0,  # 05-02 (g5 only) 05-25 05-27 06-01
            "web_events_90d": 6.0,
            "web_active_days_90d": 4.0,
            "web_days_since_last": 6.5 / 24,  # g9 06-01 09:00
            "app_events_7d": 2.0,  # g8 g13
            "app_active_days_7d": 2.0,
            "app_events_90d": 3.0,  # g2 g8 g13 (g1 before the edge)
            "app_active_days_90d": 3.0,  # 03-03 (g2 only) 05-26 06-01
            "app_days_since_last": 10 / 1440,  # g13 15:20
            "store_events_7d": 1.0,
            "store_events_90d": 2.0,
            "store_days_since_last": 30 / 1440,  # g10 15:00
            "purchases_90d": 3.0,  # g3 g8 g10 (g11 at TI excluded)
            "revenue_90d": 170.0,  # 80 + 50 + 40
            "avg_order_value_90d": 170 / 3,
            "days_since_last_purchase": 30 / 1440,
            "web_purchases_90d": 0.0,
            "web_days_since_last_purchase": NAN,
            "app_revenue_90d": 50.0,
            "store_purchases_90d": 2.0,
            "store_revenue_90d": 120.0,
            # carts g6 (recovered by g8), g9 (by g10, 6 h later, before TI), g13 (its purchase
            # g11 comes exactly at TI, so not before TI) → 1 / 3
            "cart_abandonment_rate_90d": 1 / 3,
            # sessions started in [05-02 15:30, TI) on web/app: g-w1 (g6), g-a2, g-w1 again
            # (g14, 40.5 h after g7), g-w2, g-a3; web day 05-02 began at g4, before the edge
            "sessions_30d": 5.0,
            "product_views_per_session_30d": 0.2,  # g5 / 5
            # sessions in start order: app g-a0, app g-a1 | store 03-20 (app 16 d 20 h before:
            # yes) | web 05-02 (store 43 d before: no) | web g-w1 (no) | app g-a2 (yes) | web
            # g-w1' (yes) | web g-w2 (no) | store 06-01 (yes) | app g-a3 (yes); g-a0 is before
            # the edge → 5
            "channel_switches_90d": 5.0,
            # g3: nothing within 72 h; g8: web g7 18 h 30 before; g10: web g9 6 h before
            "cross_channel_purchase_rate_90d": 2 / 3,
            "web_to_store_purchase_rate_90d": 0.5,  # g10 yes, g3 no
            "online_revenue_share_90d": 50 / 170,  # app g8
            # initiated in [05-02 15:30, TI): g5 g6 g7 g8 g14 g9 g10 g13 = 8; in
            # [04-02 15:30, 05-02 15:30): g4 → ln(9 / 2)
            "events_trend_30d": math.log(9 / 2),
            "revenue_trend_30d": math.log(91),  # (50 + 40 + 1) / (0 + 1)
            "active_channels_90d": 3.0,
            "channel_entropy_90d": -sum(p * math.log2(p) for p in (web, app, store)),
            "preferred_channel_90d": "web",
            "tenure_days": 152 + 15.5 / 24,  # 2024-01-01 → 06-01 15:30
            "region": "west",
        },
    )


def test_profile_only_customers_at_an_intra_day_instant(intraday: pd.DataFrame) -> None:
    # H signed up 3 h 30 before TI and has no event: counts 0, ratios and recencies missing.
    expected = {
        "tenure_days": 3.5 / 24,
        "loyalty_tier": "none",
        "purchases_90d": 0.0,
        "sessions_30d": 0.0,
        "channel_switches_90d": 0.0,
        "avg_order_value_90d": NAN,
        "cart_abandonment_rate_90d": NAN,
        "channel_entropy_90d": NAN,
        "preferred_channel_90d": None,
        "events_trend_30d": 0.0,
    }
    for ch in CHANNELS:
        expected |= {
            f"{ch}_events_7d": 0.0,
            f"{ch}_active_days_90d": 0.0,
            f"{ch}_days_since_last": NAN,
        }
    _assert_features(_row(intraday, "H", TI), expected)
    # I signs up exactly at TI: not yet a customer at TI.
    assert sorted(intraday["customer_id"]) == ["G", "H"]
    assert (intraday["event_timestamp"] == TI).all()


def test_an_intra_day_instant_sees_exactly_the_events_before_it() -> None:
    # One microsecond later, g11 (at TI) is in and g7 (exactly at TI-7d) is out.
    later = TI + pd.Timedelta(microseconds=1)
    row = _row(compute_snapshots(_events(EVENTS_G), CUSTOMERS_TI, [later]), "G", later)
    _assert_features(
        row,
        {
            "web_events_7d": 3.0,  # g14 g9 g11
            "web_active_days_7d": 2.0,  # 05-27 06-01 (05-25 held only g6 and g7)
            "web_purchases_90d": 1.0,
            "purchases_90d": 4.0,
            "web_days_since_last": 1e-6 / 86400,
            # g13's cart is now recovered by g11 (10 min later, before the instant) → 0 / 3
            "cart_abandonment_rate_90d": 0.0,
        },
    )


# --- property: nothing at or after T changes a snapshot at T ---------------------------------

# The property is checked at intra-day instants (a midnight is just one more instant).
BASE = pd.Timestamp("2024-06-01 09:30:00.000123", tz="UTC")
_CUSTOMER_IDS = ("c1", "c2", "c3", "c4")
_EVENT_TYPES = tuple(EVENT_TYPES)
_DAY = 86_400
# Offsets (s) relative to BASE that sit on the window edges, mixed into the random ones.
_EDGES = (-90 * _DAY, -90 * _DAY - 1, -60 * _DAY, -30 * _DAY, -30 * _DAY - 1, -7 * _DAY, -1)


def _event_rows(offsets: st.SearchStrategy[int]) -> st.SearchStrategy[list[dict]]:
    row = st.fixed_dictionaries(
        {
            "customer_id": st.sampled_from(_CUSTOMER_IDS),
            "offset": offsets,
            "channel": st.sampled_from(CHANNELS),
            "event_type": st.sampled_from(_EVENT_TYPES),
            # whole amounts and ratings keep every sum exact, so equality can be exact
            "amount": st.one_of(st.none(), st.integers(1, 500).map(float)),
            "session_id": st.one_of(st.none(), st.sampled_from(("s1", "s2", "s3"))),
            "rating": st.one_of(st.none(), st.integers(1, 5).map(float)),
        }
    )
    return st.lists(row, max_size=25)


_BEFORE = st.one_of(st.integers(-120 * _DAY, -1), st.sampled_from(_EDGES))
_AT_OR_AFTER = st.one_of(st.integers(0, 40 * _DAY), st.just(0))
_SIGNUPS = st.dictionaries(
    st.sampled_from(_CUSTOMER_IDS),
    st.one_of(st.integers(-200 * _DAY, 20 * _DAY), st.just(0)),
)


def _table(rows: list[dict]):
    frame = pd.DataFrame(
        rows,
        columns=[
            "customer_id",
            "offset",
            "channel",
            "event_type",
            "amount",
            "session_id",
            "rating",
        ],
    )
    frame["event_timestamp"] = BASE + pd.to_timedelta(frame["offset"].astype("int64"), unit="s")
    return to_canonical_table(frame.drop(columns=["offset"]))


def _customers(signups: dict[str, int]) -> pd.DataFrame:
    ids = sorted(signups)
    return pd.DataFrame(
        {
            "customer_id": pd.Series(ids, dtype="object"),
            "signup_date": pd.to_datetime(
                [BASE + pd.Timedelta(seconds=signups[c]) for c in ids], utc=True
            ),
            "region": [f"r-{c}" for c in ids],
            "age_band": ["25-34"] * len(ids),
            "loyalty_tier": ["bronze"] * len(ids),
            "preferred_device": ["mobile"] * len(ids),
        }
    )


@pytest.fixture(scope="module")
def connection():
    """One DuckDB connection for every example (what the live path does): it halves the
    per-call cost, and compute_snapshots must leave nothing behind in it between calls."""
    con = duckdb.connect()
    yield con
    con.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_event_rows(_BEFORE), later=_event_rows(_AT_OR_AFTER), signups=_SIGNUPS)
def test_events_at_or_after_t_never_change_the_snapshot_at_t(
    connection, before, later, signups
) -> None:
    customers = _customers(signups)
    times = [BASE - pd.Timedelta(days=7, hours=13), BASE]
    base = compute_snapshots(_table(before), customers, times, connection=connection)
    more = compute_snapshots(_table(before + later), customers, times, connection=connection)
    pd.testing.assert_frame_equal(base, more, check_exact=True)
    # Who appears: signed up before that T, or has any event before it.
    for at in times:
        expected = {c for c, s in signups.items() if BASE + pd.Timedelta(seconds=s) < at}
        expected |= {
            r["customer_id"] for r in before if BASE + pd.Timedelta(seconds=r["offset"]) < at
        }
        assert set(base.loc[base["event_timestamp"] == at, "customer_id"]) == expected


# --- snapshot times and the runner -----------------------------------------------------------


def test_snapshot_times_are_any_instants() -> None:
    assert snapshot_times("2024-05-18", "2024-06-01", "7D") == [
        pd.Timestamp("2024-05-18", tz="UTC"),
        pd.Timestamp("2024-05-25", tz="UTC"),
        pd.Timestamp("2024-06-01", tz="UTC"),
    ]
    assert snapshot_times("2024-05-31 06:00", "2024-06-01T07:00:00+01:00", "12h") == [
        pd.Timestamp("2024-05-31 06:00", tz="UTC"),
        pd.Timestamp("2024-05-31 18:00", tz="UTC"),
        pd.Timestamp("2024-06-01 06:00", tz="UTC"),
    ]
    with pytest.raises(ValueError, match="positive"):
        snapshot_times("2024-05-18", "2024-06-01", "0h")
    with pytest.raises(ValueError, match="duration"):
        snapshot_times("2024-05-18", "2024-06-01", "weekly")
    with pytest.raises(ValueError, match="before --start"):
        snapshot_times("2024-06-01", "2024-05-18")
    with pytest.raises(ValueError, match="microsecond"):
        compute_snapshots(_events(EVENTS_A), CUSTOMERS, ["2024-06-01 12:00:00.0000001"])
    with pytest.raises(ValueError, match="not an instant"):
        compute_snapshots(_events(EVENTS_A), CUSTOMERS, ["noon"])


def _view_frames(home: Settings) -> dict[str, pd.DataFrame]:
    return {v: pq.read_table(home.features_dir / f"{v}.parquet").to_pandas() for v in VIEWS}


def test_build_features_writes_views_and_replaces_same_t(tmp_path) -> None:
    home = Settings.from_env(tmp_path)
    write_events(home, _events(EVENTS_A + EVENTS_B + EVENTS_C + EVENTS_D + EVENTS_F))
    write_customers(home, CUSTOMERS)

    # 14-day steps skip 06-08, when C (signup 06-10) appears only through its event at 06-01.
    first = build_features(home, "2024-06-01", "2024-06-15", "14D")
    assert sorted(p.rsplit("/", 1)[-1] for p in first.files) == sorted(
        f"{v}.parquet" for v in VIEWS
    )
    # 06-01: A B D E; 06-15: A B C D E F
    assert first.rows == 4 + 6
    frames = _view_frames(home)
    for view, frame in frames.items():
        assert list(frame.columns) == [
            "customer_id",
            "event_timestamp",
            "created_timestamp",
            *(f.name for f in features_of_view(view)),
        ]
        assert len(frame) == 10
        assert not frame.duplicated(["customer_id", "event_timestamp"]).any()
        assert str(frame["event_timestamp"].dt.tz) == "UTC"
    a_at_t = frames["transactions"].query("customer_id == 'A'").iloc[0]
    assert a_at_t["event_timestamp"] == T
    assert a_at_t["revenue_90d"] == 325.0

    # Re-running an overlapping range replaces 06-15 and adds 06-29.
    second = build_features(home, "2024-06-15", "2024-06-29", "14D")
    assert second.rows == 6 + 6
    frames = _view_frames(home)
    for frame in frames.values():
        assert len(frame) == 4 + 6 + 6
        assert not frame.duplicated(["customer_id", "event_timestamp"]).any()
        created = frame.groupby("event_timestamp")["created_timestamp"].nunique()
        assert (created == 1).all()
    kept = frames["profile"].set_index("event_timestamp")["created_timestamp"]
    assert kept.loc[T].iloc[0] < kept.loc[T2].iloc[0]


def test_build_features_at_instants_and_from_the_cli(tmp_path) -> None:
    from typer.testing import CliRunner

    from omniscore.cli import app

    home = Settings.from_env(tmp_path)
    write_events(home, _events(EVENTS_G))
    write_customers(home, CUSTOMERS_TI)
    report = build_features(home, at=["2024-06-01T15:30:00Z", TI, "2024-05-31 08:00"])
    assert report.snapshots == [pd.Timestamp("2024-05-31 08:00", tz="UTC"), TI]
    # 05-31 08:00: G only (H signs up 06-01 12:00); TI: G and H
    assert report.rows == 1 + 2
    stored = _view_frames(home)["transactions"]
    assert _row(stored, "G", TI)["revenue_90d"] == 170.0

    result = CliRunner().invoke(
        app,
        [
            "features",
            "build",
            "--at",
            "2024-06-01T16:00:00Z",
            "--at",
            "2024-06-01T17:00:00+01:00",
            "--home",
            str(tmp_path),
        ],  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    assert "2024-06-01T16:00:00+00:00" in result.output
    stamps = set(_view_frames(home)["profile"]["event_timestamp"])
    assert stamps == {pd.Timestamp("2024-05-31 08:00", tz="UTC"), TI,
                      pd.Timestamp("2024-06-01 16:00", tz="UTC")}  # fmt: skip
    bad = CliRunner().invoke(app, ["features", "build", "--at", "noon", "--home", str(tmp_path)])
    assert bad.exit_code != 0 and "not an instant" in bad.output


def test_long_window_and_lifetime_purchase_features_by_hand() -> None:
    """180/365-day and lifetime purchases, distinct purchase days, the gaps between them and
    recency against the usual gap, at two instants; repeat lines of one day count as one day."""
    t = pd.Timestamp("2026-06-10 12:00", tz="UTC")
    days_before = [(400, 10.0), (300, 20.0), (300.25, 5.0), (100, 30.0), (10, 40.0), (2, 0.0)]
    events = to_canonical_table(
        pd.DataFrame(
            [
                _ev("K", (t - pd.Timedelta(days=d)).tz_localize(None), "store", "purchase", amount)
                for d, amount in days_before
            ]
        )
    ).to_pandas()
    profile = pd.DataFrame(
        {
            "customer_id": ["K"],
            "signup_date": pd.to_datetime(["2024-01-01"], utc=True),
            "region": ["north"],
            "age_band": ["25-34"],
            "loyalty_tier": ["gold"],
            "preferred_device": ["mobile"],
        }
    )
    earlier = t - pd.Timedelta(days=200)
    rows = compute_snapshots(events, profile, [earlier, t]).set_index("event_timestamp")
    # At t: purchase days t-400, t-300 (two lines, 06:00 and 12:00), t-100, t-10, t-2.
    now = rows.loc[t]
    assert (now["purchases_90d"], now["purchases_180d"], now["purchases_365d"]) == (2, 3, 5)
    assert (now["revenue_180d"], now["revenue_365d"], now["revenue_lifetime"]) == (70, 95, 105)
    assert now["purchases_lifetime"] == 6 and now["purchase_days_lifetime"] == 5
    assert now["purchase_gap_mean_days"] == 99.5  # gaps 100, 200, 90, 8
    # deviations from 99.5: 0.5, 100.5, -9.5, -91.5 → (0.25 + 10100.25 + 90.25 + 8372.25) / 4
    assert now["purchase_gap_std_days"] == pytest.approx(math.sqrt(4640.75), rel=1e-12)
    assert now["purchase_recency_ratio"] == pytest.approx(2 / 99.5, rel=1e-12)
    # At t - 200 d: only the purchases of t-400 and t-300 are before it.
    then = rows.loc[earlier]
    assert (then["purchases_90d"], then["purchases_180d"], then["purchases_365d"]) == (0, 2, 3)
    assert (then["revenue_180d"], then["revenue_lifetime"]) == (25, 35)
    assert then["purchase_days_lifetime"] == 2
    assert (then["purchase_gap_mean_days"], then["purchase_gap_std_days"]) == (100, 0)
    assert then["purchase_recency_ratio"] == 1.0  # 100 days since the last, usual gap 100


def test_one_purchase_day_has_no_usual_gap() -> None:
    t = pd.Timestamp("2026-06-10", tz="UTC")
    events = to_canonical_table(
        pd.DataFrame([_ev("K", "2026-05-01 08:00", "web", "purchase", 12.5)])
    ).to_pandas()
    row = compute_snapshots(events, events[["customer_id"]].assign(signup_date=pd.NaT), [t])
    one = row.iloc[0]
    assert one["purchases_lifetime"] == 1 and one["purchase_days_lifetime"] == 1
    assert pd.isna(one["purchase_gap_mean_days"]) and pd.isna(one["purchase_gap_std_days"])
    assert pd.isna(one["purchase_recency_ratio"])
    # A population without a single repeat purchase identifies no BG/NBD parameters.
    assert pd.isna(one["bgnbd_p_alive"]) and pd.isna(one["bgnbd_expected_purchases_30d"])
    # Given a population's parameters: BG/NBD drops a customer out only after a repeat
    # purchase, so one purchase day is alive; 40 days from 05-01 to T's day.
    given = compute_snapshots(
        events,
        events[["customer_id"]].assign(signup_date=pd.NaT),
        [t],
        bgnbd_params={t: POPULATION},
    ).iloc[0]
    assert given["bgnbd_p_alive"] == 1.0
    assert given["bgnbd_expected_purchases_30d"] == pytest.approx(_bgnbd_by_hand(0, 0, 40)[1])


def test_default_snapshot_range_covers_the_whole_history(tmp_path) -> None:
    from data_layer.feature_pipeline import default_snapshot_range

    settings = Settings.from_env(tmp_path, env={})
    settings.ensure_dirs()
    events = [
        _ev("K", "2024-01-10 08:00", "store", "purchase", 10.0),  # the oldest event
        _ev("K", "2025-03-05 17:30", "store", "purchase", 20.0),  # the newest: end 2025-03-06
    ]
    write_events(settings, to_canonical_table(pd.DataFrame(events)))
    start, end = default_snapshot_range(settings)
    assert end == pd.Timestamp("2025-03-06", tz="UTC")
    # Weekly back from the end, the earliest instant after 2024-01-10 08:00 is 2024-01-11
    # (60 weeks before the end): 61 snapshots, none of them before any event.
    assert start == pd.Timestamp("2024-01-11", tz="UTC")
    assert len(snapshot_times(start, end, "7D")) == 61
    # A number of weeks still caps it.
    assert default_snapshot_range(settings, weeks=4) == (end - pd.Timedelta(weeks=3), end)
