"""Right to erasure (``omniscore forget``): on the embedded stores, on Redis and PostgreSQL,
killed half-way and re-run, and through the service's ``POST /admin/forget``.

"Nothing holds the id" is checked three ways, as compression can hide bytes: every file
under the home byte for byte, every value of every Parquet file, and every value of every
SQLite table; on Redis every key, hash field and value, sorted-set member and stream entry;
on PostgreSQL every text value of every table. Other customers' snapshot rows and online
values are compared exactly before and after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from data_layer import erasure
from data_layer.erasure import ERASED_REASON, forget
from data_layer.event_store import read_events
from data_layer.feast_store import apply, materialize
from data_layer.ingest import IngestMapping, ingest_file
from data_layer.live_ingest import accept_events
from data_layer.live_state import LiveState
from data_layer.settings import Settings

REPO = Path(__file__).resolve().parents[1]
OMNISCORE = str(Path(sys.executable).with_name("omniscore"))
"""The installed command line, run as a real subprocess."""
REDIS_DB = 6
"""This module's own Redis database (flushed before use)."""


# --- the checks --------------------------------------------------------------------------------
def _needles(ids: list[str]) -> re.Pattern[bytes]:
    """One pattern matching any of ``ids`` (a single regex scan per value, not one per id)."""
    return re.compile(b"|".join(re.escape(i.encode()) for i in ids))


def _text_hits(value, needles: re.Pattern[bytes]) -> list[bytes]:
    raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
    return sorted(set(needles.findall(raw)))


def _cannot_hold_text(column_type: pa.DataType) -> bool:
    """Whether a Parquet column's type is a number, a boolean or a time, which no customer id
    can hide in (checking those values one by one took most of this module's time)."""
    return (
        pa.types.is_integer(column_type)
        or pa.types.is_floating(column_type)
        or pa.types.is_boolean(column_type)
        or pa.types.is_temporal(column_type)
        or pa.types.is_decimal(column_type)
        or pa.types.is_null(column_type)
    )


def home_mentions(home: Path, ids: list[str]) -> list[str]:
    """Every place under ``home`` that still holds one of ``ids``: raw bytes of every file,
    every Parquet value, every SQLite value."""
    needles = _needles(ids)
    found = []
    for path in sorted(p for p in Path(home).rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"bytes {path}: {n!r}" for n in _text_hits(data, needles)]
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            for name in table.column_names:
                if _cannot_hold_text(table.schema.field(name).type):
                    continue
                for value in set(map(str, table.column(name).to_pylist())):
                    found += [f"parquet {path}:{name}: {n!r}" for n in _text_hits(value, needles)]
        if data[:16] == b"SQLite format 3\x00":
            con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                tables = [
                    r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
                ]
                for table in tables:
                    for row in con.execute(f'SELECT * FROM "{table}"'):
                        for value in row:
                            if not isinstance(value, (str, bytes)):
                                continue  # NULL, INTEGER or REAL: no id can hide in a number
                            hits = _text_hits(value, needles)
                            found += [f"sqlite {path}:{table}: {n!r}" for n in hits]
            finally:
                con.close()
    return found


def redis_mentions(client, ids: list[str]) -> list[str]:
    """Every key, field, member, value or stream entry of the database holding an id."""
    needles = _needles(ids)
    found = []
    for key in client.scan_iter(count=1000):
        found += [f"key {key!r}" for _ in _text_hits(key, needles)]
        kind = client.type(key)
        values: list = []
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                values += [field, value]
        elif kind == b"zset":
            values = client.zrange(key, 0, -1)
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"list":
            values = client.lrange(key, 0, -1)
        elif kind == b"string":
            values = [client.get(key)]
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                for field, value in fields.items():
                    values += [field, value]
        for value in values:
            found += [f"{kind.decode()} {key!r}: {n!r}" for n in _text_hits(value, needles)]
    return found


def postgres_mentions(url: str, ids: list[str]) -> list[str]:
    """Every value of every table of a PostgreSQL database holding an id (cast to text)."""
    import psycopg2

    found = []
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
            )
            for schema, table in cur.fetchall():
                cur.execute(f'SELECT t::text FROM "{schema}"."{table}" t')
                for (row,) in cur.fetchall():
                    found += [f"{table}: {n}" for n in ids if n in row]
    finally:
        conn.close()
    return found


