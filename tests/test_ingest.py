"""Bring-your-own events: mapping, validation, quarantine and idempotent loading.

Every test writes a small hand-made file under ``tmp_path`` and ingests it into a home there,
through the real Parquet event store.
"""

from __future__ import annotations

import dataclasses
import json
import re
import textwrap
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_layer.event_store import (
    ID_MARKER,
    LAYOUT_MARKER,
    event_count,
    event_files,
    event_ids_current,
    migrate_event_ids,
    read_customers,
    read_events,
)
from data_layer.ingest import (
    NOTE_IDENTICAL_LINES,
    NOTE_NO_AMOUNTS,
    REASON_ORDER,
    IngestMapping,
    detect_format,
    ingest_file,
    load_mapping,
    normalise,
)
from data_layer.schema import (
    CHANNELS,
    EVENT_SCHEMA,
    EVENT_TYPES,
    compute_event_ids,
    to_canonical_table,
)
from data_layer.settings import Settings

HEADER = "customer_id,event_timestamp,channel,event_type,amount,currency,rating"


def write_text(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def stored(settings: Settings) -> pd.DataFrame:
    return read_events(settings).sort_values(["customer_id", "event_timestamp"], ignore_index=True)


def quarantine_of(report) -> pd.DataFrame:
    assert report.quarantine_path is not None
    return pq.read_table(report.quarantine_path).to_pandas()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(tmp_path / "home")


# --- bad rows -----------------------------------------------------------------------------
BAD_ROWS_CSV = f"""
{HEADER}
c1,2025-01-10T10:00:00Z,web,page_view,,,
,2025-01-10T10:00:00Z,web,page_view,,,
c3,,web,page_view,,,
c4,yesterday,web,page_view,,,
c5,2024-10-27T02:30:00,web,page_view,,,
c6,2024-03-31T02:30:00,web,page_view,,,
c7,2025-01-10T10:00:00Z,,page_view,,,
c8,2025-01-10T10:00:00Z,fax,page_view,,,
c9,2025-01-10T10:00:00Z,web,,,,
c10,2025-01-10T10:00:00Z,web,teleport,,,
c11,2025-01-10T10:00:00Z,web,purchase,"12,50",EUR,
c12,2025-01-10T10:00:00Z,web,purchase,12.5,,
c13,2025-01-10T10:00:00Z,web,purchase,12.5,JPY,
c14,2025-01-10T10:00:00Z,store,purchase,,,
c15,2025-01-10T10:00:00Z,store,purchase,-5,USD,
c16,2025-01-10T10:00:00Z,web,review,,,7
c17,2025-01-10T10:00:00Z,web,review,,,great
NULL,not a time,fax,teleport,abc,XXX,9
c19,2025-01-10T11:00:00+01:00,store,purchase,40,EUR,
c20,2025-01-10T10:00:00,app,review,,,4
"""
EXPECTED_REASONS = {
    2: "missing customer_id",
    3: "missing event_timestamp",
    4: "unparseable event_timestamp",
    5: "ambiguous local event_timestamp (DST fall-back)",
    6: "nonexistent local event_timestamp (DST spring-forward gap)",
    7: "missing channel",
    8: "unknown channel: fax",
    9: "missing event_type",
    10: "unknown event_type: teleport",
    11: "non-numeric amount: 12,50",
    12: "missing currency",
    13: "unknown currency: JPY",
    14: "missing amount on purchase",
    15: "negative purchase amount",
    16: "rating out of range (1-5)",
    17: "rating out of range (1-5)",
    18: "missing customer_id",  # several problems: the first in REASON_ORDER wins
}


def test_each_bad_row_is_quarantined_with_its_reason_values_and_row_number(settings, tmp_path):
    path = write_text(tmp_path / "shop.csv", BAD_ROWS_CSV)
    mapping = IngestMapping(
        timezone="Europe/Paris",
        currency_column="currency",
        currency_rates={"EUR": 1.25},
        base_currency="USD",
    )
    report = ingest_file(settings, path, mapping)

    assert report.rows_read == 20
    assert report.quarantined == len(EXPECTED_REASONS)
    assert report.accepted == 3 and report.duplicates == 0
    assert report.rows_read == report.accepted + report.duplicates + report.quarantined

    quarantine = quarantine_of(report)
    assert list(quarantine.columns[:3]) == ["source_file", "source_row", "reason"]
    assert set(quarantine["source_file"]) == {"shop.csv"}
    assert dict(zip(quarantine["source_row"], quarantine["reason"], strict=True)) == (
        EXPECTED_REASONS
    )
    assert report.reasons == pd.Series(EXPECTED_REASONS).value_counts().to_dict()
    # Every reason of the documented list that this file exercises is a documented one.
    documented = {r.split("{")[0] for r in REASON_ORDER}
    assert all(any(r.startswith(d) for d in documented) for r in EXPECTED_REASONS.values())

    # Original values, as strings, exactly as written in the file.
    assert all(str(t) == "string" for t in quarantine.dtypes[quarantine.columns != "source_row"])
    by_row = quarantine.set_index("source_row")
    assert by_row.loc[11, "amount"] == "12,50"
    assert by_row.loc[17, "rating"] == "great"
    assert by_row.loc[18].drop("reason").to_dict() == {
        "source_file": "shop.csv",
        "customer_id": "NULL",
        "event_timestamp": "not a time",
        "channel": "fax",
        "event_type": "teleport",
        "amount": "abc",
        "currency": "XXX",
        "rating": "9",
    }
    assert pd.isna(by_row.loc[2, "customer_id"])  # an empty field stays empty (null)

    events = stored(settings)
    assert list(events["customer_id"]) == ["c1", "c19", "c20"]
    c19 = events.set_index("customer_id").loc["c19"]
    assert c19["amount"] == pytest.approx(50.0)  # 40 EUR at 1.25 USD per EUR
    assert c19["event_timestamp"] == pd.Timestamp("2025-01-10T10:00:00Z")
    assert c19["family"] == "transactional"
    c20 = events.set_index("customer_id").loc["c20"]
    assert c20["event_timestamp"] == pd.Timestamp("2025-01-10T09:00:00Z")  # Paris, winter
    assert c20["rating"] == 4.0


def test_reingest_adds_nothing_and_counts_add_up(settings, tmp_path):
    path = write_text(
        tmp_path / "log.csv",
        """
        customer_id,event_timestamp,channel,event_type,amount
        a,2025-02-01T09:00:00Z,web,page_view,
        a,2025-02-01T09:00:00Z,web,page_view,
        a,2025-02-01T09:05:00Z,web,purchase,19.99
        b,2025-02-02T12:00:00Z,email,email_open,
        b,2025-02-02T12:00:00Z,pigeon,email_open,
        """,
    )
    first = ingest_file(settings, path, IngestMapping())
    # The repeated page view is a second page view: two identical lines are two events.
    assert (first.rows_read, first.accepted, first.duplicates, first.quarantined) == (5, 4, 0, 1)
    assert first.valid == 4
    assert event_count(settings) == 4
    assert first.notes == {NOTE_IDENTICAL_LINES: 1}

    second = ingest_file(settings, path, IngestMapping())
    assert second.accepted == 0
    assert second.duplicates == first.accepted + first.duplicates
    assert second.quarantined == first.quarantined
    assert second.rows_read == second.accepted + second.duplicates + second.quarantined
    assert event_count(settings) == 4
    assert second.quarantine_path == first.quarantine_path  # overwritten, not piled up
    assert len(list(settings.quarantine_dir.glob("*.parquet"))) == 1

    ids = read_events(settings)["event_id"]
    assert ids.is_unique and ids.str.fullmatch(r"[0-9a-f]{32}").all()


def test_quarantine_names_column_collisions_and_empty_file(settings, tmp_path):
    path = write_text(
        tmp_path / "r.csv",
        """
        customer_id,event_timestamp,channel,event_type,reason
        ,2025-02-01T09:00:00Z,web,page_view,my own column
        """,
    )
    report = ingest_file(settings, path, IngestMapping())
    quarantine = quarantine_of(report)
    assert quarantine.loc[0, "reason"] == "missing customer_id"
    assert quarantine.loc[0, "original_reason"] == "my own column"

    empty = write_text(tmp_path / "empty.csv", "customer_id,event_timestamp,channel,event_type\n")
    report = ingest_file(settings, empty, IngestMapping())
    assert (report.rows_read, report.accepted, report.quarantined) == (0, 0, 0)
    assert report.quarantine_path is None


# --- ids ------------------------------------------------------------------------------------
def test_string_and_integer_ids_from_csv_parquet_and_jsonl(settings, tmp_path):
    csv = write_text(
        tmp_path / "ids.csv",
        """
        customer_id,event_timestamp,channel,event_type
        00123,2025-03-01T10:00:00Z,web,page_view
        ,2025-03-01T10:01:00Z,web,page_view
        123.0,2025-03-01T10:02:00Z,web,page_view
         42 ,2025-03-01T10:03:00Z,web,page_view
        """,
    )
    report = ingest_file(settings, csv, IngestMapping())
    assert report.accepted == 3 and report.reasons == {"missing customer_id": 1}
    assert quarantine_of(report)["source_row"].tolist() == [2]

    # Parquet: an integer id column and a float id column with a gap (how pandas stores ints
    # with missing values) both become plain decimal strings.
    parquet = tmp_path / "ids.parquet"
    pq.write_table(
        pa.table(
            {
                "customer_id": pa.array([7, 8, 9], pa.int64()),
                "event_timestamp": ["2025-03-02T10:00:00Z"] * 3,
                "channel": ["app"] * 3,
                "event_type": ["app_open"] * 3,
                "campaign_id": pa.array([501.0, None, 502.0], pa.float64()),
            }
        ),
        parquet,
    )
    assert ingest_file(settings, parquet, IngestMapping()).accepted == 3

    jsonl = tmp_path / "ids.jsonl"
    rows = [
        {"customer_id": 555, "event_timestamp": "2025-03-03T10:00:00Z", "channel": "sms"},
        {"customer_id": "0555", "event_timestamp": "2025-03-03T10:00:00Z", "channel": "sms"},
        {"event_timestamp": "2025-03-03T10:00:00Z", "channel": "sms"},
    ]
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = ingest_file(settings, jsonl, IngestMapping(default_event_type="sms_click"))
    assert report.accepted == 2
    assert quarantine_of(report)[["source_row", "reason"]].values.tolist() == [
        [3, "missing customer_id"]
    ]

    events = stored(settings)
    assert sorted(events["customer_id"]) == sorted(
        ["00123", "123", "42", "7", "8", "9", "555", "0555"]
    )
    campaigns = events.set_index("customer_id")["campaign_id"]
    assert campaigns["7"] == "501" and campaigns["9"] == "502" and pd.isna(campaigns["8"])


# --- timestamps -------------------------------------------------------------------------------
def test_timestamps_offsets_declared_zone_and_epochs(settings, tmp_path):
    iso = pd.DataFrame(
        {
            "customer_id": ["w", "s", "o", "z", "d"],
            "event_timestamp": [
                "2025-01-15 12:00:00",  # Paris winter: UTC+1
                "2025-07-15T12:00:00",  # Paris summer: UTC+2
                "2025-07-15T12:00:00-04:00",  # an offset wins over the declared zone
                "2025-07-15T12:00:00Z",
                "2025-07-15",  # a date alone is local midnight
            ],
            "channel": "web",
            "event_type": "page_view",
        }
    )
    accepted, quarantined = normalise(iso, IngestMapping(timezone="Europe/Paris"), "iso")
    assert quarantined.empty
    assert dict(zip(accepted["customer_id"], accepted["event_timestamp"], strict=True)) == {
        "w": pd.Timestamp("2025-01-15T11:00:00Z"),
        "s": pd.Timestamp("2025-07-15T10:00:00Z"),
        "o": pd.Timestamp("2025-07-15T16:00:00Z"),
        "z": pd.Timestamp("2025-07-15T12:00:00Z"),
        "d": pd.Timestamp("2025-07-14T22:00:00Z"),
    }
    assert str(accepted["event_timestamp"].dtype) == "datetime64[ns, UTC]"

    epochs = iso.assign(event_timestamp=["1736942400", "1736942400.25", "", "x", "1e30"])
    accepted, quarantined = normalise(epochs, IngestMapping(timestamp_format="epoch_s"), "e")
    assert accepted["event_timestamp"].tolist() == [
        pd.Timestamp("2025-01-15T12:00:00Z"),
        pd.Timestamp("2025-01-15T12:00:00.250Z"),
    ]
    assert quarantined["reason"].tolist() == [
        "missing event_timestamp",
        "unparseable event_timestamp",
        "unparseable event_timestamp",
    ]

    millis = iso.assign(event_timestamp=[1736942400123] * 5)
    accepted, _ = normalise(millis, IngestMapping(timestamp_format="epoch_ms"), "ms")
    assert set(accepted["event_timestamp"]) == {pd.Timestamp("2025-01-15T12:00:00.123Z")}

    custom = iso.assign(event_timestamp=["15/01/2025 12:00"] * 5)
    mapping = IngestMapping(timestamp_format="%d/%m/%Y %H:%M", timezone="America/New_York")
    accepted, _ = normalise(custom, mapping, "custom")
    assert set(accepted["event_timestamp"]) == {pd.Timestamp("2025-01-15T17:00:00Z")}

    with pytest.raises(ValueError, match="timestamp_format"):
        normalise(millis, IngestMapping(), "ms")


def test_typed_parquet_timestamps_naive_and_aware(settings, tmp_path):
    path = tmp_path / "typed.parquet"
    naive = pd.to_datetime(["2025-01-15 12:00:00", "2025-07-15 12:00:00"])
    pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "event_timestamp": naive,
            "channel": "store",
            "event_type": "store_visit",
        }
    ).to_parquet(path)
    ingest_file(settings, path, IngestMapping(timezone="Europe/Paris"))
    aware = tmp_path / "aware.parquet"
    pd.DataFrame(
        {
            "customer_id": ["c"],
            "event_timestamp": pd.to_datetime(["2025-07-15 12:00:00"]).tz_localize("Asia/Tokyo"),
            "channel": "store",
            "event_type": "store_visit",
        }
    ).to_parquet(aware)
    ingest_file(settings, aware, IngestMapping(timezone="Europe/Paris"))
    times = stored(settings).set_index("customer_id")["event_timestamp"]
    assert times["a"] == pd.Timestamp("2025-01-15T11:00:00Z")
    assert times["b"] == pd.Timestamp("2025-07-15T10:00:00Z")
    assert times["c"] == pd.Timestamp("2025-07-15T03:00:00Z")


