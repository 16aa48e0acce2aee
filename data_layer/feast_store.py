"""Drive Feast for one OmniScore home: configure, apply, materialize, read online and offline.

The configuration is built from :class:`~data_layer.settings.Settings` (the same values as
``feature_store.yaml`` for the defaults, which a test checks), so every command works on an
explicit home and the embedded SQLite store or Redis / PostgreSQL are a matter of settings.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import FeatureService, FeatureStore, FeatureView, RepoConfig
from feast.types import Float64

from data_layer import online_format
from data_layer.live_state import LiveState
from data_layer.partitioned_build import bucket_sql
from data_layer.settings import FEATURE_REPO_DIR, Settings, redact
from feature_repo.data_sources import snapshot_path
from feature_repo.feature_views import TTLS
from feature_repo.repository import build_definitions

JOIN_KEY = "customer_id"
TIMESTAMP = "event_timestamp"
CREATED = "created_timestamp"
REGISTRY_CACHE_TTL_SECONDS = 60
"""How long a FeatureStore trusts its cached registry (serving picks up an apply within this)."""
METHODS = ("bulk", "online_write_batch", "feast")
"""Materialization paths: ``bulk`` (default; byte-identical bulk writer for SQLite and Redis),
``online_write_batch`` (Feast's proto conversion and online-store write, our selection of rows)
and ``feast`` (``FeatureStore.materialize``, Feast's own engine)."""
_SQL_REGISTRY_SCHEMES = ("postgresql", "postgres", "mysql", "sqlite")
_ROW = "__omniscore_row"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- configuration -----------------------------------------------------------------------------
def registry_config(settings: Settings) -> dict:
    """Feast registry config: a local file by default, a SQL registry for a database URL."""
    path = settings.feast_registry_path
    scheme = urlparse(path).scheme.split("+", 1)[0]
    kind = "sql" if scheme in _SQL_REGISTRY_SCHEMES else "file"
    if urlparse(path).scheme in ("postgresql", "postgres"):
        # Feast would rewrite a bare scheme to psycopg 3 with a warning; say it explicitly.
        path = "postgresql+psycopg://" + path.split("://", 1)[1]
    return {
        "registry_type": kind,
        "path": path,
        "cache_ttl_seconds": REGISTRY_CACHE_TTL_SECONDS,
    }


def default_key_ttl_seconds() -> int:
    """Redis key TTL the feature views call for: the longest view TTL (the profile's 90 days).

    One Redis hash holds every view of a customer and each write restarts its expiry, so a key
    expires only once its newest write is older than every view's TTL: by then point-in-time
    retrieval would treat all of its values as missing anyway, and the memory is reclaimed.
    """
    return int(max(TTLS.values()).total_seconds())


def redis_online_store_config(spec: str) -> dict:
    """Feast Redis config from ``redis://[:password@]host[:port][/db][?key_ttl_seconds=N]``.

    ``rediss://`` turns on TLS; ``redis+cluster://host1:port1,host2:port2`` (or
    ``rediss+cluster://``) selects a Redis Cluster; ``redis:host:port[,option=value...]``
    passes Feast's own connection-string format through unchanged. Keys expire after
    ``key_ttl_seconds`` (default :func:`default_key_ttl_seconds`; ``0`` keeps them forever).
    """
    if "://" not in spec:
        return {"type": "redis", "connection_string": spec.split(":", 1)[1]}
    scheme, rest = spec.split("://", 1)
    cluster = scheme.endswith("+cluster")
    scheme = scheme.removesuffix("+cluster")
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"not a Redis URL: {redact(spec)!r}")
    hosts_part, _, query = rest.partition("?")
    hosts_part, _, db = hosts_part.partition("/")
    userinfo, _, hosts = hosts_part.rpartition("@")
    username, _, password = userinfo.partition(":")
    parts = []
    for host in (hosts or "localhost").split(","):
        url = urlparse(f"{scheme}://{host}")
        parts.append(f"{url.hostname or 'localhost'}:{url.port or 6379}")
    if db.strip("/") and not cluster:  # cluster nodes have only db 0
        parts.append(f"db={int(db.strip('/'))}")
    if password:
        parts.append(f"password={unquote(password)}")
    if username:
        parts.append(f"username={unquote(username)}")
    if scheme == "rediss":
        parts.append("ssl=true")
    config: dict = {"type": "redis", "connection_string": ",".join(parts)}
    if cluster:
        config["redis_type"] = "redis_cluster"
    ttl = parse_qs(query).get("key_ttl_seconds")
    seconds = int(ttl[0]) if ttl else default_key_ttl_seconds()
    if seconds > 0:
        config["key_ttl_seconds"] = seconds
    return config


def online_store_config(settings: Settings) -> dict:
    """Feast online store config: ``sqlite`` (embedded, under the home) or a Redis URL."""
    spec = settings.online_store.strip()
    if spec == "sqlite":
        return {"type": "sqlite", "path": str(settings.online_store_path)}
    if spec.startswith("redis"):
        return redis_online_store_config(spec)
    raise ValueError(
        f"unknown online store {redact(spec)!r}: use 'sqlite' or a Redis URL such as "
        "redis://127.0.0.1:6379/0"
    )


def repo_config(settings: Settings) -> RepoConfig:
    """The Feast configuration of one home (what ``feature_store.yaml`` says for the defaults)."""
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry=registry_config(settings),
        online_store=online_store_config(settings),
        offline_store={"type": settings.offline_store},
        entity_key_serialization_version=3,
        repo_path=FEATURE_REPO_DIR,
    )


