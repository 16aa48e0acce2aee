"""The live accept path without a server: validation, quarantine, exactly-once durable storage.

Every test uses a home under ``tmp_path`` and the real event store (Parquet files plus the
SQLite live segment); the concurrency test runs real processes.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_layer import live_segment
from data_layer.event_store import event_count, event_files, read_events, write_events
from data_layer.ingest import IngestMapping, normalise
from data_layer.live_ingest import (
    FUTURE_TIMESTAMP,
    INVALID_EVENT_ID,
    NOT_AN_OBJECT,
    accept_events,
    parse_clock,
    validate_records,
)
from data_layer.schema import EVENT_SCHEMA, compute_event_ids, to_canonical_table
from data_layer.settings import Settings
from data_layer.synthetic import generate

NOW = pd.Timestamp("2026-06-03T14:25:00Z")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(tmp_path / "home")


def event(customer: str = "C1", at: str = "2026-06-03T10:00:00Z", **extra) -> dict:
    return {
        "customer_id": customer,
        "event_timestamp": at,
        "channel": "web",
        "event_type": "page_view",
        **extra,
    }


def canonical(records: list[dict]):
    """Events as ``omniscore ingest`` writes them (content-hash ids)."""
    frame = pd.DataFrame(records).assign(amount=np.nan)
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    return to_canonical_table(frame)


def test_the_live_horizon_outlasts_the_features_look_back():
    # Checked here, not by an assert in the module: the server runs under python -O.
    from data_layer.feature_pipeline import HISTORY_NEEDED
    from data_layer.live_state import LIVE_HORIZON

    assert LIVE_HORIZON > HISTORY_NEEDED


def test_statuses_in_order_with_reasons_and_quarantine(settings):
    purchase = event("C1", "2026-06-03T11:00:00Z", event_type="purchase", amount=12.5)
    records = [
        event("C1"),
        purchase,
        event("C1"),  # same content, same id: a duplicate of the first
        event("C2", "2026-06-03T14:31:00Z"),  # 6 minutes after the clock
        event("C2", "2026-06-03T14:29:00Z"),  # 4 minutes after: within the tolerance
        event("C2", channel="fax"),
        event("C2", colour="red"),
        {**event("C3"), "event_id": ""},
        event("C3", event_type="purchase"),  # no amount
        "not an event",
        event(42, "2026-06-03T09:00:00", channel=" App ", event_id="given-1"),
    ]
    report = accept_events(settings, records, NOW)
    statuses = [r.status for r in report.results]
    assert statuses == [
        "accepted",
        "accepted",
        "duplicate",
        "rejected",
        "accepted",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "rejected",
        "accepted",
    ]
    reasons = [r.reason for r in report.results]
    assert reasons[3] == FUTURE_TIMESTAMP.format(
        value="2026-06-03T14:31:00+00:00", seconds=300, now=NOW.isoformat()
    )
    assert reasons[5] == "unknown channel: fax"
    assert reasons[6] == "unknown field(s): colour"
    assert reasons[7] == INVALID_EVENT_ID
    assert reasons[8] == "missing amount on purchase"
    assert reasons[9] == NOT_AN_OBJECT
    assert report.results[0].event_id == report.results[2].event_id
    assert report.results[10].event_id == "given-1"
    assert (report.accepted, report.duplicates, report.rejected) == (4, 1, 6)

    stored = read_events(settings).set_index("event_id")
    assert sorted(stored.index) == sorted(
        r.event_id for r in report.results if r.status == "accepted"
    )
    given = stored.loc["given-1"]  # normalised like ingest: id text, naive time as UTC
    assert given["customer_id"] == "42" and given["channel"] == "app"
    assert given["event_timestamp"] == pd.Timestamp("2026-06-03T09:00:00Z")

    quarantine = pq.read_table(report.quarantine_path).to_pandas()
    assert quarantine["source_row"].tolist() == [4, 6, 7, 8, 9, 10]
    assert quarantine["reason"].tolist() == [r for r in reasons if r is not None]
    assert quarantine.loc[1, "channel"] == "fax"  # the original value, as text
    assert quarantine.loc[2, "colour"] == "red"
    assert (quarantine["received_at"] == NOW).all()


def test_a_redelivered_batch_is_all_duplicates_and_stores_nothing(settings):
    records = [event("C1", f"2026-06-0{d}T10:00:00Z") for d in range(1, 4)]
    first = accept_events(settings, records, NOW)
    again = accept_events(settings, records, NOW)
    assert [r.status for r in first.results] == ["accepted"] * 3
    assert [r.status for r in again.results] == ["duplicate"] * 3
    assert [r.event_id for r in again.results] == [r.event_id for r in first.results]
    assert event_count(settings) == 3


def test_live_events_and_batch_files_deduplicate_against_each_other(settings):
    batch = canonical([event("C1"), event("C2")])
    write_events(settings, batch)  # what `omniscore ingest` or `generate` write
    report = accept_events(settings, [event("C2"), event("C3")], NOW)
    assert [r.status for r in report.results] == ["duplicate", "accepted"]
    # The other way round: an ingested file repeating a live event adds nothing.
    result = write_events(settings, canonical([event("C3"), event("C4")]))
    assert (result.written, result.duplicates) == (1, 1)
    ids = read_events(settings)["event_id"]
    assert ids.is_unique and len(ids) == 4


def test_listing_the_store_seals_the_live_segment_into_parquet(settings):
    accept_events(settings, [event("C1"), event("C2")], NOW)
    assert live_segment.pending_count(settings) == 2
    files = event_files(settings)
    assert live_segment.pending_count(settings) == 0
    assert [f.name.startswith("live-") for f in files] == [True]
    table = pq.read_table(files[0])
    assert table.schema == EVENT_SCHEMA and table.num_rows == 2
    # Sealed events stay known: a redelivery is still a duplicate.
    again = accept_events(settings, [event("C1")], NOW)
    assert again.results[0].status == "duplicate"


def test_a_seal_interrupted_after_its_rename_is_finished_by_the_next_writer(settings):
    accept_events(settings, [event("C1"), event("C2")], NOW)
    # What a process killed between the rename and the bookkeeping leaves behind: the sealed
    # file in place while its rows are still in the segment.
    conn = live_segment._connect(settings)
    first, last = conn.execute("SELECT min(seq), max(seq) FROM pending").fetchone()
    pending = pd.read_sql_query("SELECT * FROM pending", conn)
    frame = pending.drop(columns=["seq"])
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], unit="us", utc=True)
    orphan = settings.events_dir / f"live-{first:012d}-{last:012d}.parquet"
    pq.write_table(to_canonical_table(frame), orphan)
    report = accept_events(settings, [event("C2"), event("C3")], NOW)
    assert [r.status for r in report.results] == ["duplicate", "accepted"]
    stored = read_events(settings)
    assert len(stored) == 3 and stored["event_id"].is_unique


def test_the_fast_path_gives_what_ingest_gives(settings):
    """Generated events as JSON records: the pandas-free path and ``normalise`` agree."""
    world = generate(40, 30, seed=3).events.to_pandas().head(3000)
    records = []
    for row in world.to_dict("records"):
        record = {
            "customer_id": row["customer_id"],
            "event_timestamp": row["event_timestamp"].isoformat(),
            "channel": row["channel"],
            "event_type": row["event_type"],
        }
        for name in ("amount", "rating", "session_id", "device", "campaign_id"):
            value = row[name]
            if value is not None and not (isinstance(value, float) and np.isnan(value)):
                record[name] = value
        records.append(record)
    after = world["event_timestamp"].max() + pd.Timedelta(days=1)
    fast = validate_records(records, after, 300)
    assert all(r is None for r in fast.reasons)
    frame = pd.DataFrame.from_records(records).astype(object)
    accepted, quarantined = normalise(frame, IngestMapping(), "reference")
    assert quarantined.empty
    reference = to_canonical_table(accepted)
    assert fast.events.equals(reference)
    # And both give the generator's own event ids: content hashes of the same values.
    assert fast.events.column("event_id").to_pylist() == world["event_id"].tolist()
    assert list(compute_event_ids(accepted)) == world["event_id"].tolist()


def test_odd_json_values_are_rejected_with_reasons_never_raised():
    records = [
        {"customer_id": ["a"], "event_timestamp": {"x": 1}, "channel": ["web"], "event_type": {}},
        {**event("C1"), "event_id": 5},
        {**event("C1"), "family": ["behavioral"]},
        {},
        event("C1", "0001-01-01T00:00:00Z"),  # outside the nanosecond range pandas holds
        event("C1", "9999-12-31T23:59:59.999999Z"),
        {**event("C1"), "rating": True},
        {**event("C1"), "amount": "twelve"},
    ]
    batch = validate_records(records, NOW, 300)
    assert batch.events.num_rows == 0
    assert batch.reasons == [
        "unparseable event_timestamp",
        INVALID_EVENT_ID,
        "family ['behavioral'] does not match event_type page_view (behavioral)",
        "missing customer_id",
        "unparseable event_timestamp",
        "unparseable event_timestamp",
        "rating out of range (1-5)",
        "non-numeric amount: twelve",
    ]
    assert batch.quarantine["source_row"].tolist() == list(range(1, 9))


def test_a_batch_whose_slow_records_are_all_empty_is_rejected_not_raised():
    """`{"events": [{}]}` answered 500: every record without keys gave a frame of no rows."""
    only_empty = validate_records([{}], NOW, 300)
    assert only_empty.events.num_rows == 0
    assert only_empty.reasons == ["missing customer_id"]

    mixed = validate_records([{}, event("C1"), {}], NOW, 300)
    assert mixed.events.num_rows == 1
    assert mixed.reasons == ["missing customer_id", None, "missing customer_id"]


def test_the_clock_setting_parses_iso_instants():
    assert parse_clock("2026-06-03T14:25:00Z") == NOW
    assert parse_clock("2026-06-03T16:25:00+02:00") == NOW
    assert parse_clock("2026-06-03T14:25:00") == NOW  # naive means UTC
    assert parse_clock("") is None and parse_clock(None) is None
    with pytest.raises(ValueError, match="OMNISCORE_CLOCK"):
        parse_clock("next tuesday")


WORKERS, BATCHES = 3, 10


def _post_from_process(home: str, seed: int, queue) -> None:
    settings = Settings.from_env(home)
    rng = np.random.default_rng(seed)
    counts = {"accepted": 0, "duplicate": 0}
    for _ in range(BATCHES):
        picks = rng.choice(400, size=40, replace=False)
        records = [
            event(f"C{k % 37}", f"2026-05-{1 + k % 28:02d}T10:{k % 60:02d}:00Z") for k in picks
        ]
        for result in accept_events(settings, records, NOW).results:
            counts[result.status] += 1
    queue.put(counts)


def test_concurrent_processes_store_each_event_exactly_once(settings):
    # fork: the children start at once with everything imported (spawn re-imports pandas,
    # pyarrow and DuckDB in each, which dominates this test on two cores).
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    workers = [
        context.Process(target=_post_from_process, args=(str(settings.home), seed, queue))
        for seed in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    counts = [queue.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    distinct = {
        (f"C{k % 37}", f"2026-05-{1 + k % 28:02d}T10:{k % 60:02d}:00Z")
        for seed in range(WORKERS)
        for k in _picks(seed)
    }
    stored = read_events(settings)
    assert stored["event_id"].is_unique
    assert len(stored) == len(distinct) == sum(c["accepted"] for c in counts)
    assert sum(c["accepted"] + c["duplicate"] for c in counts) == WORKERS * BATCHES * 40


def _picks(seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return [int(k) for _ in range(BATCHES) for k in rng.choice(400, size=40, replace=False)]