# --- mappings ---------------------------------------------------------------------------------
MAPPING_YAML = """
columns:
  user: customer_id
  ts: event_timestamp
  platform: channel
  event: event_type
  value: amount
  sess: session_id
values:
  channel:
    mobile: app
    website: web
  event_type:
    payment_done: purchase
    viewed: page_view
timezone: Europe/Paris
unknown_to_other: true
"""


def test_mapping_from_yaml_renames_recodes_and_maps_unknown_to_other(settings, tmp_path):
    mapping = IngestMapping.from_yaml(write_text(tmp_path / "mapping.yaml", MAPPING_YAML))
    assert mapping.columns["platform"] == "channel"
    path = tmp_path / "foreign.jsonl"
    rows = [
        {"user": 1, "ts": "2025-05-01T10:00:00", "platform": "mobile", "event": "payment_done",
         "value": 30.5, "sess": "s1"},
        {"user": 1, "ts": "2025-05-01T09:58:00", "platform": "Website", "event": "viewed",
         "sess": "s1"},
        {"user": 2, "ts": "2025-05-02T10:00:00", "platform": "web", "event": "wishlist_add"},
        {"user": 3, "ts": "2025-05-02T10:00:00", "platform": "kiosk", "event": "viewed"},
    ]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = ingest_file(settings, path, mapping)
    assert (report.accepted, report.quarantined) == (3, 1)
    assert report.reasons == {"unknown channel: kiosk": 1}
    assert report.notes == {"event_type mapped to other: wishlist_add": 1}

    events = stored(settings)
    columns = ["customer_id", "channel", "event_type", "session_id"]
    assert events[columns].astype(object).where(events[columns].notna(), None).values.tolist() == [
        ["1", "web", "page_view", "s1"],
        ["1", "app", "purchase", "s1"],
        ["2", "web", "other", None],
    ]
    assert events["amount"].tolist()[1] == 30.5
    assert events["amount"].isna().tolist() == [True, False, True]
    assert events.loc[1, "event_timestamp"] == pd.Timestamp("2025-05-01T08:00:00Z")
    assert events.loc[2, "family"] == "contextual"

    # Without unknown_to_other the unknown type is quarantined instead.
    strict = mapping.with_overrides(unknown_to_other=False, timezone=None)
    assert strict.timezone == "Europe/Paris"  # None options leave the file's value
    _, quarantined = normalise(pd.read_json(path, lines=True, dtype=False), strict, "f")
    assert "unknown event_type: wishlist_add" in set(quarantined["reason"])


