"""The partitioned feature build writes exactly the one-pass build's snapshots."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq
import pytest

from data_layer.event_store import read_customers, write_customers, write_events
from data_layer.feature_pipeline import (
    BGNBD_PARAMS_FILE,
    build_features,
    read_bgnbd_params,
    read_snapshots,
)
from data_layer.partitioned_build import (
    build_partitioned,
    customer_buckets,
    partition_count,
)
from data_layer.settings import Settings
from data_layer.synthetic import generate
from feature_repo.catalog import VIEWS

END = pd.Timestamp("2026-06-29", tz="UTC")


def _world(home, customers: int = 300, days: int = 120) -> Settings:
    settings = Settings.from_env(home, env={})
    data = generate(customers, days, seed=11, end=END)
    write_events(settings, data.events, replace=True)
    write_customers(settings, data.customers)
    return settings


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["customer_id", "event_timestamp"]).reset_index(drop=True)


def _assert_same_snapshots(left: Settings, right: Settings) -> None:
    for view in VIEWS:
        a = _sorted(read_snapshots(left, view)).drop(columns="created_timestamp")
        b = _sorted(read_snapshots(right, view)).drop(columns="created_timestamp")
        assert len(a) > 0
        # Every value of every row, exactly (NaN equal to NaN).
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    # The BG/NBD population fit is over every customer, not each bucket's: the same stored
    # parameters at every instant, and values present to compare (a bucket's own fit would
    # move every one of them).
    assert (left.features_dir / BGNBD_PARAMS_FILE).read_text() == (
        right.features_dir / BGNBD_PARAMS_FILE
    ).read_text()
    assert all(p is not None for p in read_bgnbd_params(left).values())
    alive = read_snapshots(left, "transactions")["bgnbd_p_alive"]
    assert alive.notna().any() and (alive < 1).any()


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    one = _world(tmp_path_factory.mktemp("one-pass"))
    many = _world(tmp_path_factory.mktemp("partitioned"), customers=300)
    return one, many


def test_a_tiny_budget_forces_several_partitions_and_the_same_rows(homes) -> None:
    one, many = homes
    start = END - pd.Timedelta(weeks=5)
    whole = build_features(one, start, END, "7D")
    assert whole.partitions == 1

    tiny = Settings.from_env(many.home, env={"OMNISCORE_BUILD_MEMORY_MB": "1"})
    instants = len(whole.snapshots)
    partitions = partition_count(tiny, instants)
    assert partitions >= 3
    report = build_features(tiny, start, END, "7D")
    assert report.partitions == partitions
    assert report.rows == whole.rows
    assert report.customers == whole.customers
    _assert_same_snapshots(one, many)
    # Each view's file is streamed in row groups (one per bucket holding customers at least).
    filled = len(set(customer_buckets(read_customers(many)["customer_id"], partitions)))
    for view in VIEWS:
        assert pq.ParquetFile(many.features_dir / f"{view}.parquet").num_row_groups >= filled > 2


def test_every_customer_falls_in_exactly_one_bucket(homes) -> None:
    _, many = homes
    ids = read_customers(many)["customer_id"]
    buckets = customer_buckets(ids, 4)
    assert set(buckets) == {0, 1, 2, 3}
    # Stable: the same id, in another frame and order, lands in the same bucket.
    again = customer_buckets(ids[::-1].reset_index(drop=True), 4)
    assert list(again) == list(buckets[::-1])


def test_a_rebuild_replaces_its_instants_and_keeps_the_others(homes, tmp_path) -> None:
    one, _ = homes
    reference = _world(tmp_path / "reference")
    partitioned = _world(tmp_path / "partitioned")
    first = (END - pd.Timedelta(weeks=3), END - pd.Timedelta(weeks=1))
    second = (END - pd.Timedelta(weeks=1), END)
    build_features(reference, *first, "7D")
    build_features(reference, *second, "7D")

    build_partitioned(partitioned, [*pd.date_range(*first, freq="7D")], 3)
    created_before = read_snapshots(partitioned, "profile")["created_timestamp"].max()
    seconds: list[float] = []
    built = build_partitioned(
        partitioned, [*pd.date_range(*second, freq="7D")], 5, lambda b, s: seconds.append(s)
    )
    assert built.partitions == 5 and len(seconds) == 5
    _assert_same_snapshots(reference, partitioned)
    frame = read_snapshots(partitioned, "profile")
    assert not frame.duplicated(["customer_id", "event_timestamp"]).any()
    kept = frame[frame["event_timestamp"] == first[0]]["created_timestamp"]
    assert (kept <= created_before).all()
    rebuilt = frame[frame["event_timestamp"] == second[0]]["created_timestamp"]
    assert (rebuilt > created_before).all()


def test_the_budget_setting_is_validated(tmp_path) -> None:
    with pytest.raises(ValueError, match="OMNISCORE_BUILD_MEMORY_MB"):
        Settings.from_env(tmp_path, env={"OMNISCORE_BUILD_MEMORY_MB": "0"})