def feature_store(settings: Settings) -> FeatureStore:
    """A FeatureStore over ``settings.home`` (creates nothing until something is written)."""
    return FeatureStore(config=repo_config(settings))


# --- apply -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ApplySummary:
    """What :func:`apply` registered."""

    project: str
    registry: str
    online_store: str
    entities: list[str]
    data_sources: list[str]
    feature_views: list[str]
    feature_services: list[str]
    deleted: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        """Plain dict, for printing or JSON."""
        return asdict(self)


def apply(settings: Settings) -> ApplySummary:
    """Register every definition for ``settings.home`` and create the online tables.

    Objects registered earlier but no longer defined (a renamed view, a retired service) are
    deleted with their online tables, as ``feast apply`` does.
    """
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    store = feature_store(settings)
    objects = build_definitions(settings.features_dir)
    wanted = {(type(o).__name__, o.name) for o in objects}
    stale = [
        o
        for o in (
            *store.list_feature_services(),
            *store.list_feature_views(),
            *store.list_entities(),
            *store.list_data_sources(),
        )
        if (type(o).__name__, o.name) not in wanted
    ]
    store.apply(objects, objects_to_delete=stale, partial=False)
    online_format.cluster_sqlite_tables(
        store.config, [o for o in objects if isinstance(o, FeatureView)]
    )
    kinds: dict[str, list[str]] = {}
    for o in objects:
        kinds.setdefault(type(o).__name__, []).append(o.name)
    return ApplySummary(
        project=store.project,
        registry=redact(store.config.registry.path),
        online_store=store.config.online_store.type,
        entities=kinds.get("Entity", []),
        data_sources=kinds.get("FileSource", []),
        feature_views=kinds.get("FeatureView", []),
        feature_services=kinds.get("FeatureService", []),
        deleted=[f"{type(o).__name__}:{o.name}" for o in stale],
    )


# --- materialize -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ViewMaterialization:
    """One feature view's share of a materialization."""

    view: str
    after: datetime | None
    """Exclusive lower bound: the previous materialization's end (None: from the beginning)."""
    end: datetime
    rows: int
    """Snapshot rows written: one per customer, the latest in (after, end]."""
    features: int
    seconds: float


@dataclass(frozen=True)
class MaterializeReport:
    """What :func:`materialize` wrote and how fast."""

    method: str
    online_store: str
    end: datetime
    views: list[ViewMaterialization]
    customers: int
    """Distinct customers written in at least one view."""
    seconds: float
    live_events: int | None = None
    """Events the live state was rebuilt from (None: not rebuilt); not counted in ``seconds``."""

    @property
    def rows(self) -> int:
        """Snapshot rows written over all views."""
        return sum(v.rows for v in self.views)

    @property
    def feature_values(self) -> int:
        """Feature values written (rows × the view's features, summed over views)."""
        return sum(v.rows * v.features for v in self.views)

    @property
    def customers_per_second(self) -> float:
        """Distinct customers written per second of wall time."""
        return self.customers / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict:
        """Plain dict with the derived totals, for printing or JSON."""
        out = asdict(self)
        out.update(
            rows=self.rows,
            feature_values=self.feature_values,
            customers_per_second=round(self.customers_per_second, 1),
        )
        return out