def test_mapping_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown mapping key"):
        IngestMapping.from_dict({"colums": {}})
    with pytest.raises(ValueError, match="'mobile' → 'phone' is not in the channel vocabulary"):
        IngestMapping.from_dict({"values": {"channel": {"mobile": "phone"}}})
    with pytest.raises(ValueError, match="not a canonical column"):
        IngestMapping.from_dict({"columns": {"user": "client"}})
    with pytest.raises(ValueError, match="IANA"):
        load_mapping(None, timezone="Mars/Olympus")
    assert load_mapping(None, default_channel="store").default_channel == "store"
    assert detect_format("x.CSV.gz") == "csv" and detect_format("x.ndjson") == "jsonl"
    with pytest.raises(ValueError, match="cannot tell the format"):
        detect_format("events.xlsx")


def test_configurable_channel_vocabulary(settings, tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b"],
            "event_timestamp": ["2025-01-01T00:00:00Z"] * 2,
            "channel": ["kiosk", "web"],
            "event_type": ["store_visit", "page_view"],
        }
    )
    accepted, quarantined = normalise(frame, IngestMapping(channels=["kiosk"]), "k")
    assert accepted["channel"].tolist() == ["kiosk"]
    assert quarantined["reason"].tolist() == ["unknown channel: web"]