def other_snapshot_rows(settings: Settings, erased: list[str]) -> dict[str, pa.Table]:
    """Each snapshot file's rows of every customer but ``erased``, in file order."""
    out = {}
    value_set = pa.array(erased)
    for path in sorted(settings.features_dir.glob("*.parquet")):
        table = pq.read_table(path)
        keep = pc.invert(pc.is_in(table.column("customer_id"), value_set=value_set))
        out[path.name] = table.filter(keep)
    return out


def other_online_rows(settings: Settings, erased: list[str]) -> list[tuple]:
    """Every row of the SQLite online store except the erased customers' (exact values)."""
    from data_layer.online_format import entity_keys

    gone = set(entity_keys(erased, 3))
    con = sqlite3.connect(f"file:{settings.online_store_path}?mode=ro", uri=True)
    rows = []
    try:
        for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            rows += [
                (table, *r) for r in con.execute(f'SELECT * FROM "{table}"') if r[0] not in gone
            ]
    finally:
        con.close()
    return sorted(rows, key=repr)


def original_log(settings: Settings, path: Path) -> Path:
    """The event store written out as a CSV log, as a source system would send it again."""
    frame = read_events(settings)
    frame = frame.drop(columns=["event_id", "family"], errors="ignore")
    frame.to_csv(path, index=False)
    return path


def pick_customers(settings: Settings, n: int) -> list[str]:
    counts = read_events(settings, ["customer_id"])["customer_id"].value_counts()
    return sorted(counts.index[:n].astype(str).tolist())


def live_event(customer: str, at: str = "2026-06-29T10:00:00Z") -> dict:
    return {
        "customer_id": customer,
        "event_timestamp": at,
        "channel": "app",
        "event_type": "app_open",
        "session_id": f"s-{customer}",
    }


# --- the embedded stores -------------------------------------------------------------------------
@pytest.fixture
def embedded(copy_world, tmp_path) -> Settings:
    """A copy of the world, materialized (SQLite online store and live state), with live
    events in the live segment and a quarantined row for the customers to be erased."""
    settings = copy_world(tmp_path / "home")
    materialize(settings)
    return settings


def test_forget_erases_every_store_and_keeps_them_out(embedded, tmp_path):
    settings = embedded
    erased = pick_customers(settings, 3)
    kept = "C000001" if "C000001" not in erased else "C000002"
    log = original_log(settings, tmp_path / "original.csv")
    now = pd.Timestamp("2026-06-29T12:00:00Z")
    with LiveState.open(settings) as state:
        report = accept_events(settings, [live_event(c) for c in erased], now, state)
    assert report.accepted == 3
    # A rejected row of an erased customer sits in the quarantine before the request.
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "customer_id,event_timestamp,channel,event_type\n"
        f"{erased[0]},2026-06-01T00:00:00Z,carrier-pigeon,app_open\n"
    )
    assert ingest_file(settings, bad, IngestMapping()).quarantined == 1
    (settings.home / "logs").mkdir(exist_ok=True)
    (settings.home / "logs" / "omniscore.log").write_text(
        f"scored {erased[1]}\nsomething about {kept}\n"
    )
    assert home_mentions(settings.home, erased)
    snapshots_before = other_snapshot_rows(settings, erased)
    online_before = other_online_rows(settings, erased)
    events_before = read_events(settings)

    receipt = forget(settings, erased)

    assert home_mentions(settings.home, erased) == []
    assert receipt.stores["event_store"] == int(events_before["customer_id"].isin(erased).sum())
    assert receipt.stores["features"] > 0 and receipt.stores["feast_online_sqlite"] > 0
    assert receipt.stores["live_state"] > 0 and receipt.stores["quarantine"] == 1
    assert receipt.stores["logs"] == 1
    assert "something about" in (settings.home / "logs" / "omniscore.log").read_text()
    # Other customers: events, snapshot rows and online values unchanged.
    events_after = read_events(settings)
    others = events_before[~events_before["customer_id"].isin(erased)]
    key = ["event_id"]
    pd.testing.assert_frame_equal(
        events_after.sort_values(key).reset_index(drop=True),
        others.sort_values(key).reset_index(drop=True),
    )
    after = other_snapshot_rows(settings, erased)
    assert after.keys() == snapshots_before.keys()
    for name, table in snapshots_before.items():
        assert after[name].equals(table), name
    assert other_online_rows(settings, erased) == online_before
    # The receipt and the suppression list hold keyed hashes, never the ids.
    audit = erasure.read_audit(settings)
    assert len(audit) == 1 and audit[0]["subjects"] == receipt.subjects
    assert len(receipt.subjects[0]) == 64

    # Re-ingesting the original log brings none of their events back.
    again = ingest_file(settings, log, IngestMapping())
    in_log = int(pd.read_csv(log, usecols=["customer_id"])["customer_id"].isin(erased).sum())
    assert in_log > 0 and again.reasons[ERASED_REASON] == in_log
    assert again.accepted == 0
    assert not read_events(settings)["customer_id"].isin(erased).any()
    # Live events for them are rejected and quarantined with the hash, not the id.
    with LiveState.open(settings) as state:
        live = accept_events(settings, [live_event(erased[0]), live_event(kept)], now, state)
    assert [r.status for r in live.results] == ["rejected", "accepted"]
    assert live.results[0].reason == ERASED_REASON
    assert home_mentions(settings.home, erased) == []
    quarantined = pd.read_parquet(live.quarantine_path)
    assert quarantined["customer_id"].tolist() == [erasure.HASH_PREFIX + receipt.subjects[0]]

    # Unsuppressing lets a customer who signs up again back in.
    assert erasure.unsuppress(settings, [erased[0]]) == 1
    with LiveState.open(settings) as state:
        back = accept_events(settings, [live_event(erased[0], "2026-06-29T11:00:00Z")], now, state)
    assert back.results[0].status == "accepted"