def latest_snapshots(
    path,
    columns: list[str],
    after: datetime | None,
    end: datetime,
    bucket: tuple[int, int] | None = None,
) -> pa.Table:
    """The latest snapshot per customer with ``after < event_timestamp <= end``, by customer.

    Ties on the event timestamp go to the newest ``created_timestamp``, as in Feast's own
    materialization. The result holds ``columns`` (customer id and timestamps included).
    ``bucket`` ``(b, n)`` keeps only the customers of hash bucket ``b`` of ``n``
    (:func:`data_layer.partitioned_build.bucket_sql`). DuckDB streams the file through the
    filter and keeps one row per customer (spilling to disk past its memory limit), so memory
    holds the result, not every snapshot of the file.
    """
    where = [f"{TIMESTAMP} <= $end"]
    params = {"end": _as_utc(end)}
    if after is not None:
        where.append(f"{TIMESTAMP} > $after")
        params["after"] = _as_utc(after)
    if bucket is not None:
        index, count = bucket
        where.append(f"{bucket_sql(JOIN_KEY, count)} = {int(index)}")
    listing = ", ".join(f'"{c}"' for c in columns)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        table = con.execute(
            f"""
            SELECT {listing} FROM read_parquet('{Path(path).as_posix()}')
            WHERE {" AND ".join(where)}
            QUALIFY row_number() OVER (
                PARTITION BY {JOIN_KEY} ORDER BY {TIMESTAMP} DESC, {CREATED} DESC) = 1
            ORDER BY {JOIN_KEY}
            """,
            params,
        ).to_arrow_table()
    finally:
        con.close()
    schema = pq.read_schema(path)
    return table.cast(pa.schema([schema.field(c) for c in columns]))


def materialize(
    settings: Settings,
    end: datetime | None = None,
    *,
    method: str = "bulk",
    live_state: bool = True,
) -> MaterializeReport:
    """Load the snapshots newer than the last materialization into the online store.

    For each view only the latest snapshot per customer in (previous end, ``end``] is written
    (that is what the online store serves), and the interval is recorded in the registry, so
    Feast's own ``materialize-incremental`` continues from the same point. ``end`` defaults to
    now. ``method`` picks the write path (see :data:`METHODS`). ``live_state`` also rebuilds
    the live state from the event store (:meth:`LiveState.bootstrap`, as of ``end`` when given),
    so that live events continue from exactly what the batch saw.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    requested_end = end
    end = _as_utc(end) if end is not None else datetime.now(UTC)
    store = feature_store(settings)
    config = store.config
    started = time.perf_counter()
    after: dict[str, datetime | None] = {}
    views = []
    for view in store.list_feature_views(allow_cache=False):
        previous = _as_utc(view.most_recent_end_time) if view.most_recent_end_time else None
        if previous is not None and previous >= end:
            continue
        path = snapshot_path(settings.features_dir, view.name)
        if not path.exists():
            raise FileNotFoundError(
                f"no snapshots for view {view.name!r} at {path}: build the features first"
            )
        after[view.name] = previous
        views.append(view)

    def load(view: FeatureView) -> pa.Table:
        columns = [JOIN_KEY, TIMESTAMP, CREATED] + [f.name for f in view.features]
        return latest_snapshots(
            snapshot_path(settings.features_dir, view.name), columns, after[view.name], end
        )

    if method == "bulk" and online_format.sqlite_supported(config):
        written = online_format.write_sqlite_views(config, views, load)
    elif method == "bulk" and config.online_store.type == "redis":
        items = [(view, load(view)) for view in views]
        online_format.write_redis(config, items)
        written = iter(items)
    else:
        written = (
            (view, _write_one(store, view, load(view), after[view.name], end, method))
            for view in views
        )
    results: list[ViewMaterialization] = []
    customers: set[str] = set()
    mark = started
    for view, table in written:
        if method != "feast":  # FeatureStore.materialize records its own interval
            store.registry.apply_materialization(
                view, store.project, after[view.name] or _EPOCH, end, commit=True
            )
        customers.update(table.column(JOIN_KEY).to_pylist())
        now = time.perf_counter()
        results.append(
            ViewMaterialization(
                view=view.name,
                after=after[view.name],
                end=end,
                rows=table.num_rows,
                features=len(view.features),
                seconds=round(now - mark, 3),
            )
        )
        mark = now
    seconds = round(time.perf_counter() - started, 3)
    live_events = None
    if live_state:
        with LiveState.open(settings) as state:
            live_events = state.bootstrap(
                None if requested_end is None else pd.Timestamp(_as_utc(requested_end))
            )
    return MaterializeReport(
        method=method,
        online_store=config.online_store.type,
        end=end,
        views=results,
        customers=len(customers),
        seconds=seconds,
        live_events=live_events,
    )


def _write_one(
    store: FeatureStore,
    view: FeatureView,
    table: pa.Table,
    after: datetime | None,
    end: datetime,
    method: str,
) -> pa.Table:
    """Write one view's latest snapshots by ``method``; returns the table written."""
    if method == "feast":
        start = after + timedelta(microseconds=1) if after else _EPOCH
        store.materialize(start_date=start, end_date=end, feature_views=[view.name])
    elif table.num_rows:
        write_online_batch(store, view, table)
    return table