# --- defaults: purchase-only and single-channel logs ------------------------------------------
def test_purchase_only_and_single_channel_logs(settings, tmp_path):
    orders = write_text(
        tmp_path / "orders.csv",
        """
        client,ordered_at,total,refunded
        9001,2025-04-01 18:30:00,59.90,no
        9002,2025-04-02 09:00:00,-5,no
        9003,2025-04-03 10:00:00,,no
        """,
    )
    mapping = IngestMapping(
        columns={"client": "customer_id", "ordered_at": "event_timestamp", "total": "amount"},
        default_channel="store",
        default_event_type="purchase",
    )
    report = ingest_file(settings, orders, mapping)
    assert report.accepted == 1
    assert report.reasons == {"negative purchase amount": 1, "missing amount on purchase": 1}
    row = stored(settings).iloc[0]
    assert (row["customer_id"], row["channel"], row["event_type"], row["amount"]) == (
        "9001",
        "store",
        "purchase",
        59.90,
    )

    app_log = write_text(
        tmp_path / "app.csv",
        """
        customer_id,event_timestamp,event_type,device,amount
        u1,2025-04-05T08:00:00Z,app_open,iPhone,
        u1,2025-04-05T08:03:00Z,add_to_cart,iPhone,
        u1,2025-04-05T08:04:00Z,return,iPhone,-12.5
        """,
    )
    report = ingest_file(settings, app_log, IngestMapping(default_channel="app"))
    assert report.accepted == 3 and report.quarantined == 0
    assert report.notes == {"negative return amount stored as a positive refund": 1}
    app = stored(settings).query("customer_id == 'u1'")
    assert set(app["channel"]) == {"app"} and set(app["device"]) == {"iPhone"}
    assert app.set_index("event_type").loc["return", "amount"] == 12.5


