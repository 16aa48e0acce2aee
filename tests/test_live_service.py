"""The live path of the scoring service over real HTTP: ``POST /events``, read-your-writes,
features served as of a fixed clock, and ``GET /customers/{id}``.

One home per module (a private copy of conftest.py's ``serving_home``: 500 generated
customers, small real models promoted; the live state bootstrapped from its event store) and
a ``bentoml serve`` subprocess with ``OMNISCORE_CLOCK`` fixed at an intra-day instant after the
generated world. A second server runs two days later on the same home, to show windows
sliding with the clock alone.
"""

from __future__ import annotations

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from training_home import copy_home

from data_layer.event_store import read_customers, read_events
from data_layer.feast_store import feature_store, online_features
from data_layer.feature_pipeline import bgnbd_params_at, compute_snapshots, read_bgnbd_params
from data_layer.live_state import LiveState
from data_layer.synthetic import generate
from serving.launcher import start_server
from training.model_io import load_champion

pytestmark = pytest.mark.slow
API_KEY = "live-key-0123456789abcdef"
CLOCK = pd.Timestamp("2026-06-29T14:25:00Z")
"""Fourteen and a half hours after the generated world ends (its default end, 2026-06-29)."""


def iso(at: pd.Timestamp) -> str:
    return at.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def home(serving_home, tmp_path_factory):
    settings = copy_home(serving_home, tmp_path_factory.mktemp("live-home"))
    with LiveState.open(settings) as state:
        state.bootstrap(CLOCK)
    return settings


def serve(home, clock: pd.Timestamp):
    options = {"clock": iso(clock), "reload_interval": 0, "max_events": 50}
    return start_server(home, api_key=API_KEY, options=options)


@pytest.fixture(scope="module")
def client(home):
    with (
        serve(home, CLOCK) as server,
        httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as c,
    ):
        yield c


