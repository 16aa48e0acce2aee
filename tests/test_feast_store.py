"""The Feast store against real Feast: SQLite online store, file offline store, file registry.

Snapshots are hand-made (tests/conftest.py): c1 and c2 at T1, T2, T3 (c2's T3 has nulls), c3
only at T1, c4 only at T3 with edge values. Every expected value is read from those files.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
import uuid
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import SNAPSHOT_TIMES
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import extract_text_and_num
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.repo_config import load_repo_config
from feast.utils import _convert_arrow_to_proto
from feast.value_type import ValueType

from data_layer import feast_store, online_format
from data_layer.settings import FEATURE_REPO_DIR, Settings
from feature_repo.catalog import FEATURE_NAMES, VIEWS, features_of_view, service_features
from feature_repo.feature_views import TTLS
from feature_repo.repository import build_definitions

T1, T2, T3 = SNAPSHOT_TIMES
DAY = pd.Timedelta(days=1)
CUSTOMERS = ["c1", "c2", "c3", "c4"]
DEFINITION_MODULES = (
    "catalog",
    "data_sources",
    "entities",
    "feature_services",
    "feature_views",
    "repository",
)


def _same(actual, expected) -> bool:
    """Equal values, nulls as nulls, floats bit-exact (so -0.0 is not 0.0)."""
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return actual is None or (isinstance(actual, float) and math.isnan(actual))
    if isinstance(expected, float):
        return (
            isinstance(actual, float)
            and actual == expected
            and math.copysign(1, actual) == math.copysign(1, expected)
        )
    return actual == expected


def _online_dump(settings: Settings) -> dict[str, list[tuple]]:
    """Every online row with the storage class of each column, table by table."""
    conn = sqlite3.connect(settings.online_store_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {
            t: conn.execute(
                "SELECT entity_key, feature_name, value, typeof(value), value_text, "
                "typeof(value_text), vector_value, event_ts, typeof(event_ts), created_ts, "
                f'typeof(created_ts) FROM "{t}" ORDER BY entity_key, feature_name'
            ).fetchall()
            for t in sorted(tables)
        }
    finally:
        conn.close()


@pytest.fixture(scope="module")
def materialized(tmp_path_factory, make_snapshot_home):
    """One home applied and materialized up to a day after T3 with the default bulk writer."""
    home = make_snapshot_home(tmp_path_factory.mktemp("feast") / "home")
    feast_store.apply(home.settings)
    report = feast_store.materialize(home.settings, end=T3 + DAY)
    return home, report


# --- configuration -----------------------------------------------------------------------------
def test_feature_store_yaml_and_programmatic_config_agree(tmp_path, monkeypatch):
    monkeypatch.setenv("OMNISCORE_HOME", str(tmp_path))
    from_yaml = load_repo_config(FEATURE_REPO_DIR, FEATURE_REPO_DIR / "feature_store.yaml")
    built = feast_store.repo_config(Settings.from_env(tmp_path))

    assert from_yaml.project == built.project == "omniscore"
    assert from_yaml.provider == built.provider == "local"
    assert from_yaml.registry.model_dump() == built.registry.model_dump()
    assert built.registry.path == str(tmp_path / "feast" / "registry.db")
    assert from_yaml.online_store.model_dump() == built.online_store.model_dump()
    assert built.online_store.path == str(tmp_path / "feast" / "online_store.db")
    assert from_yaml.offline_store.model_dump() == built.offline_store.model_dump()
    assert from_yaml.offline_store.type == "duckdb"
    assert from_yaml.entity_key_serialization_version == 3
    assert built.entity_key_serialization_version == 3


def test_settings_select_redis_and_a_sql_registry(tmp_path):
    base = Settings.from_env(tmp_path)
    redis = feast_store.repo_config(
        replace(base, online_store="redis://:s%40cret@cache.internal:6380/2?key_ttl_seconds=60")
    ).online_store
    assert redis.type == "redis"
    assert redis.connection_string == "cache.internal:6380,db=2,password=s@cret"
    assert redis.key_ttl_seconds == 60
    short = feast_store.online_store_config(replace(base, online_store="redis:127.0.0.1:6379"))
    assert short == {"type": "redis", "connection_string": "127.0.0.1:6379"}

    sql = feast_store.repo_config(
        replace(base, feast_registry="postgresql+psycopg://feast@pg.internal:5432/feast")
    ).registry
    assert sql.registry_type == "sql"
    assert sql.path == "postgresql+psycopg://feast@pg.internal:5432/feast"

    with pytest.raises(ValueError, match="unknown online store"):
        feast_store.online_store_config(replace(base, online_store="dynamodb"))


def test_feature_repo_holds_only_definitions_and_builds_nothing_on_import(monkeypatch):
    """Importing the Feast repository reads no environment and builds no Feast object."""
    import importlib

    from feast import Entity, FeatureService, FeatureView, FileSource

    modules = {p.stem for p in FEATURE_REPO_DIR.glob("*.py")} - {"__init__"}
    assert modules == set(DEFINITION_MODULES)
    read: list[str] = []

    class RecordingEnviron(dict):
        def __getitem__(self, key):
            read.append(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            read.append(key)
            return super().get(key, default)

    monkeypatch.setattr(os, "environ", RecordingEnviron(os.environ))
    monkeypatch.setattr(os, "getenv", lambda key, default=None: os.environ.get(key, default))
    import feature_repo

    for name in DEFINITION_MODULES:
        # Re-import for real, then put the original module back (in sys.modules and on the
        # package): the catalog is updated in place, so every other test must keep seeing the
        # one module object the rest of the code imported.
        monkeypatch.delitem(sys.modules, f"feature_repo.{name}")
        monkeypatch.setattr(feature_repo, name, getattr(feature_repo, name))
        module = importlib.import_module(f"feature_repo.{name}")
        built = [
            attr
            for attr, value in vars(module).items()
            if isinstance(value, Entity | FileSource | FeatureView | FeatureService)
        ]
        assert built == [], f"feature_repo.{name} builds {built} at import"
    assert [k for k in read if k.startswith("OMNISCORE")] == [], "environment read at import"


def test_definitions_follow_the_catalog(tmp_path):
    objects = {
        type(o).__name__ + ":" + o.name: o
        for o in build_definitions(Settings.from_env(tmp_path).features_dir)
    }
    for view in VIEWS:
        fv = objects[f"FeatureView:{view}"]
        assert [f.name for f in fv.features] == [f.name for f in features_of_view(view)]
        assert [str(f.dtype) for f in fv.features] == [
            "Float64" if f.dtype == "float" else "String" for f in features_of_view(view)
        ]
        assert fv.ttl == TTLS[view] and fv.owner == "omniscore" and fv.tags["family"]
    for service in ("propensity_v1", "churn_v1", "segments_v1"):
        fs = objects[f"FeatureService:{service}"]
        names = [f.name for p in fs.feature_view_projections for f in p.features]
        assert names == service_features(service)
    assert not (tmp_path / "features").exists(), "building definitions must create nothing"


# --- online ------------------------------------------------------------------------------------
def test_online_features_equal_the_latest_snapshot(materialized):
    home, report = materialized
    assert report.customers == 4
    assert {v.view: v.rows for v in report.views} == dict.fromkeys(VIEWS, 4)
    assert report.feature_values == 4 * len(FEATURE_NAMES)

    store = feast_store.feature_store(home.settings)
    ids = ["c4", "unknown", "c2", "c1", "c3"]  # request order is kept, unknown ids too
    online = feast_store.online_features(store, "propensity_v1", ids)

    assert online["customer_id"].tolist() == ids
    assert online["known"].tolist() == [True, False, True, True, True]
    for i, customer in enumerate(ids):
        for view in VIEWS:
            expected = home.latest(view, customer, T3 + DAY)
            stamp = online.loc[i, feast_store.timestamp_column(view)]
            if expected is None:
                assert pd.isna(stamp)
                assert all(pd.isna(online.loc[i, f.name]) for f in features_of_view(view))
                continue
            assert stamp == expected["event_timestamp"]
            for feature in features_of_view(view):
                assert _same(online.loc[i, feature.name], expected[feature.name]), (
                    customer,
                    feature.name,
                )
    # c2's T3 snapshot has nulls: served as nulls, not as zeros or the T2 value
    assert np.isnan(online.loc[2, "web_events_7d"])
    assert online["web_events_7d"].dtype == np.float64
    assert online.loc[0, "preferred_device"] == "" and online.loc[0, "region"] == "é" * 100


def test_online_features_of_a_projected_service(materialized):
    home, _ = materialized
    store = feast_store.feature_store(home.settings)
    online = feast_store.online_features(store, "segments_v1", ["c1"])
    features = [c for c in online.columns if c in FEATURE_NAMES]
    assert features == service_features("segments_v1")
    assert online.loc[0, "tenure_days"] == home.latest("profile", "c1", T3)["tenure_days"]


def test_stale_views_flags_snapshots_older_than_the_ttl(materialized):
    home, _ = materialized
    store = feast_store.feature_store(home.settings)
    online = feast_store.online_features(store, "churn_v1", ["c1", "c3", "unknown"])
    stale = feast_store.stale_views(online, now=T3 + 10 * DAY)
    # c1 is 10 days old (fresh); c3's T1 snapshot is 24 days old: past the 21-day TTL of the
    # behavioural views, within the 90-day profile TTL; an unknown customer is stale everywhere.
    assert not stale.loc[0].any()
    assert stale.loc[1, "channel_activity"] and not stale.loc[1, "profile"]
    assert stale.loc[2].all()


# --- offline -----------------------------------------------------------------------------------
@pytest.mark.parametrize("offline_store", ["duckdb", "file"])
def test_historical_features_one_row_per_entity_row_point_in_time(materialized, offline_store):
    home, _ = materialized
    settings = replace(home.settings, offline_store=offline_store)
    store = feast_store.feature_store(settings)
    assert store.config.offline_store.type == offline_store
    entity_df = pd.DataFrame(
        {
            "customer_id": ["c1", "c1", "c1", "c3", "unknown", "c2", "c4", "c1"],
            "event_timestamp": [
                T2 + DAY,  # T2 snapshot
                T2,  # at or before: the T2 snapshot itself
                T1 - DAY,  # before the first snapshot: nulls, not a dropped row
                T1 + 30 * DAY,  # beyond the 21-day TTL, within the 90-day profile TTL
                T2,  # no snapshots at all
                T3,  # T3 snapshot with nulls
                T1,  # only a future snapshot: nulls
                T2 + DAY,  # a duplicate entity row stays a duplicate
            ],
            "label": [1, 0, 1, 0, 1, 0, 1, 0],
        }
    )
    result = feast_store.historical_features(store, "propensity_v1", entity_df)

    assert len(result) == len(entity_df)
    assert result["customer_id"].tolist() == entity_df["customer_id"].tolist()
    assert (result["event_timestamp"] == entity_df["event_timestamp"]).all()
    assert result["label"].tolist() == entity_df["label"].tolist()
    assert [c for c in result.columns if c in FEATURE_NAMES] == service_features("propensity_v1")
    for i, row in entity_df.iterrows():
        for view in VIEWS:
            snapshot = home.latest(view, row["customer_id"], row["event_timestamp"])
            if snapshot and row["event_timestamp"] - snapshot["event_timestamp"] > TTLS[view]:
                snapshot = None
            for feature in features_of_view(view):
                expected = None if snapshot is None else snapshot[feature.name]
                assert _same(result.loc[i, feature.name], expected), (i, view, feature.name)
    # the row Feast alone would drop keeps its profile: a 30-day-old profile is within its TTL
    assert result.loc[3, "tenure_days"] == home.latest("profile", "c3", T1)["tenure_days"]
    assert pd.isna(result.loc[3, "web_events_7d"])
    assert result["web_events_7d"].dtype == np.float64


# --- materialization ---------------------------------------------------------------------------
def test_incremental_materialize_writes_only_newer_snapshots(snapshot_home, make_snapshot_home):
    settings = snapshot_home.settings
    feast_store.apply(settings)
    first = feast_store.materialize(settings, end=T2 + DAY)
    assert {v.view: v.rows for v in first.views} == dict.fromkeys(VIEWS, 3)  # c1, c2, c3
    assert all(v.after is None for v in first.views)

    again = feast_store.materialize(settings, end=T2 + 2 * DAY)
    assert again.rows == 0 and again.customers == 0
    assert all(v.after == T2 + DAY for v in again.views)

    # Rebuild every snapshot with other values: only T3 lies after the last materialization,
    # so c3's T1 and c1's T2 rows must stay as first written.
    shifted = make_snapshot_home(settings.home, shift=1000.0)
    third = feast_store.materialize(settings, end=T3 + DAY)
    assert {v.view: v.rows for v in third.views} == dict.fromkeys(VIEWS, 3)  # c1, c2, c4
    assert third.customers == 3

    store = feast_store.feature_store(settings)
    online = feast_store.online_features(store, "churn_v1", ["c1", "c3"])
    assert online.loc[0, "tenure_days"] == shifted.latest("profile", "c1", T3)["tenure_days"]
    assert online.loc[1, "tenure_days"] == snapshot_home.latest("profile", "c3", T1)["tenure_days"]
    assert online.loc[1, "tenure_days"] != shifted.latest("profile", "c3", T1)["tenure_days"]
    for view in VIEWS:
        assert store.get_feature_view(view).most_recent_end_time == T3 + DAY


@pytest.mark.parametrize("method", ["bulk", "online_write_batch"])
def test_fast_path_stores_exactly_what_feast_materialize_stores(
    tmp_path, make_snapshot_home, method
):
    homes = {m: make_snapshot_home(tmp_path / m).settings for m in ("feast", method)}
    for settings in homes.values():
        feast_store.apply(settings)
    for end in (T2 + DAY, T3 + DAY):  # a first load, then an upsert over existing rows
        reports = {
            m: feast_store.materialize(settings, end=end, method=m) for m, settings in homes.items()
        }
        assert reports["feast"].rows == reports[method].rows > 0
        assert _online_dump(homes["feast"]) == _online_dump(homes[method])

    dump = _online_dump(homes[method])
    assert sum(len(rows) for rows in dump.values()) == len(CUSTOMERS) * len(FEATURE_NAMES)
    rows = [{"customer_id": c} for c in CUSTOMERS + ["unknown"]]
    served = {}
    for m, settings in homes.items():
        store = feast_store.feature_store(settings)
        response = store.get_online_features(
            features=store.get_feature_service("propensity_v1"), entity_rows=rows
        )
        served[m] = response.to_dict(include_event_timestamps=True)
    assert served["feast"].keys() == served[method].keys()
    for name, values in served["feast"].items():
        assert all(_same(a, b) for a, b in zip(served[method][name], values, strict=True)), name


def _table_sql(settings: Settings) -> dict[str, str]:
    conn = sqlite3.connect(settings.online_store_path)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


def test_apply_clusters_new_online_tables_and_never_drops_rows(tmp_path, make_snapshot_home):
    settings = make_snapshot_home(tmp_path / "home").settings
    feast_store.apply(settings)
    layouts = _table_sql(settings)
    assert len(layouts) == len(VIEWS)
    assert all(sql.endswith(") WITHOUT ROWID") for sql in layouts.values()), layouts
    feast_store.materialize(settings, end=T3 + DAY)
    stored = _online_dump(settings)
    assert sum(map(len, stored.values())) == len(CUSTOMERS) * len(FEATURE_NAMES)

    # A store made before clustering keeps its rowid table: apply only rebuilds empty ones.
    table = next(iter(layouts))
    conn = sqlite3.connect(settings.online_store_path)
    with conn:
        conn.execute(f'ALTER TABLE "{table}" RENAME TO old_rows')
        conn.execute(layouts[table].removesuffix(" WITHOUT ROWID"))
        conn.execute(f'INSERT INTO "{table}" SELECT * FROM old_rows')
        conn.execute("DROP TABLE old_rows")
    conn.close()
    feast_store.apply(settings)
    assert "WITHOUT ROWID" not in _table_sql(settings)[table]
    assert _online_dump(settings) == stored
    # Both layouts read alike, through Feast and through the service's own read path.
    from serving.online import FeatureLayout, OnlineReader

    store = feast_store.feature_store(settings)
    layout = FeatureLayout.for_services(store, ["propensity_v1", "churn_v1", "segments_v1"])
    ids = [*CUSTOMERS, "unknown"]
    direct = OnlineReader(store, "direct").read(layout, ids)
    through_feast = OnlineReader(store, "feast").read(layout, ids)
    assert direct.known.tolist() == [True] * len(CUSTOMERS) + [False]
    np.testing.assert_array_equal(direct.numeric, through_feast.numeric)
    np.testing.assert_array_equal(direct.timestamps, through_feast.timestamps)


def test_value_encoding_matches_feast_conversion():
    floats = [1.5, float("nan"), -0.0, 0.0, math.inf, -math.inf, 5e-324, 1e-300, 1e16, 0.1]
    floats += [1.7976931348623157e308, 123456789.12345679, -2.2250738585072014e-308, 3.0]
    strings = ["", None, "x", "é" * 100, "北京", "a" * 200, "C000001"]
    table = pa.table(
        {
            "customer_id": pa.array([f"id{i}" for i in range(len(floats))]),
            "event_timestamp": pa.array([T1] * len(floats), pa.timestamp("us", tz="UTC")),
            "created_timestamp": pa.array([T2] * len(floats), pa.timestamp("us", tz="UTC")),
            "x": pa.array(floats, pa.float64()).fill_null(None),
            "s": pa.array((strings * 2)[: len(floats)], pa.string()),
        }
    )
    from feast import Entity, FeatureView, Field, FileSource
    from feast.types import Float64, String

    view = FeatureView(
        name="v",
        entities=[Entity(name="customer", join_keys=["customer_id"])],
        schema=[
            Field(name="customer_id", dtype=String),
            Field(name="x", dtype=Float64),
            Field(name="s", dtype=String),
        ],
        source=FileSource(path="unused.parquet", timestamp_field="event_timestamp"),
    )
    reference = _convert_arrow_to_proto(table, view, {"customer_id": ValueType.STRING})
    feast_x = [values["x"] for _, values, _, _ in reference]
    feast_s = [values["s"] for _, values, _, _ in reference]

    blobs, texts = online_format.encode_doubles(np.array(floats))
    assert blobs.tolist() == [v.SerializeToString() for v in feast_x]
    assert texts.tolist() == [extract_text_and_num(v, False)[0] for v in feast_x]
    blobs, texts = online_format.encode_column(table.column("s"), String)
    assert blobs.tolist() == [v.SerializeToString() for v in feast_s]
    assert texts.tolist() == [extract_text_and_num(v, False)[0] for v in feast_s]

    packed = online_format.pack_doubles(np.array([floats]))
    slots = packed.reshape(len(floats), online_format.SLOT)
    for slot, value in zip(slots, feast_x, strict=True):
        blob = value.SerializeToString()
        text = extract_text_and_num(value, False)[0]
        assert bytes(slot[:9]) == (blob or bytes(9))
        assert bytes(slot[9:]).rstrip(b" ").decode() == (text or "")

    ids = ["c1", "", "é北京", "x" * 300]
    keys = online_format.entity_keys(ids)
    for cid, key in zip(ids, keys, strict=True):
        proto = EntityKeyProto(
            join_keys=["customer_id"], entity_values=[ValueProto(string_val=cid)]
        )
        assert key == serialize_entity_key(proto, entity_key_serialization_version=3)


def test_the_online_format_refuses_a_feast_release_it_was_not_written_for(tmp_path, monkeypatch):
    online_format.check_feast_version()  # the installed, pinned release passes
    assert online_format.FEAST_VERSION == "0.67.0"
    # Another release's distribution record first on the path, as after an upgrade: the
    # same importlib.metadata lookup now finds Feast 0.68.0.
    record = tmp_path / "feast-0.68.0.dist-info"
    record.mkdir()
    (record / "METADATA").write_text("Metadata-Version: 2.1\nName: feast\nVersion: 0.68.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(online_format, "_verified_version", None)
    expected = r"storage format of Feast 0\.67\.0, but Feast 0\.68\.0 is installed"
    with pytest.raises(online_format.FeastVersionMismatch, match=expected):
        online_format.entity_keys(["c1"])
    with pytest.raises(online_format.FeastVersionMismatch, match=expected):
        online_format.decode_value(b"\x29" + bytes(8))
    with pytest.raises(online_format.FeastVersionMismatch, match=expected):
        online_format.encode_doubles(np.array([1.0]))


# --- isolation ---------------------------------------------------------------------------------
def test_two_homes_side_by_side_do_not_touch_each_other(tmp_path, make_snapshot_home, monkeypatch):
    elsewhere = tmp_path / "env_home"
    monkeypatch.setenv("OMNISCORE_HOME", str(elsewhere))  # explicit homes must ignore it
    a = make_snapshot_home(tmp_path / "a")
    b = make_snapshot_home(tmp_path / "b", shift=0.5)
    for home in (a, b):
        feast_store.apply(home.settings)
    feast_store.materialize(a.settings, end=T3 + DAY)
    a_files = {p: p.stat().st_mtime_ns for p in a.settings.home.rglob("*") if p.is_file()}
    feast_store.materialize(b.settings, end=T2 + DAY)

    assert a_files == {p: p.stat().st_mtime_ns for p in a.settings.home.rglob("*") if p.is_file()}
    for home, until in ((a, T3 + DAY), (b, T2 + DAY)):
        store = feast_store.feature_store(home.settings)
        assert store.config.registry.path.startswith(str(home.settings.home))
        assert store.config.online_store.path.startswith(str(home.settings.home))
        for source in store.list_data_sources():
            assert source.path.startswith(str(home.settings.home))
        assert store.get_feature_view("profile").most_recent_end_time == until
        online = feast_store.online_features(store, "churn_v1", ["c1"])
        expected = home.latest("profile", "c1", until)
        assert online.loc[0, "tenure_days"] == expected["tenure_days"]
        assert online.loc[0, "profile__event_timestamp"] == expected["event_timestamp"]
    assert not elsewhere.exists()


# --- Redis -------------------------------------------------------------------------------------
def _redis_or_skip(url: str):
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        if os.environ.get("OMNISCORE_REQUIRE_SERVICES") == "1":
            raise
        pytest.skip(f"no Redis at {url}")
    return client


@pytest.mark.services
def test_redis_bulk_writer_stores_what_feast_stores(tmp_path, make_snapshot_home):
    url = os.environ.get("OMNISCORE_TEST_REDIS", "redis://127.0.0.1:6379/0")
    client = _redis_or_skip(url)
    homes = {}
    for method in ("feast", "bulk"):
        project = f"test_{uuid.uuid4().hex[:12]}"  # a unique key suffix per home
        home = make_snapshot_home(tmp_path / method)
        home.settings = replace(
            home.settings, online_store=url + "?key_ttl_seconds=3600", feast_project=project
        )
        homes[method] = home
    try:
        hashes = {}
        for method, home in homes.items():
            feast_store.apply(home.settings)
            feast_store.materialize(home.settings, end=T2 + DAY, method=method)
            report = feast_store.materialize(home.settings, end=T3 + DAY, method=method)
            assert report.rows == 3 * len(VIEWS)
            suffix = home.settings.feast_project.encode()
            keys = list(client.scan_iter(match=b"*" + suffix))
            assert len(keys) == len(CUSTOMERS)
            assert all(0 < client.ttl(k) <= 3600 for k in keys)
            hashes[method] = {k[: -len(suffix)]: client.hgetall(k) for k in keys}
        assert hashes["feast"] == hashes["bulk"]

        home = homes["bulk"]
        store = feast_store.feature_store(home.settings)
        online = feast_store.online_features(store, "propensity_v1", ["c1", "unknown"])
        assert online["known"].tolist() == [True, False]
        assert online.loc[0, "tenure_days"] == home.latest("profile", "c1", T3)["tenure_days"]
    finally:
        for home in homes.values():
            feast_store.feature_store(home.settings).teardown()
    for home in homes.values():
        assert not list(client.scan_iter(match=b"*" + home.settings.feast_project.encode()))


def test_materialize_reports_missing_snapshots(tmp_path):
    settings = Settings.from_env(tmp_path / "empty")
    feast_store.apply(settings)
    with pytest.raises(FileNotFoundError, match="build the features first"):
        feast_store.materialize(settings, end=T3)