def test_currency_conversion(settings, tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": ["a", "b", "c", "d", "e"],
            "event_timestamp": ["2025-01-01T00:00:00Z"] * 5,
            "channel": "web",
            "event_type": ["purchase", "purchase", "purchase", "page_view", "purchase"],
            "amount": ["100", "100", "100", None, "100"],
            "cur": ["eur", "GBP", "EUR ", None, "CHF"],
        }
    )
    mapping = IngestMapping(
        currency_column="cur", currency_rates={"USD": 0.9, "GBP": 1.2}, base_currency="EUR"
    )
    accepted, quarantined = normalise(frame, mapping, "fx")
    amounts = accepted.set_index("customer_id")["amount"]
    assert amounts["a"] == 100.0 and amounts["b"] == pytest.approx(120.0)
    assert amounts["c"] == 100.0 and pd.isna(amounts["d"])
    assert quarantined[["source_row", "reason", "cur"]].values.tolist() == [
        [5, "unknown currency: CHF", "CHF"]
    ]


# --- losing nothing: identical lines, zero amounts, source ids, logs without revenue --------
REPEATS_CSV = """
customer_id,event_timestamp,channel,event_type,amount
r1,2025-03-01T10:00:00Z,store,purchase,4.50
r1,2025-03-01T10:00:00Z,store,purchase,4.50
r1,2025-03-01T10:00:00Z,store,purchase,4.50
r1,2025-03-01T10:00:00Z,store,purchase,0
r2,2025-03-02T10:00:00Z,store,purchase,-0
"""