def test_forget_rejects_empty_ids_and_is_idempotent(embedded):
    with pytest.raises(ValueError, match="non-empty"):
        forget(embedded, ["C000001", "  "])
    first = forget(embedded, ["C000005"])
    second = forget(embedded, ["C000005"])
    assert first.stores["event_store"] > 0
    assert all(rows == 0 for rows in second.stores.values()), second.stores


KILLER = """
import os, signal, sys
from data_layer.erasure import forget, read_ids_file
from data_layer.settings import Settings

stop_after = sys.argv[3]

def progress(store, rows):
    if store == stop_after:
        os.kill(os.getpid(), signal.SIGKILL)

forget(Settings.from_env(sys.argv[1]), read_ids_file(sys.argv[2]), progress=progress)
"""


@pytest.mark.slow  # runs the erasure twice in processes of their own
@pytest.mark.parametrize("stop_after", ["event_store", "features"])
def test_forget_killed_half_way_completes_when_run_again(embedded, tmp_path, stop_after):
    settings = embedded
    erased = pick_customers(settings, 40)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# erasure requests\n" + "\n".join(erased) + "\n")
    snapshots_before = other_snapshot_rows(settings, erased)
    online_before = other_online_rows(settings, erased)
    events_before = read_events(settings)
    env = {**os.environ, "OMNISCORE_HOME": str(settings.home)}
    env.pop("OMNISCORE_PROFILE", None)
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(settings.home), str(ids_file), stop_after],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -9, killed.stderr
    assert home_mentions(settings.home, erased), "the kill came after everything was erased"
    assert erasure.read_audit(settings) == []  # no receipt for an unfinished request

    rerun = subprocess.run(
        [OMNISCORE, "forget", "--file", str(ids_file)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "feast_online_sqlite" in rerun.stdout and "removed" in rerun.stdout
    assert home_mentions(settings.home, erased) == []
    others = events_before[~events_before["customer_id"].isin(erased)]
    after = read_events(settings)
    assert sorted(after["event_id"]) == sorted(others["event_id"])
    snapshots_after = other_snapshot_rows(settings, erased)
    for name, table in snapshots_before.items():
        assert snapshots_after[name].equals(table), name
    assert other_online_rows(settings, erased) == online_before
    assert not list(settings.home.rglob(f"*{erasure._TMP_SUFFIX}"))
    [receipt] = erasure.read_audit(settings)
    assert len(receipt["subjects"]) == 40


# --- Redis and PostgreSQL ----------------------------------------------------------------------
def test_forget_on_redis_and_postgres(copy_world, tmp_path, services, postgres_db, redis_project):
    import redis

    redis_url = services["redis"].rsplit("/", 1)[0] + f"/{REDIS_DB}"
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    registry = postgres_db()
    base = copy_world(tmp_path / "home")
    settings = dataclasses.replace(
        base,
        online_store=redis_url,
        feast_project=redis_project,
        feast_registry=registry,
        optuna_storage=postgres_db(),
        stream_name=f"omniscore:events:{redis_project}",
    )
    apply(settings)
    materialize(settings)
    erased = pick_customers(settings, 3)
    kept = next(c for c in ("C000001", "C000002", "C000003", "C000004") if c not in erased)
    # Stream entries about them and another customer, delivered and left pending.
    stream = settings.stream_name
    for customer in (*erased, kept):
        client.xadd(stream, {b"event": json.dumps(live_event(customer)).encode()})
    client.xgroup_create(stream, "scorers", id="0")
    client.xreadgroup("scorers", "dead-consumer", {stream: ">"}, count=4)
    now = pd.Timestamp("2026-06-29T12:00:00Z")
    with LiveState.open(settings) as state:
        accept_events(settings, [live_event(c) for c in erased], now, state)
    assert redis_mentions(client, erased)
    other_keys = sorted(k for k in client.scan_iter(count=1000) if b"C0" in k)
    other_keys = [k for k in other_keys if not any(i.encode() in k for i in erased)]
    others_before = {k: _redis_value(client, k) for k in other_keys}

    receipt = forget(settings, erased)

    assert redis_mentions(client, erased) == []
    assert home_mentions(settings.home, erased) == []
    assert postgres_mentions(registry, erased) == []
    assert receipt.stores["feast_online_redis"] == 3
    assert receipt.stores[f"stream {stream}"] == 3
    assert client.xpending(stream, "scorers")["pending"] == 1  # only kept's message
    assert {k: _redis_value(client, k) for k in other_keys} == others_before
    with LiveState.open(settings) as state:
        assert state.known(erased) == [False, False, False]
        assert state.known([kept]) == [True]
    client.flushdb()
    client.close()


def _redis_value(client, key: bytes):
    kind = client.type(key)
    if kind == b"hash":
        return client.hgetall(key)
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    return client.dump(key)


# --- the service --------------------------------------------------------------------------------
@pytest.mark.slow
def test_admin_forget_over_http_and_the_report(serving_home, tmp_path):
    import httpx
    from training_home import copy_home

    from serving.launcher import start_server
    from training.erasure_lineage import open_obligations

    settings = copy_home(serving_home, tmp_path / "served")
    erased = pick_customers(settings, 2)
    admin_key = "admin-key-0123456789abcdef"
    api_key = "score-key-0123456789abcdef"
    options = {"admin_key": admin_key, "reload_interval": 0, "clock": "2026-06-29T14:00:00Z"}
    with (
        start_server(settings, api_key=api_key, options=options) as server,
        httpx.Client(base_url=server.url, headers=server.headers(), timeout=120) as http,
    ):
        before = http.post("/score", json={"customer_ids": erased}).json()["scores"]
        assert [s["known"] for s in before] == [True, True]
        refused = http.post("/admin/forget", json={"customer_ids": erased})
        assert refused.status_code == 401 and "admin key" in refused.json()["message"]
        answer = http.post(
            "/admin/forget",
            json={"customer_ids": erased},
            headers={"Authorization": f"Bearer {admin_key}"},
        )
        assert answer.status_code == 200, answer.text
        receipt = answer.json()
        assert receipt["stores"]["event_store"] > 0
        assert {m["name"] for m in receipt["model_versions"]} == {
            "omniscore-propensity", "omniscore-churn", "omniscore-segments",
        }  # fmt: skip
        assert not any(c in answer.text for c in erased)
        # Scanned while the service runs: its open connections keep nothing either.
        assert home_mentions(settings.home, erased) == []
        after = http.post("/score", json={"customer_ids": erased}).json()["scores"]
        assert [s["known"] for s in after] == [False, False]
        events = http.post("/events", json={"events": [live_event(erased[0])]}).json()
        assert events["results"][0]["reason"] == ERASED_REASON
        # Last, as the access log then records the id in this request's path.
        assert http.get(f"/customers/{erased[0]}").status_code == 404
    obligations = open_obligations(settings)
    assert {o["name"] for o in obligations} == {
        "omniscore-propensity", "omniscore-churn", "omniscore-segments",
    }  # fmt: skip
    assert all(o["age_days"] >= 0 for o in obligations)
    report = subprocess.run(
        [OMNISCORE, "forget", "--report", "--home", str(settings.home)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert "omniscore-churn v" in report.stdout and "days old" in report.stdout
