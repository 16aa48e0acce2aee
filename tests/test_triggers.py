"""Score-change triggers (serving.triggers) on real models, the real live state and Redis.

A private copy of ``serving_home`` (small models trained and promoted), its live state
bootstrapped at a fixed clock, and Redis database 14 with a stream name of its own. Each
batch of events is folded through :class:`serving.triggers.ScoreTriggers`; the expected
changes are computed independently by scoring every customer just before and just after
the fold, and the stream must hold exactly one message per band (or segment) change and
none otherwise. Redelivery and a consumer restarted between the fold and the publication
publish nothing twice.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import uuid
from urllib.parse import urlparse

import pandas as pd
import pytest
import redis
from training_home import copy_home

from data_layer.feast_store import feature_store
from data_layer.live_ingest import accept_events
from data_layer.live_state import LiveState
from data_layer.stream_consumer import StreamConsumer
from serving.live import LiveFeatures
from serving.scoring import champion_versions, load_model_set, score
from serving.triggers import (
    ScoreTriggers,
    TriggerConfigError,
    TriggerPublisher,
    TriggerRules,
    WebhookSender,
    change_id,
    read_changes,
    stream_triggers,
)

pytestmark = pytest.mark.slow
CLOCK = pd.Timestamp("2026-06-29T14:25:00Z")
REDIS_DB = 14


def iso(at: pd.Timestamp) -> str:
    return at.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def world(serving_home, services, tmp_path_factory):
    url = urlparse(services["redis"])._replace(path=f"/{REDIS_DB}").geturl()
    prefix = f"omniscore-test-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(
        copy_home(serving_home, tmp_path_factory.mktemp("triggers-home")),
        trigger_redis=url,
        trigger_stream=f"{prefix}:score-changes",
        stream_redis=url,
        stream_name=f"{prefix}:events",
    )
    state = LiveState.open(settings)
    state.bootstrap(CLOCK)
    models = load_model_set(settings, feature_store(settings), champion_versions(settings))
    client = redis.Redis.from_url(url)
    yield settings, state, models, client
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
    state.close()


def scores_now(world, customers):
    """Independent scores of customers as of the clock, from a fresh (uncached) feature view."""
    settings, state, models, _ = world
    return score(models, LiveFeatures(state, settings).batch(models.layout, customers, CLOCK))


def triggers_of(world) -> ScoreTriggers:
    settings, state, models, client = world
    live = LiveFeatures(state, settings)

    def features(model_set, customers, at):
        live.invalidate(customers)
        return live.batch(model_set.layout, customers, at)

    return ScoreTriggers(TriggerPublisher(settings, client=client), lambda: models, features)


def fold(world, events):
    """Fold ``events`` through the triggers; returns (report, published messages)."""
    settings, state, _, client = world
    stream = settings.trigger_stream
    last = client.xrevrange(stream, count=1)
    start = "(" + last[0][0].decode() if last else "-"
    report = triggers_of(world).around(
        events, lambda: accept_events(settings, events, CLOCK, state), CLOCK
    )
    return report, read_changes(client, stream, start)


def band_changes(before, after) -> set[tuple]:
    """(customer, model, old band, new band) of every change between two Scores."""
    changes = set()
    for i, customer in enumerate(after.customer_ids):
        j = before.customer_ids.index(customer)
        for model in ("propensity", "churn"):
            old, new = before.band[model][j], after.band[model][i]
            if old != new:
                changes.add((customer, model, old, new))
        if before.segment_id[j] != after.segment_id[i]:
            changes.add((customer, "segments", before.segment_name[j], after.segment_name[i]))
    return changes


def activity(customer: str, hours_ago: float, tag: str) -> list[dict]:
    """A burst of engaged, buying activity of one customer ending ``hours_ago`` before the clock."""
    at = CLOCK - pd.Timedelta(hours=hours_ago)
    rows = [
        ("email", "email_click", None),
        ("app", "app_open", None),
        ("app", "product_view", None),
        ("app", "add_to_cart", None),
        ("store", "store_visit", None),
        ("store", "purchase", 120.0),
    ]
    return [
        {
            "event_id": f"{tag}-{customer}-{k}",
            "customer_id": customer,
            "event_timestamp": iso(at - pd.Timedelta(minutes=10 * (len(rows) - k))),
            "channel": channel,
            "event_type": kind,
            "amount": amount,
            "session_id": f"{tag}-{customer}" if channel == "app" else None,
        }
        for k, (channel, kind, amount) in enumerate(rows)
    ]


def quiet_customers(world, n: int) -> list[str]:
    """Customers the models rate most likely to churn: activity moves their bands most."""
    settings, state, models, _ = world
    customers = [f"C{i:06d}" for i in range(1, 501)]
    scores = scores_now(world, customers)
    order = scores.score["churn"].argsort()[::-1]
    return [customers[i] for i in order[:n]]


def test_one_message_per_band_change_and_none_for_events_that_change_no_band(world):
    settings, _, _, client = world
    customers = quiet_customers(world, 12)
    total = 0
    quiet_steps = 0
    for step, customer in enumerate(customers):
        events = activity(customer, hours_ago=1 + step / 10, tag="burst")
        before = scores_now(world, [customer])
        report, published = fold(world, events)
        assert report.accepted == len(events)
        expected = band_changes(before, scores_now(world, [customer]))
        got = {(m["customer_id"], m["model"], m["old_band"], m["new_band"]) for m in published}
        assert len(published) == len(got) == len(expected), (published, expected)
        assert got == expected
        for message in published:
            assert message["event_id"] == events[-1]["event_id"]
            assert message["change_id"] == change_id(
                customer, message["model"], events[-1]["event_id"]
            )
            assert message["version"] == champion_versions(settings)[message["model"]]
            assert message["at"] == iso(CLOCK)
            if message["model"] != "segments":
                assert float(message["old_value"]) != float(message["new_value"])
        total += len(published)
        quiet_steps += not expected
        # A small event that changes no band publishes nothing.
        tick = {**events[0], "event_id": f"tick-{customer}", "event_type": "email_open"}
        before = scores_now(world, [customer])
        _, published = fold(world, [tick])
        if not band_changes(before, scores_now(world, [customer])):
            quiet_steps += 1
            assert published == []
    assert total >= 1, "no journey moved a band: the test shows nothing"
    assert quiet_steps >= 1


def test_redelivered_events_publish_nothing_new(world):
    settings, _, _, client = world
    customer = quiet_customers(world, 20)[-1]
    events = activity(customer, hours_ago=0.5, tag="redeliver")
    fold(world, events)
    length = client.xlen(settings.trigger_stream)
    for _ in range(2):
        report, published = fold(world, events)
        assert report.duplicates == len(events)
        assert published == []
    assert client.xlen(settings.trigger_stream) == length


def test_a_consumer_restarted_between_fold_and_publication_publishes_the_change_once(world):
    """The first consumer folds the batch and dies before publishing or acknowledging; the
    restarted one (same name) replays its pending batch: the fold is a duplicate, the change
    is published from the baseline recorded before the first fold, once."""
    settings, state, models, client = world
    customers = quiet_customers(world, 40)[25:40]
    events = [e for c in customers for e in activity(c, hours_ago=0.25, tag="crash")]
    for event in events:
        client.xadd(settings.stream_name, {"event": json.dumps(event)})
    before = scores_now(world, customers)
    triggers = triggers_of(world)

    def crash_after_fold(records, run_fold):
        triggers.before(records, CLOCK)  # the baseline, as the real wrapper records it
        run_fold()
        raise RuntimeError("killed between the fold and the publication")

    first = StreamConsumer(
        settings, state=state, consumer="c1", clock=CLOCK, client=client,
        around_fold=crash_after_fold, batch_size=1000, block_ms=0,
    )  # fmt: skip
    first.ensure_group()
    with pytest.raises(RuntimeError):
        first.poll(block=False)
    expected = band_changes(before, scores_now(world, customers))
    assert expected, "no band moved: the replay would show nothing"
    start = client.xrevrange(settings.trigger_stream, count=1)
    start = "(" + start[0][0].decode() if start else "-"

    def around(records, run_fold):
        return triggers_of(world).around(records, run_fold, CLOCK)

    for _ in range(2):  # restarted, then restarted again after a full success
        restarted = StreamConsumer(
            settings, state=state, consumer="c1", clock=CLOCK, client=client,
            around_fold=around, batch_size=1000, block_ms=0,
        )  # fmt: skip
        restarted.poll(block=False)
        restarted.poll(block=False)
        assert restarted.stats.accepted == 0
    published = read_changes(client, settings.trigger_stream, start)
    got = {(m["customer_id"], m["model"], m["old_band"], m["new_band"]) for m in published}
    assert len(published) == len(expected)
    assert got == expected
    assert not client.xpending(settings.stream_name, "omniscore")["pending"]


class _Collector(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhooks_get_each_change_and_a_failing_one_is_parked(world):
    settings, _, _, client = world
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    dead = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    dead_url = f"http://127.0.0.1:{dead.server_address[1]}/hook"
    dead.server_close()  # nothing listens there any more: connection refused
    good_url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    sender = WebhookSender(
        [dead_url, good_url], attempts=2, backoff=0.01, timeout=2, park_after=2,
        parked_key=f"{settings.trigger_stream}:parked", client=client,
    )  # fmt: skip
    sender.start()
    try:
        messages = [{"id": f"1-{k}", "customer_id": "C1", "model": "churn"} for k in range(3)]
        for message in messages:
            sender.submit(message)
        assert sender.wait_idle(30)
    finally:
        sender.stop()
        server.shutdown()
    assert [m["id"] for m in _Collector.received] == [m["id"] for m in messages]
    assert set(sender.parked) == {dead_url}
    assert "ConnectError" in sender.parked[dead_url]
    stored = client.hget(f"{settings.trigger_stream}:parked", dead_url).decode()
    assert stored == sender.parked[dead_url]


def test_rules_come_from_the_settings(world):
    settings = world[0]
    rules = TriggerRules.from_settings(
        dataclasses.replace(settings, triggers="churn", trigger_thresholds="60,80")
    )
    assert rules.models == {"churn"} and rules.band(79.9, "high") == "medium"
    assert TriggerRules.from_settings(dataclasses.replace(settings, triggers="off")).models == set()
    for bad in ({"triggers": "churn,loyalty"}, {"trigger_thresholds": "90,70"}):
        with pytest.raises(TriggerConfigError):
            TriggerRules.from_settings(dataclasses.replace(settings, **bad))
    assert TriggerPublisher.open(dataclasses.replace(settings, triggers="off")) is None


def test_omniscore_stream_triggers_publish_the_changes_of_consumed_events(world):
    """``stream_triggers`` (what ``omniscore stream --triggers`` wraps each fold with) loads
    the champions itself and publishes exactly the changes of the consumed batch."""
    settings, state, _, client = world
    customers = quiet_customers(world, 60)[45:60]
    events = [e for c in customers for e in activity(c, hours_ago=0.2, tag="cli")]
    for event in events:
        client.xadd(settings.stream_name, {"event": json.dumps(event)})
    before = scores_now(world, customers)
    start = client.xrevrange(settings.trigger_stream, count=1)
    start = "(" + start[0][0].decode() if start else "-"
    consumer = StreamConsumer(
        settings, state=state, consumer="cli", clock=CLOCK, client=client,
        around_fold=stream_triggers(settings, state, CLOCK), batch_size=1000, block_ms=0,
    )  # fmt: skip
    consumer.ensure_group()
    while consumer.poll(block=False):
        pass
    assert consumer.stats.accepted == len(events)
    expected = band_changes(before, scores_now(world, customers))
    published = read_changes(client, settings.trigger_stream, start)
    assert {(m["customer_id"], m["model"], m["old_band"], m["new_band"]) for m in published} == (
        expected
    )
    assert len(published) == len(expected)