def test_identical_lines_are_distinct_events_and_reingest_adds_nothing(settings, tmp_path):
    path = write_text(tmp_path / "till.csv", REPEATS_CSV)
    first = ingest_file(settings, path, IngestMapping())
    # Three identical purchases are three purchases; $0 orders are real orders (and -0 is 0).
    assert (first.rows_read, first.accepted, first.duplicates, first.quarantined) == (5, 5, 0, 0)
    assert first.notes == {NOTE_IDENTICAL_LINES: 2}
    events = stored(settings)
    assert events["amount"].tolist() == [4.5, 4.5, 4.5, 0.0, 0.0]
    assert str(events["amount"].iloc[4]) == "0.0"
    # The first of identical lines has the plain content id; the k-th repeat its own id.
    plain = compute_event_ids(events.iloc[:1])[0]
    assert plain in set(events["event_id"]) and events["event_id"].is_unique
    assert events["event_id"].str.fullmatch(r"[0-9a-f]{32}").all()

    # The same file again, and a file holding the same lines in another order: nothing new,
    # and every duplicate is a re-ingested row.
    again = ingest_file(settings, path, IngestMapping())
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 5, 0)
    shuffled = write_text(
        tmp_path / "till2.csv",
        "\n".join([REPEATS_CSV.strip().splitlines()[i] for i in (0, 4, 2, 1, 5, 3)]),
    )
    assert ingest_file(settings, shuffled, IngestMapping()).duplicates == 5
    assert event_count(settings) == 5

    # A fourth identical line in a later export is the one new purchase.
    grown = write_text(
        tmp_path / "till3.csv",
        REPEATS_CSV + "r1,2025-03-01T10:00:00Z,store,purchase,4.50\n",
    )
    report = ingest_file(settings, grown, IngestMapping())
    assert (report.accepted, report.duplicates) == (1, 5)
    assert (stored(settings)["amount"] == 4.5).sum() == 4


def test_an_export_of_the_generated_sparse_log_ingests_to_the_same_events(settings, tmp_path):
    from data_layer.synthetic import generate, write_generated

    world = generate(400, 730, seed=21, profile="sparse-retail")
    write_generated(settings, world)
    export = world.events.to_pandas()[
        ["customer_id", "event_timestamp", "channel", "event_type", "amount"]
    ].sample(frac=1, random_state=1)  # in any line order
    assert export.duplicated().sum() > 0 and (export["amount"] == 0).any()
    path = tmp_path / "export.csv"
    export.to_csv(path, index=False)
    report = ingest_file(settings, path, IngestMapping())
    # Identical lines and $0 orders included, every line is an event the generator stored.
    assert (report.accepted, report.duplicates, report.quarantined) == (0, len(export), 0)
    assert report.notes[NOTE_IDENTICAL_LINES] == export.duplicated().sum()


def test_a_source_event_id_column_is_honoured(settings, tmp_path):
    path = write_text(
        tmp_path / "orders.csv",
        """
        line_id,customer_id,event_timestamp,amount
        L1,s1,2025-03-01T10:00:00Z,10
        L2,s1,2025-03-01T10:00:00Z,10
        L1,s1,2025-03-01T10:00:00Z,10
        L3,s2,2025-03-01T11:00:00Z,5
        L3,s2,2025-03-01T11:00:00Z,6
        ,s2,2025-03-01T12:00:00Z,7
        """,
    )
    mapping = IngestMapping(
        event_id_column="line_id", default_channel="web", default_event_type="purchase"
    )
    report = ingest_file(settings, path, mapping)
    # L1 twice is one order sent twice; L1 and L2 with equal content are two orders; L3
    # repeated with another amount cannot be both: the later one is quarantined, not dropped.
    assert (report.rows_read, report.accepted, report.duplicates, report.quarantined) == (
        6,
        3,
        1,
        2,
    )
    assert report.reasons == {
        "event_id L3 repeated with different content": 1,
        "missing event_id": 1,
    }
    assert sorted(stored(settings)["amount"]) == [5.0, 10.0, 10.0]
    again = ingest_file(settings, path, mapping)
    assert (again.accepted, again.duplicates) == (0, 4)
    with pytest.raises(ValueError, match="missing required column: order_no"):
        ingest_file(settings, path, dataclasses.replace(mapping, event_id_column="order_no"))


