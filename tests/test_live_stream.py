"""``omniscore stream`` against real Redis (db 12): exactly-once effect despite SIGKILL.

Consumers run as real ``omniscore stream`` subprocesses on an embedded home (event store and
SQLite live state; the Feast online store is left out with ``--no-online``, the service tests
cover it). One consumer is killed with SIGKILL while it holds delivered, unacknowledged
messages; two more then run at once and drain the group. The event store and the live
state must then hold every distinct input event exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis

from data_layer.event_store import read_events
from data_layer.live_ingest import validate_records
from data_layer.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/12"
CLOCK = pd.Timestamp("2026-06-03T14:25:00Z")
CHANNELS = ("web", "app", "email", "store")
TYPES = {"web": "page_view", "app": "app_open", "email": "email_open", "store": "store_visit"}
OMNISCORE = str(Path(sys.executable).with_name("omniscore"))


@pytest.fixture
def client():
    connection = redis.Redis.from_url(REDIS_URL)
    try:
        connection.ping()
    except redis.ConnectionError:
        pytest.fail(f"these tests need Redis at {REDIS_URL}")
    yield connection
    connection.close()


@pytest.fixture
def stream(client):
    name = f"test:live:events:{uuid.uuid4().hex[:8]}"
    yield name
    client.delete(name)


def make_events(n: int, seed: int = 11) -> list[dict]:
    """``n`` distinct events of 40 customers over the 60 days before the clock."""
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        channel = CHANNELS[int(rng.integers(len(CHANNELS)))]
        at = CLOCK - pd.Timedelta(seconds=int(rng.integers(60, 60 * 86400)))
        events.append(
            {
                "customer_id": f"C{int(rng.integers(40)):03d}",
                "event_timestamp": at.isoformat().replace("+00:00", "Z"),
                "channel": channel,
                "event_type": TYPES[channel],
                "session_id": f"s{i}",
            }
        )
    return events


def consumer(home: Path, stream: str, name: str, *extra: str) -> subprocess.Popen:
    env = {
        **os.environ,
        "OMNISCORE_HOME": str(home),
        "OMNISCORE_STREAM_REDIS": REDIS_URL,
        "OMNISCORE_STREAM": stream,
        "OMNISCORE_CLOCK": CLOCK.isoformat(),
    }
    command = [OMNISCORE, "stream", "--consumer", name, "--batch-size", "50"]
    command += ["--block-ms", "200", "--claim-idle-ms", "1500", "--no-online", *extra]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow  # runs three `omniscore stream` consumers
def test_sigkill_mid_batch_then_two_consumers_give_exact_counts(tmp_path, client, stream):
    home = tmp_path / "home"
    events = make_events(1500)
    # Producers retry: a tenth of the messages are sent twice, some far apart.
    rng = np.random.default_rng(5)
    repeats = [events[int(i)] for i in rng.integers(0, len(events), size=150)]
    messages = events + repeats
    with client.pipeline(transaction=False) as pipe:
        for event in messages:
            pipe.xadd(stream, {"event": json.dumps(event)})
        pipe.execute()

    first = consumer(home, stream, "doomed")

    def mid_batch() -> bool:
        groups = client.xinfo_groups(stream) if client.exists(stream) else []
        if not groups:
            return False
        read = groups[0].get("entries-read") or 0
        return read >= 400 and groups[0]["pending"] > 0

    try:
        wait_until(mid_batch, 180, "the first consumer to hold an unacknowledged batch")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == -signal.SIGKILL
    # Killed holding messages it had read but not acknowledged.
    held = client.xpending(stream, "omniscore")
    assert held["pending"] > 0
    assert {c["name"] for c in held["consumers"]} == {b"doomed"}

    others = [consumer(home, stream, name, "--idle-exit", "3") for name in ("left", "right")]
    try:
        for process in others:
            output, _ = process.communicate(timeout=240)
            assert process.returncode == 0, output
    finally:
        for process in others:
            if process.poll() is None:
                process.kill()

    assert client.xpending(stream, "omniscore")["pending"] == 0
    settings = Settings.from_env(home)
    expected = validate_records(events, CLOCK, 300).events.to_pandas()
    stored = read_events(settings)
    assert stored["event_id"].is_unique
    assert sorted(stored["event_id"]) == sorted(expected["event_id"])

    from data_layer.live_state import LiveState

    state = LiveState.open(settings)
    try:
        customers = sorted(expected["customer_id"].unique())
        features = state.features(customers, CLOCK).set_index("customer_id")
    finally:
        state.close()
    counted = sum(features[f"{channel}_events_90d"] for channel in CHANNELS)
    truth = expected.groupby("customer_id").size()
    assert counted.astype(int).to_dict() == truth.to_dict()