def post_events(client, events: list[dict]) -> list[dict]:
    response = client.post("/events", json={"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(events)
    return results


def batch_frame(home, at: pd.Timestamp) -> pd.DataFrame:
    """The batch pipeline's features of every customer at ``at``, from the whole event store.

    The BG/NBD features use the population fit the last build stored, as the live path does
    between builds (a fit at ``at`` itself would also see the events posted by the tests)."""
    params = {at: bgnbd_params_at(read_bgnbd_params(home), at)}
    return compute_snapshots(read_events(home), read_customers(home), [at], bgnbd_params=params)


def batch_features(home, customer: str, at: pd.Timestamp) -> dict:
    """The batch pipeline's features of one customer at ``at``, from the whole event store."""
    frame = batch_frame(home, at)
    row = frame[frame["customer_id"] == customer]
    assert len(row) == 1
    return row.iloc[0].to_dict()


def assert_same_features(served: dict, expected: dict) -> None:
    for name, value in served.items():
        want = expected[name]
        if value is None:
            assert want is None or pd.isna(want), name
        elif isinstance(value, str):
            assert value == want, name
        else:
            assert value == pytest.approx(float(want), abs=1e-9, rel=1e-9), name


# --- POST /events -----------------------------------------------------------------------------
def test_post_events_answers_each_event_in_order_and_quarantines_rejects(home, client):
    good = {
        "customer_id": "C000007",
        "event_timestamp": iso(CLOCK - pd.Timedelta(hours=2)),
        "channel": "app",
        "event_type": "app_open",
        "session_id": "live-s1",
    }
    results = post_events(
        client,
        [
            good,
            good,
            {**good, "event_timestamp": iso(CLOCK + pd.Timedelta(minutes=10))},
            {**good, "channel": "carrier-pigeon"},
            {**good, "event_type": "purchase"},
        ],
    )
    assert [r["status"] for r in results] == [
        "accepted",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
    ]
    assert results[0]["event_id"] == results[1]["event_id"] and results[0]["reason"] is None
    assert "after the clock" in results[2]["reason"]
    assert results[3]["reason"] == "unknown channel: carrier-pigeon"
    assert results[4]["reason"] == "missing amount on purchase"
    # Durable in the canonical store, each once; rejects quarantined with their reason.
    stored = read_events(home)
    assert (stored["event_id"] == results[0]["event_id"]).sum() == 1
    quarantined = pd.concat(
        [pq.read_table(p).to_pandas() for p in sorted(home.quarantine_dir.glob("live-*.parquet"))]
    )
    assert {r["reason"] for r in results[2:]} <= set(quarantined["reason"])
    assert "carrier-pigeon" in set(quarantined["channel"])


def test_post_events_refuses_a_malformed_body_with_a_message(client):
    for body in ({"events": []}, {"events": "x"}, {"nope": []}, {"events": [{}] * 51}):
        response = client.post("/events", json=body)
        assert response.status_code == 400, body
        assert response.json()["message"]
    unauthorised = httpx.post(f"{client.base_url}/events", json={"events": [{}]})
    assert unauthorised.status_code == 401


# --- read-your-writes ----------------------------------------------------------------------
def test_a_score_after_the_events_response_sees_the_event(client):
    newcomer = "LIVE-NEW-1"
    before = client.post("/score", json={"customer_ids": [newcomer]}).json()["scores"][0]
    assert before["known"] is False
    event = {
        "customer_id": newcomer,
        "event_timestamp": iso(CLOCK - pd.Timedelta(minutes=3)),
        "channel": "web",
        "event_type": "page_view",
    }
    assert post_events(client, [event])[0]["status"] == "accepted"
    after = client.post("/score", json={"customer_ids": [newcomer]}).json()["scores"][0]
    assert after["known"] is True
    assert after["feature_timestamp"] == iso(CLOCK).replace(".000000", "")
    view = client.get(f"/customers/{newcomer}").json()
    assert view["features"]["web_events_7d"] == 1.0
    assert view["features"]["web_days_since_last"] == pytest.approx(3 / 1440, abs=1e-12)


def test_accepted_events_rewrite_the_feast_online_store(home, client):
    customer = "LIVE-ONLINE-1"
    events = [
        {
            "customer_id": customer,
            "event_timestamp": iso(CLOCK - pd.Timedelta(hours=h)),
            "channel": "email",
            "event_type": "email_open",
        }
        for h in (1, 2)
    ]
    for n, event in enumerate(events, start=1):  # two rewrites at the same (fixed) instant
        assert post_events(client, [event])[0]["status"] == "accepted"
        stored = online_features(feature_store(home), "propensity_v1", [customer])
        assert stored["email_events_7d"].iloc[0] == n
    view = client.get(f"/customers/{customer}").json()["features"]
    assert stored["email_days_since_last"].iloc[0] == view["email_days_since_last"]


# --- the clock and sliding windows ----------------------------------------------------------
def test_features_are_the_batch_features_at_the_clock_and_slide_with_it(home, client):
    buyer = "LIVE-BUYER-8D"
    bought = CLOCK - pd.Timedelta(days=8)
    events = [
        {
            "customer_id": buyer,
            "event_timestamp": iso(bought),
            "channel": "web",
            "event_type": "purchase",
            "amount": 80.0,
        },
        {
            "customer_id": buyer,
            "event_timestamp": iso(CLOCK - pd.Timedelta(days=1)),
            "channel": "web",
            "event_type": "page_view",
        },
    ]
    assert [r["status"] for r in post_events(client, events)] == ["accepted", "accepted"]
    view = client.get(f"/customers/{buyer}").json()
    features = view["features"]
    assert view["as_of"] == iso(CLOCK)
    assert features["web_events_7d"] == 1.0  # the purchase is 8 days old: outside 7 days
    assert features["web_events_30d"] == 2.0
    assert features["purchases_90d"] == 1.0
    assert features["days_since_last_purchase"] == 8.0
    assert_same_features(features, batch_features(home, buyer, CLOCK))

    later = CLOCK + pd.Timedelta(days=2, hours=3)
    with (
        serve(home, later) as server,
        httpx.Client(base_url=server.url, headers=server.headers(), timeout=60) as c,
    ):
        moved = c.get(f"/customers/{buyer}").json()["features"]
        known = c.get("/customers/C000003").json()["features"]
    assert moved["days_since_last_purchase"] == pytest.approx(10.125, abs=1e-12)
    assert moved["web_events_7d"] == 1.0 and moved["web_events_30d"] == 2.0
    assert_same_features(moved, batch_features(home, buyer, later))
    assert_same_features(known, batch_features(home, "C000003", later))


def test_scores_are_the_models_on_the_batch_features_at_the_clock(home, client):
    ids = [f"C{i:06d}" for i in range(1, 9)]
    body = client.post("/score", json={"customer_ids": ids}).json()
    frame = batch_frame(home, CLOCK)
    frame = frame.set_index("customer_id").loc[ids].reset_index()
    for name in ("propensity", "churn"):
        model = load_champion(home, name)
        expected = model.predict_proba(frame)
        got = np.array([s[name]["probability"] for s in body["scores"]])
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # A second request is served from the cache: the same answer.
    assert client.post("/score", json={"customer_ids": ids}).json() == body


def test_a_world_posted_over_http_in_shuffled_batches_is_served_as_the_batch_computes_it(
    home, client
):
    """The core property through the HTTP path: another generated world's events (ids
    renamed), shuffled, with a fifth of them sent twice, posted in batches; then every
    customer's served features equal the batch pipeline's over the whole store."""
    world = generate(25, 60, seed=21, end=CLOCK.floor("D")).events.to_pandas()
    world = world[world["event_timestamp"] < CLOCK]
    world["customer_id"] = "P-" + world["customer_id"]
    columns = ["customer_id", "event_timestamp", "channel", "event_type", "amount"]
    columns += ["session_id", "device", "rating", "campaign_id"]  # ids: content hashes
    records = []
    for row in world[columns].to_dict("records"):
        record = {k: v for k, v in row.items() if v is not None and not pd.isna(v)}
        record["event_timestamp"] = iso(row["event_timestamp"])
        records.append(record)
    rng = np.random.default_rng(4)
    repeats = [records[i] for i in rng.integers(0, len(records), size=len(records) // 5)]
    posted = [records[i] for i in rng.permutation(len(records))] + repeats
    statuses = []
    for lo in range(0, len(posted), 50):
        statuses += [r["status"] for r in post_events(client, posted[lo : lo + 50])]
    assert statuses.count("accepted") == len(records)
    assert statuses.count("duplicate") == len(repeats)
    frame = batch_frame(home, CLOCK)
    expected = frame.set_index("customer_id")
    for customer in sorted(world["customer_id"].unique()):
        served = client.get(f"/customers/{customer}").json()["features"]
        assert_same_features(served, expected.loc[customer].to_dict())


# --- GET /customers/{id} ----------------------------------------------------------------------
def test_customer_view_has_features_scores_and_recent_events(home, client):
    customer = "C000011"
    response = client.get(f"/customers/{customer}")
    assert response.status_code == 200, response.text
    view = response.json()
    score = client.post("/score", json={"customer_ids": [customer]}).json()["scores"][0]
    for name in ("propensity", "churn", "segment", "model_versions"):
        assert view[name] == score[name]
    assert {"low", "medium", "high"} >= {view["propensity"]["band"], view["churn"]["band"]}
    assert view["computed_at"] == iso(CLOCK)
    assert_same_features(view["features"], batch_features(home, customer, CLOCK))
    assert len(view["features"]) > 100
    recent = view["recent_events"]
    assert 0 < len(recent) <= 20
    stamps = [e["event_timestamp"] for e in recent]
    assert stamps == sorted(stamps, reverse=True)
    stored = read_events(home)
    newest = stored[stored["customer_id"] == customer].nlargest(1, "event_timestamp")
    assert recent[0]["event_id"] in set(
        stored[stored["event_timestamp"] == newest["event_timestamp"].iloc[0]]["event_id"]
    )


def test_an_unknown_customer_is_a_404_with_a_message(client):
    response = client.get("/customers/nobody-here-42")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "not_found"
    assert "nobody-here-42" in body["message"]