def test_a_log_without_amounts_is_accepted_when_the_mapping_says_so(settings, tmp_path):
    path = write_text(
        tmp_path / "clicks.csv",
        """
        customer_id,event_timestamp,channel,event_type
        k1,2025-03-01T10:00:00Z,web,product_view
        k1,2025-03-01T10:05:00Z,web,purchase
        k2,2025-03-01T11:00:00Z,app,purchase
        """,
    )
    with pytest.raises(ValueError, match="amounts: none"):
        ingest_file(settings, path, IngestMapping())
    mapping = IngestMapping.from_dict({"amounts": "none"})
    assert IngestMapping.from_dict({"amounts": None}).amounts == "none"
    report = ingest_file(settings, path, mapping)
    assert (report.accepted, report.quarantined) == (3, 0)
    assert report.notes == {NOTE_NO_AMOUNTS: 2}
    assert stored(settings)["amount"].isna().all()
    with pytest.raises(ValueError, match="amounts 'some' must be one of"):
        IngestMapping(amounts="some").validate()
    # The same from the command line, into another home.
    from typer.testing import CliRunner

    from omniscore.cli import app

    home = str(tmp_path / "cli-home")
    result = CliRunner().invoke(app, ["ingest", str(path), "--amounts", "none", "--home", home])
    assert result.exit_code == 0, result.output
    assert "3 rows read → 3 accepted" in result.output

    # Revenue features are missing, not zero; counts still count.
    from data_layer.feature_pipeline import compute_snapshots

    snaps = compute_snapshots(read_events(settings), read_customers(settings), ["2025-03-02"])
    snaps = snaps.set_index("customer_id")
    assert snaps.loc["k1", "purchases_90d"] == 1 and snaps.loc["k2", "purchases_90d"] == 1
    for name in ("revenue_90d", "avg_order_value_90d", "revenue_lifetime", "revenue_trend_30d"):
        assert snaps[name].isna().all(), name
    # Per channel: unknown where the customer bought, a known 0 where they did not.
    assert pd.isna(snaps.loc["k1", "web_revenue_90d"]) and snaps.loc["k2", "web_revenue_90d"] == 0
    assert pd.isna(snaps.loc["k2", "app_revenue_90d"]) and snaps.loc["k1", "app_revenue_90d"] == 0


def make_legacy_store(settings: Settings, path: Path, client_id: str | None = None) -> set[str]:
    """Ingest ``path``, then rewrite the store as the code before issue 12 left it (16-digit
    ids, no marker file); ``client_id`` replaces the last id, as a live client's own id would.
    Returns the 128-bit ids ingest gave."""
    ingest_file(settings, path, IngestMapping())
    new_ids = set(read_events(settings)["event_id"])
    table = pq.ParquetDataset(event_files(settings), partitioning=None).read()
    legacy = [i[:16] for i in table.column("event_id").to_pylist()]
    if client_id is not None:
        new_ids.discard(table.column("event_id")[-1].as_py())
        new_ids.add(client_id)
        legacy[-1] = client_id
    table = table.set_column(0, "event_id", pa.array(legacy, pa.string()))
    for old in event_files(settings):
        old.unlink()
    (settings.events_dir / ID_MARKER).unlink()
    (settings.events_dir / LAYOUT_MARKER).unlink()  # nor the month/bucket layout (issue 15)
    pq.write_table(table, settings.events_dir / "batch-legacy.parquet")
    assert not event_ids_current(settings)
    return new_ids


def test_old_stores_of_16_digit_ids_are_migrated_on_first_write(settings, tmp_path):
    path = write_text(tmp_path / "till.csv", REPEATS_CSV)
    new_ids = make_legacy_store(settings, path)

    # Re-ingesting the file migrates the store first, so it still adds nothing.
    report = ingest_file(settings, path, IngestMapping())
    assert (report.accepted, report.duplicates) == (0, 5)
    assert set(read_events(settings)["event_id"]) == new_ids
    assert event_ids_current(settings) and migrate_event_ids(settings) == 0


def test_cli_migrate_event_ids_keeps_ids_a_client_chose(settings, tmp_path):
    from typer.testing import CliRunner

    from omniscore.cli import app

    path = write_text(tmp_path / "till.csv", REPEATS_CSV)
    expected = make_legacy_store(settings, path, client_id="0123456789abcdef")
    runner = CliRunner()
    result = runner.invoke(app, ["migrate-event-ids", "--home", str(settings.home)])
    assert result.exit_code == 0, result.output
    assert "4 event ids widened to 128 bits" in result.output
    assert set(read_events(settings)["event_id"]) == expected
    assert not list(settings.events_dir.glob("*.legacy"))
    result = runner.invoke(app, ["migrate-event-ids", "--home", str(settings.home)])
    assert "nothing to migrate" in result.output


