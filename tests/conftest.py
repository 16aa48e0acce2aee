"""Shared test fixtures. Keep additions additive: other test modules rely on these.

Tests
-----
Three tiers, one suite (``make test`` runs all; ``make test-fast`` leaves out ``slow``):

- **unit**: pure functions on hand-made values (labels, encoders, the gate rules, the
  generator's determinism, the ingest mapping); milliseconds each.
- **integration**: the real components, never mocks: Feast (apply, materialize, online and
  historical reads), MLflow on SQLite, DuckDB, PostgreSQL and Redis (``services`` marker:
  skipped when the servers are absent unless ``OMNISCORE_REQUIRE_SERVICES=1``).
- **slow** (``@pytest.mark.slow``): everything that trains (Optuna, LightGBM, clustering) or
  runs a whole command end to end: training runs, promotion, distributed tuning, the
  BentoML server over HTTP, ``mlflow run``, ``omniscore demo``, the notebooks, erasure and
  stream consumers killed half-way, and feature builds on Spark.

Shared data is built once per session and copied where a test changes it:
``world_template`` (the 500-customer world of :mod:`training_home`: events, weekly
snapshots, Feast applied) through ``copy_world``; ``mlflow_db`` (MLflow's SQLite schema);
``serving_home`` (a copy of the world, materialized, with small real models registered by
``train_model`` (one trial, four cutoffs) and promoted).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from training_home import (
    SERVING_MODELS,
    build_home,
    copy_home,
    create_mlflow_schema,
    new_mlflow_db,
    train_and_promote,
)

from data_layer.settings import Settings
from feature_repo.catalog import VIEWS, features_of_view
from feature_repo.data_sources import snapshot_path, snapshot_schema

# Every process the tests start (commands, tuning workers, notebook kernels, servers) runs
# optimized, as the server always does (serving.launcher.server_env): Feast's typeguard
# decorators are a no-op under -O, 3 s less at each start. pytest itself was started without it,
# and rewrites the tests' asserts anyway; ruff's S101 keeps assert out of OmniScore's code.
os.environ.setdefault("PYTHONOPTIMIZE", "1")

SERVER_PATH = re.compile(r"(?:/[\w.@+-]+){2,}")
"""Two or more path segments: what a leaked server path looks like in an HTTP answer."""

# --- hand-made feature snapshots (tests/test_feast_store.py) ----------------------------------

SNAPSHOT_TIMES = (
    pd.Timestamp("2026-10-05", tz="UTC"),
    pd.Timestamp("2026-10-12", tz="UTC"),
    pd.Timestamp("2026-10-19", tz="UTC"),
)
"""Three weekly snapshot times T1 < T2 < T3 of the hand-made snapshot set."""

EDGE_FLOATS = (-0.0, math.inf, -math.inf, 1e-300, 1.7976931348623157e308, 0.1, 5e-324, 1e16)
EDGE_STRINGS = ("", "é" * 100, "北京", "x")
SNAPSHOT_PRESENCE = {"c1": (0, 1, 2), "c2": (0, 1, 2), "c3": (0,), "c4": (2,)}
"""Which snapshot times (indexes into SNAPSHOT_TIMES) each hand-made customer has."""


@dataclass
class SnapshotHome:
    """A home holding hand-made snapshot files, and the rows written into them."""

    settings: Settings
    frames: dict[str, pd.DataFrame]
    """Every snapshot row of each view, as read back from its Parquet file."""

    def latest(self, view: str, customer: str, until: pd.Timestamp) -> dict | None:
        """The newest snapshot row of ``customer`` in ``view`` at or before ``until``."""
        frame = self.frames[view]
        hit = frame[(frame["customer_id"] == customer) & (frame["event_timestamp"] <= until)]
        return None if hit.empty else hit.sort_values("event_timestamp").iloc[-1].to_dict()


def _hand_made_value(feature_index: int, dtype: str, customer: str, t: int, shift: float):
    """Known value of one feature: ordinary floats are exact binary fractions."""
    if customer == "c4":  # edge values the online encoding must keep bit for bit
        pool = EDGE_FLOATS if dtype == "float" else EDGE_STRINGS
        return pool[feature_index % len(pool)]
    if customer == "c2" and t == 2 and feature_index % 3 == 0:
        return None
    if dtype == "string":
        return f"{customer}-t{t + 1}-{feature_index}"
    return 100.0 * int(customer[1:]) + 10.0 * t + feature_index / 8 + shift


def write_hand_made_snapshots(home: Path, shift: float = 0.0) -> SnapshotHome:
    """Write every view's snapshot file in the feature pipeline's contract format.

    c1 and c2 have snapshots at T1, T2 and T3 (c2's T3 has nulls), c3 only at T1, c4 only at
    T3 with edge values (-0.0, ±inf, subnormals, empty and multi-byte strings). ``shift`` is
    added to every ordinary float, so two homes can hold different values.
    """
    settings = Settings.from_env(home)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    frames = {}
    for view in VIEWS:
        rows = []
        for customer, times in SNAPSHOT_PRESENCE.items():
            for t in times:
                at = SNAPSHOT_TIMES[t]
                row = {
                    "customer_id": customer,
                    "event_timestamp": at,
                    "created_timestamp": at + pd.Timedelta(hours=3),
                }
                for j, feature in enumerate(features_of_view(view)):
                    row[feature.name] = _hand_made_value(j, feature.dtype, customer, t, shift)
                rows.append(row)
        table = pa.Table.from_pandas(
            pd.DataFrame(rows), schema=snapshot_schema(view), preserve_index=False
        )
        pq.write_table(table, snapshot_path(settings.features_dir, view))
        frames[view] = table.to_pandas()
    return SnapshotHome(settings=settings, frames=frames)


@pytest.fixture
def snapshot_home(tmp_path) -> SnapshotHome:
    """A fresh home under tmp_path with the hand-made snapshot files (nothing applied yet)."""
    return write_hand_made_snapshots(tmp_path / "home")


@pytest.fixture(scope="session")
def make_snapshot_home():
    """Factory for further homes: ``make_snapshot_home(path, shift=0.0) -> SnapshotHome``."""
    return write_hand_made_snapshots


# --- production services: PostgreSQL and Redis (tests/test_production.py) ---------------------

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


def _service_urls() -> tuple[str, str]:
    """Server URLs of the test services (``OMNISCORE_TEST_POSTGRES`` / ``_REDIS`` override)."""
    import os

    return (
        os.environ.get("OMNISCORE_TEST_POSTGRES", POSTGRES_ADMIN_URL),
        os.environ.get("OMNISCORE_TEST_REDIS", REDIS_URL),
    )


def services_unavailable() -> str | None:
    """Why the PostgreSQL or Redis test server does not answer (None when both do)."""
    import psycopg2
    import redis

    from data_layer.settings import redact

    postgres, redis_url = _service_urls()
    try:
        psycopg2.connect(postgres, connect_timeout=3).close()
    except psycopg2.Error as exc:
        return f"PostgreSQL at {redact(postgres)} does not answer: {str(exc).strip()}"
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=3).ping()
    except redis.exceptions.RedisError as exc:
        return f"Redis at {redact(redis_url)} does not answer: {exc}"
    return None


@pytest.fixture(scope="session")
def services() -> dict[str, str]:
    """The PostgreSQL admin URL and the Redis URL, once both servers answer.

    When one does not: skip with the reason, or fail when ``OMNISCORE_REQUIRE_SERVICES=1``
    (what ``.ci/run`` sets), so CI never passes by skipping.
    """
    import os

    reason = services_unavailable()
    if reason:
        if os.environ.get("OMNISCORE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{reason} (OMNISCORE_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(reason)
    postgres, redis_url = _service_urls()
    return {"postgres": postgres, "redis": redis_url}


class PostgresDatabases:
    """Creates databases ``omniscore_test_<uuid>`` on the test server and drops them all."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def url(self, name: str) -> str:
        """SQLAlchemy URL of database ``name`` on the same server."""
        from urllib.parse import urlparse

        return urlparse(self.admin_url)._replace(path=f"/{name}").geturl()

    def _admin(self, sql: str) -> None:
        import psycopg2

        conn = psycopg2.connect(self.admin_url, connect_timeout=5)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def create(self, template: str | None = None) -> str:
        """A new empty database (or a copy of ``template``); returns its URL."""
        import uuid

        name = f"omniscore_test_{uuid.uuid4().hex[:12]}"
        self._admin(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        self.created.append(name)
        return self.url(name)

    def drop_all(self) -> None:
        """Drop every database made here, closing other sessions still connected to it."""
        while self.created:
            self._admin(f'DROP DATABASE IF EXISTS "{self.created.pop()}" WITH (FORCE)')


@pytest.fixture
def postgres_db(services):
    """Factory of fresh PostgreSQL databases for one test, all dropped afterwards."""
    databases = PostgresDatabases(services["postgres"])
    try:
        yield databases.create
    finally:
        databases.drop_all()


@pytest.fixture
def redis_project(services):
    """A unique Feast project name; its keys (Feast's end with it, the live state's start
    with ``omniscore:live:<project>:``) are deleted afterwards."""
    import uuid

    import redis

    from data_layer.live_state import redis_key_prefix

    project = f"omniscore_test_{uuid.uuid4().hex[:12]}"
    yield project
    client = redis.Redis.from_url(services["redis"])
    keys = list(client.scan_iter(match=b"*" + project.encode(), count=1000))
    keys += client.scan_iter(match=f"{redis_key_prefix(project)}*", count=1000)
    if keys:
        client.delete(*keys)
    client.close()


# --- the generated world, built once per session (tests/training_home.py) ----------------------


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder ``name`` that ``build(folder)`` fills, built once per test run.

    Under pytest-xdist (``make test`` runs two workers) every worker asks for the session's
    shared data; the first builds it under a file lock in the run's common temporary folder
    and the others wait, then read the same folder. Everything built here is read-only: tests
    change copies of it.
    """
    import os

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, shared by its workers
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            if folder.exists():  # a build that failed part-way in another worker
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def mlflow_db(tmp_path_factory):
    """Factory of fresh MLflow databases: ``mlflow_db(path) -> "sqlite:///<path>"``.

    MLflow creates its schema once per session (seconds of migrations); each database is a
    copy of that empty one.
    """
    folder = built_once(
        tmp_path_factory, "mlflow-schema", lambda d: create_mlflow_schema(d / "mlflow.db")
    )
    template = folder / "mlflow.db"
    return lambda path: new_mlflow_db(template, Path(path))


@pytest.fixture(scope="session")
def world_template(tmp_path_factory, mlflow_db) -> Settings:
    """The 500-customer world (events, weekly snapshots, Feast applied, an empty MLflow
    database), built once per session. Never change it: take a copy with ``copy_world``."""

    def build(path: Path) -> None:
        settings = build_home(path)
        mlflow_db(settings.home / "mlflow.db")

    return Settings.from_env(built_once(tmp_path_factory, "world-template", build))


@pytest.fixture(scope="session")
def copy_world(world_template):
    """Factory: ``copy_world(path) -> Settings``, a private copy of the world at ``path``."""
    return lambda path: copy_home(world_template, Path(path))


@pytest.fixture(scope="session")
def serving_home(copy_world, tmp_path_factory) -> Settings:
    """A copy of the world, materialized, with propensity, churn and segments trained
    small (``training_home.SMALL_TRAINING``: one Optuna trial, four cutoffs), registered and
    promoted: what the scoring service serves.
    Read-only: a test that promotes, trains or breaks something works on
    ``training_home.copy_home(serving_home, path)``.
    """
    from data_layer.feast_store import materialize

    def build(path: Path) -> None:
        settings = copy_world(path)
        materialize(settings)
        for model in SERVING_MODELS:
            train_and_promote(settings, model, seed=1)

    return Settings.from_env(built_once(tmp_path_factory, "serving-home", build))


# --- test order ---------------------------------------------------------------------------------
SLOWEST_MODULES = (
    "test_notebooks.py",
    "test_production.py",
    "test_serving_api.py",
    "test_forget.py",
    "test_demo.py",
    "test_spark.py",
    "test_live_service.py",
    "test_monitor.py",
    "test_triggers.py",
    "test_registry.py",
    "test_training_e2e.py",
    "test_mlproject.py",
    "test_http_contract.py",
    "test_features.py",
    "test_ui.py",
    "test_live_cache.py",
    "test_training_data.py",
    "test_feast_store.py",
)
"""Modules that take longest (a per-worker timeline of a whole run), slowest first."""


def pytest_collection_modifyitems(config, items) -> None:
    """Run the slowest modules first: ``make test``'s two xdist workers each take whole
    modules in this order (``--no-loadscope-reorder``: xdist would otherwise reorder them by
    their number of tests), so neither is left alone with a long module started last."""
    rank = {name: i for i, name in enumerate(SLOWEST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