def write_online_batch(store: FeatureStore, view: FeatureView, table: pa.Table) -> None:
    """Feast's supported write path (:func:`data_layer.online_format.write_with_feast`): works
    for every online store Feast supports; the bulk writers are the fast path for SQLite and
    Redis."""
    online_format.write_with_feast(store, view, table)


# --- reads -------------------------------------------------------------------------------------
def service_views(store: FeatureStore, service_name: str) -> dict[str, list[str]]:
    """The feature names a service takes from each view, in service order."""
    service: FeatureService = store.get_feature_service(service_name)
    return {p.name: [f.name for f in p.features] for p in service.feature_view_projections}


def timestamp_column(view: str) -> str:
    """Column of :func:`online_features` holding a view's snapshot time (NaT if absent)."""
    return f"{view}__{TIMESTAMP}"


def online_features(store: FeatureStore, service_name: str, customer_ids) -> pd.DataFrame:
    """Online features of a service: one row per requested id, in request order.

    Columns: ``customer_id``, the features by bare name (float64 with NaN for a null, strings
    as objects with None), ``<view>__event_timestamp`` for each view (the snapshot time served,
    NaT when the customer is absent from that view) and ``known`` (present in at least one
    view). Feast 0.67 serves online values whatever their age, ignoring the view TTL, so
    callers judge staleness from the timestamps (:func:`stale_views`).
    """
    ids = [str(c) for c in customer_ids]
    fields = _service_fields(store, service_name)
    columns: dict[str, object] = {JOIN_KEY: ids}
    stamps: dict[str, object] = {}
    known = np.zeros(len(ids), dtype=bool)
    values: dict[str, list] = {}
    proto = None
    if ids:
        response = store.get_online_features(
            features=store.get_feature_service(service_name),
            entity_rows=[{JOIN_KEY: c} for c in ids],
        )
        values = response.to_dict()
        proto = response.proto
    position = {n: i for i, n in enumerate(proto.metadata.feature_names.val)} if proto else {}
    for view, view_fields in fields.items():
        for f in view_fields:
            columns[f.name] = _typed(values.get(f.name, []), f.dtype)
        if proto is None:
            present = np.zeros(0, dtype=bool)
            seconds = np.zeros(0, dtype="int64")
        else:
            result = proto.results[position[view_fields[0].name]]
            times, stored = online_format.stored_rows(result)
            seconds = np.array(times, dtype="int64")
            present = np.array(stored, dtype=bool)
        served = pd.Series(pd.to_datetime(seconds, unit="s", utc=True))
        stamps[timestamp_column(view)] = served.where(present)
        known |= present
    return pd.DataFrame({**columns, **stamps, "known": known})


def _service_fields(store: FeatureStore, service_name: str) -> dict[str, list]:
    """The feature fields (name and dtype) a service takes from each view, in service order."""
    service: FeatureService = store.get_feature_service(service_name)
    return {p.name: list(p.features) for p in service.feature_view_projections}