# --- whole-file errors ------------------------------------------------------------------------
def test_missing_required_column_refuses_the_file(settings, tmp_path):
    no_id = write_text(
        tmp_path / "no_id.csv",
        """
        ts,channel,event_type
        2025-01-01T00:00:00Z,web,page_view
        """,
    )
    with pytest.raises(ValueError, match=r"^missing required column: customer_id"):
        ingest_file(settings, no_id, IngestMapping(columns={"ts": "event_timestamp"}))
    mapping = IngestMapping(columns={"ts": "customer_id", "time": "event_timestamp"})
    with pytest.raises(ValueError, match=r"missing required column: event_timestamp.*'time'"):
        ingest_file(settings, no_id, mapping)

    no_channel = write_text(
        tmp_path / "no_channel.csv",
        """
        customer_id,event_timestamp,event_type,amount
        a,2025-01-01T00:00:00Z,purchase,10
        """,
    )
    with pytest.raises(ValueError, match="missing required column: channel.*default_channel"):
        ingest_file(settings, no_channel, IngestMapping())
    no_amount = write_text(
        tmp_path / "no_amount.csv",
        """
        customer_id,event_timestamp,channel,event_type
        a,2025-01-01T00:00:00Z,web,page_view
        a,2025-01-01T00:01:00Z,web,purchase
        """,
    )
    with pytest.raises(ValueError, match="missing required column: amount"):
        ingest_file(settings, no_amount, IngestMapping())
    with pytest.raises(ValueError, match="missing required column: cur"):
        ingest_file(
            settings, no_channel, IngestMapping(default_channel="web", currency_column="cur")
        )
    # Nothing reached the store or the quarantine from a refused file.
    assert event_count(settings) == 0
    assert not settings.quarantine_dir.exists() or not any(settings.quarantine_dir.iterdir())


def test_normalise_is_pure_and_matches_the_store_schema():
    frame = pd.DataFrame(
        {
            "customer_id": ["a", None],
            "event_timestamp": ["2025-01-01T00:00:00Z", "2025-01-01T00:00:00Z"],
            "channel": ["web", "web"],
            "event_type": ["page_view", "page_view"],
        }
    )
    before = frame.copy()
    accepted, quarantined = normalise(frame, IngestMapping(), "pure")
    pd.testing.assert_frame_equal(frame, before)
    assert len(accepted) + len(quarantined) == len(frame)
    table = to_canonical_table(accepted)
    assert table.schema == EVENT_SCHEMA and table.num_rows == 1


# --- the user guide stays true ----------------------------------------------------------------
DOC = Path(__file__).resolve().parents[1] / "docs" / "ingest.md"


def test_docs_list_the_vocabulary_and_every_reason():
    text = DOC.read_text(encoding="utf-8")
    for channel in CHANNELS:
        assert f"| `{channel}` |" in text
    for event_type, family in EVENT_TYPES.items():
        assert f"| `{event_type}` | {family.value} |" in text
    for reason in REASON_ORDER:
        assert f"`{reason.replace('{value}', '<value>')}`" in text


def test_docs_yaml_example_loads_and_ingests(settings, tmp_path):
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(# mapping\.yaml.*?)```", text, re.S).group(1)
    mapping = IngestMapping.from_yaml(write_text(tmp_path / "mapping.yaml", example))
    path = write_text(
        tmp_path / "shop.csv",
        """
        user,ts,platform,event,value,currency,stars,ua_device,extra
        17,2025-06-01 10:00:00,Mobile,payment_done,100,USD,,iPhone,x
        17,2025-06-01 10:05:00,website,stargaze,,,,,y
        18,2025-06-01 10:00:00,shop,refund,20,GBP,,,z
        18,2025-06-02 10:00:00,shop,review,,,6,,z
        """,
    )
    report = ingest_file(settings, path, mapping)
    assert (report.accepted, report.quarantined) == (3, 1)
    assert report.reasons == {"rating out of range (1-5)": 1}
    events = stored(settings).set_index(["customer_id", "event_type"])
    purchase = events.loc[("17", "purchase")]
    assert purchase["channel"] == "app" and purchase["device"] == "mobile"
    assert purchase["amount"] == pytest.approx(92.0)
    assert purchase["event_timestamp"] == pd.Timestamp("2025-06-01T08:00:00Z")
    assert events.loc[("17", "other"), "channel"] == "web"
    assert events.loc[("18", "return"), "amount"] == pytest.approx(23.4)
