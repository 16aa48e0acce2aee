"""The event store's month/bucket layout: files land where their rows belong, a build over a
time range or a customer partition lists fewer files yet computes the same snapshots, and an
old flat home keeps working and is migrated by ``migrate_events``."""

from __future__ import annotations

import duckdb
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_layer import live_segment
from data_layer.event_store import (
    LAYOUT_MARKER,
    event_files,
    events_relation_sql,
    layout_keys,
    migrate_events,
    read_customers,
    read_events,
    store_buckets,
    stored_files,
    write_customers,
    write_events,
)
from data_layer.feature_pipeline import (
    bgnbd_population,
    build_events_sql,
    compute_snapshots,
    fitted_params,
)
from data_layer.partitioned_build import customer_buckets
from data_layer.schema import EVENT_SCHEMA
from data_layer.settings import Settings
from data_layer.synthetic import generate

END = pd.Timestamp("2026-06-29", tz="UTC")
BUCKETS = 4


@pytest.fixture(scope="module")
def world():
    # 240 days: a 4-week build at the end starts its full-detail read 149 days back, so the
    # oldest ~90 days are read only for the lifetime scalars and purchases.
    return generate(150, 240, seed=5, end=END)


@pytest.fixture(scope="module")
def home(world, tmp_path_factory) -> Settings:
    settings = Settings.from_env(tmp_path_factory.mktemp("layout"), env={})
    write_events(settings, world.events, replace=True, buckets=BUCKETS)
    write_customers(settings, world.customers)
    return settings


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)


def test_each_file_holds_one_month_and_one_bucket_with_the_canonical_schema(home, world):
    files = stored_files(home)
    assert store_buckets(home) == BUCKETS
    assert all(f.month is not None for f in files)  # nothing outside the layout
    assert len({f.bucket for f in files}) == BUCKETS and len({f.month for f in files}) >= 8
    for f in files[:: max(1, len(files) // 6)]:
        table = pq.read_table(f.path)
        assert table.schema.remove_metadata() == EVENT_SCHEMA.remove_metadata()
        months, buckets = layout_keys(table, BUCKETS)
        assert set(months) == {f.month} and set(buckets) == {f.bucket}
    # Readers see exactly the events written, with no column from the directory names.
    stored = read_events(home)
    assert list(stored.columns) == EVENT_SCHEMA.names
    assert sorted(stored["event_id"]) == sorted(world.events.column("event_id").to_pylist())


def _bytes(files) -> int:
    return sum(p.stat().st_size for p in files)


def test_a_partition_or_a_time_range_lists_only_its_files(home):
    every = event_files(home)
    mine = event_files(home, partition=(1, 2 * BUCKETS))
    assert {p.parent.name for p in mine} == {"bucket=001"}
    assert _bytes(mine) < _bytes(every) / 2
    early = event_files(home, until=END - pd.Timedelta(days=150))
    assert early and _bytes(early) < _bytes(every) / 2
    assert all(p.parent.parent.name < "month=2026-02" for p in early)


def test_a_recent_build_and_a_partition_give_the_whole_store_snapshots(home):
    times = list(pd.date_range(END - pd.Timedelta(weeks=4), END, freq="7D"))
    customers = read_customers(home)
    # BG/NBD population parameters are fitted on the whole store once (as every build does).
    params = fitted_params(bgnbd_population(events_relation_sql(home), times))
    whole = compute_snapshots(events_relation_sql(home), customers, times, bgnbd_params=params)
    pruned = compute_snapshots(build_events_sql(home, times), customers, times, bgnbd_params=params)
    assert len(whole) > 500
    pd.testing.assert_frame_equal(_sorted(whole), _sorted(pruned), check_exact=True)
    # Eight build partitions over four store buckets: each reads one bucket's files.
    bucket = customer_buckets(customers["customer_id"], 8)
    parts = pd.concat(
        compute_snapshots(
            build_events_sql(home, times, (p, 8)),
            customers[bucket == p],
            times,
            bgnbd_params=params,
        )
        for p in range(8)
    )
    pd.testing.assert_frame_equal(_sorted(whole), _sorted(parts), check_exact=True)


def test_an_old_flat_home_keeps_working_and_migrates(world, tmp_path):
    settings = Settings.from_env(tmp_path, env={})
    write_events(settings, world.events, replace=True, buckets=BUCKETS)
    # Turn it into a home of the old layout: one flat file, no layout marker.
    table = pq.ParquetDataset(event_files(settings), partitioning=None).read()
    for path in event_files(settings):
        path.unlink()
    (settings.events_dir / LAYOUT_MARKER).unlink()
    pq.write_table(table, settings.events_dir / "batch-old.parquet")
    assert store_buckets(settings) is None
    con = duckdb.connect()
    count = f"SELECT count(*) FROM {events_relation_sql(settings)}"
    assert con.execute(count).fetchone()[0] == table.num_rows  # read as it is

    moved = migrate_events(settings)
    assert moved == table.num_rows
    files = stored_files(settings)
    assert files and all(f.month is not None for f in files)
    assert not list(settings.events_dir.glob("*.parquet*"))
    assert con.execute(f"SELECT count(*) FROM {events_relation_sql(settings)}").fetchone()[0] == (
        table.num_rows
    )
    # Ids survive the move, so re-ingesting the same events adds nothing.
    again = write_events(settings, world.events)
    assert again.written == 0 and again.duplicates == table.num_rows
    assert migrate_events(settings) == 0  # nothing left outside the layout


def test_live_appends_stay_exactly_once_across_sealing_and_migration(world, tmp_path):
    """Sealed live files sit outside the layout; after migrate-events moves them in, the
    event-id index still knows every stored id (re-sent events are duplicates) and is keyed
    by each file's path in the store."""
    settings = Settings.from_env(tmp_path, env={})
    stored = world.events.slice(0, 2_000)
    live = world.events.slice(2_000, 50)
    write_events(settings, stored, replace=True, buckets=BUCKETS)
    assert live_segment.append(settings, live).all()
    assert not live_segment.append(settings, stored.slice(0, 10)).any()  # stored by the batch
    sealed = live_segment.seal(settings)
    assert sealed is not None and sealed.parent == settings.events_dir
    assert migrate_events(settings) == live.num_rows
    assert not sealed.exists()
    assert not live_segment.append(settings, live).any()  # moved, still known
    fresh = world.events.slice(2_050, 5)
    assert live_segment.append(settings, fresh).all()
    ids = read_events(settings)["event_id"]
    assert len(ids) == ids.nunique() == 2_055
    conn = live_segment._connect(settings)
    names = {row[0] for row in conn.execute("SELECT name FROM indexed_files")}
    files = {p.relative_to(settings.events_dir).as_posix() for p in event_files(settings)}
    assert names == files