def _typed(values: list, dtype) -> pd.Series:
    """Float64 features as float64 (NaN for null), everything else as objects (None)."""
    if dtype == Float64:
        return pd.Series(values, dtype="float64")
    series = pd.Series(values, dtype=object)
    return series.where(series.notna(), None)


def stale_views(frame: pd.DataFrame, now: datetime | None = None) -> pd.DataFrame:
    """Per view, whether the served snapshot is older than the view's TTL (or absent)."""
    now = pd.Timestamp(_as_utc(now) if now else datetime.now(UTC))
    out = pd.DataFrame(index=frame.index)
    for view, ttl in TTLS.items():
        column = timestamp_column(view)
        if column in frame:
            stamps = pd.to_datetime(frame[column], utc=True)
            out[view] = stamps.isna() | (now - stamps > ttl)
    return out


def historical_features(
    store: FeatureStore, service_name: str, entity_df: pd.DataFrame
) -> pd.DataFrame:
    """Point-in-time features of a service: exactly one row per entity row, in entity order.

    ``entity_df`` has ``customer_id`` and ``event_timestamp`` (other columns, e.g. labels, are
    kept). For each view, a row gets the customer's latest snapshot at or before its timestamp
    and within the view's TTL, or nulls.

    Feast 0.67's file offline store drops an entity row when a view has snapshots of that
    customer but all lie after the row's timestamp or beyond the view's TTL, and that drop
    takes the row's other views with it (a customer 30 days after their last snapshot loses
    the profile columns too, though the profile TTL is 90 days). So with that store each view
    is fetched on its own and realigned on a row number: a row a view drops is exactly a row
    with no valid snapshot in that view, i.e. nulls for that view only, and no row is lost or
    reordered. The DuckDB store left-joins every view to the entity rows, so one request
    serves all views; its answer is checked to hold every entity row once. Identical entity
    rows (Feast would keep one) each get the same answer.
    """
    missing = {JOIN_KEY, TIMESTAMP} - set(entity_df.columns)
    if missing:
        raise ValueError(f"entity_df lacks {sorted(missing)}")
    frame = entity_df.reset_index(drop=True).copy()
    frame[JOIN_KEY] = frame[JOIN_KEY].astype(str)
    frame[TIMESTAMP] = pd.to_datetime(frame[TIMESTAMP], utc=True)
    views = service_views(store, service_name)
    dtypes = {f.name: f.dtype for fs in _service_fields(store, service_name).values() for f in fs}
    # Feast keeps one of several identical (customer, timestamp) entity rows: query each pair
    # once and fan the answer back out to every entity row that asked for it.
    pairs = frame[[JOIN_KEY, TIMESTAMP]].drop_duplicates(ignore_index=True)
    pairs[_ROW] = np.arange(len(pairs))
    pair_of_row = frame[[JOIN_KEY, TIMESTAMP]].merge(pairs, how="left")[_ROW].to_numpy()
    # One request per view where the store may drop rows (the file store); one for all
    # views otherwise, its answer checked to hold every entity row exactly once.
    per_view = store.config.offline_store.type == "file"
    batches = [{v: n} for v, n in views.items()] if per_view else [views]
    parts = []
    for batch in batches:
        names = [n for fs in batch.values() for n in fs]
        if pairs.empty:
            part = pd.DataFrame(columns=names)
        else:
            refs = [f"{view}:{name}" for view, fs in batch.items() for name in fs]
            result = store.get_historical_features(entity_df=pairs, features=refs).to_df()
            if result[_ROW].duplicated().any():
                raise RuntimeError(f"Feast returned two rows for one entity row ({list(batch)})")
            if not per_view and len(result) != len(pairs):
                raise RuntimeError(
                    f"the {store.config.offline_store.type} offline store returned {len(result)}"
                    f" rows for {len(pairs)} entity rows; use OMNISCORE_OFFLINE_STORE=file"
                )
            part = result.set_index(_ROW)[names].reindex(np.arange(len(pairs)))
        part = part.iloc[pair_of_row]
        parts.append(pd.DataFrame({n: _typed(part[n].tolist(), dtypes[n]) for n in names}))
    features = pd.concat(parts, axis=1)
    features.index = frame.index
    return pd.concat([frame, features], axis=1)


def _as_utc(ts: datetime) -> datetime:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize(UTC) if ts.tzinfo is None else ts.tz_convert(UTC)
    return ts.to_pydatetime()
