"""Production backends against real servers: Redis online store, PostgreSQL for the Feast
registry, MLflow and Optuna, and distributed tuning.

Every test runs on its own PostgreSQL database (``omniscore_test_<uuid>``, dropped afterwards)
and its own Feast project (the suffix of its Redis keys, deleted afterwards). Without the
servers the tests skip with the reason; ``OMNISCORE_REQUIRE_SERVICES=1`` turns that into a
failure. Tuning tests use the segments model: its trials take a second, where a LightGBM
trial on a loaded two-core machine can take a minute, and the orchestration under test is
the same for every model. Tests that train or tune are also marked ``slow``; the generated
home is a private copy of the session's world (``copy_world`` in conftest.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import psycopg2
import pytest
import redis
from conftest import SNAPSHOT_TIMES, PostgresDatabases
from mlflow import MlflowClient
from optuna.trial import TrialState
from typer.testing import CliRunner

from data_layer import feast_store
from data_layer.settings import ENV_VARS, Settings
from feature_repo.catalog import VIEWS
from feature_repo.feature_views import TTLS
from omniscore.cli import app
from omniscore.doctor import doctor, format_checks
from training import tune
from training.classifier_job import ClassifierData
from training.distributed import (
    logged_trial_numbers,
    prepare_storage,
    start_worker,
    train_with_workers,
)
from training.labels import LabelSpec
from training.registry import (
    GatePolicy,
    _point_challenger_at_newest,
    _set_alias_checked,
    promote,
    register_package,
    rollback,
)
from training.runs import experiment_id
from training.train import run_tuning_worker, train_model

pytestmark = pytest.mark.services

SERVICES = ("propensity_v1", "churn_v1", "segments_v1")
SEGMENTS = "omniscore-segments"
# Small test populations: the gate's absolute minimum is not what these tests exercise.
POLICY = GatePolicy(min_silhouette=0.0, silhouette_tolerance=0.05)
T3 = SNAPSHOT_TIMES[2]
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def home(services, copy_world, tmp_path_factory) -> Settings:
    """A small generated home (events, weekly snapshots, Feast applied on SQLite)."""
    return copy_world(tmp_path_factory.mktemp("production-home"))


@pytest.fixture(scope="module")
def mlflow_template(services):
    """A database holding MLflow's empty schema, copied by each MLflow test (fast CREATE)."""
    databases = PostgresDatabases(services["postgres"])
    url = databases.create()
    # A child process creates the schema, so no connection outlives it: a template database
    # must have no sessions when it is copied.
    subprocess.run(
        [sys.executable, "-c", f"from mlflow import MlflowClient; MlflowClient({url!r})"
         ".search_experiments()"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    yield url.rsplit("/", 1)[1]
    databases.drop_all()


def _client(settings: Settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _pg_rows(url: str, sql: str) -> list[tuple]:
    conn = psycopg2.connect(url.replace("postgresql+psycopg://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def _copy_snapshots(source: Settings, target: Settings) -> Settings:
    target.features_dir.mkdir(parents=True, exist_ok=True)
    for path in source.features_dir.glob("*.parquet"):
        (target.features_dir / path.name).write_bytes(path.read_bytes())
    return target


# --- Feast on Redis -----------------------------------------------------------------------------
def test_redis_serves_every_value_sqlite_serves(home, services, redis_project, tmp_path):
    sqlite_home = _copy_snapshots(home, Settings.from_env(tmp_path / "sqlite"))
    redis_home = _copy_snapshots(
        home,
        replace(
            Settings.from_env(tmp_path / "redis"),
            online_store=services["redis"],
            feast_project=redis_project,
        ),
    )
    reports = {}
    for name, settings in (("sqlite", sqlite_home), ("redis", redis_home)):
        feast_store.apply(settings)
        # Feast's rows only: the live state's Redis keys are not per Feast project.
        reports[name] = feast_store.materialize(settings, live_state=False)
    assert reports["redis"].online_store == "redis"
    assert reports["redis"].rows == reports["sqlite"].rows > 0

    customers = pd.read_parquet(home.features_dir / "profile.parquet", columns=["customer_id"])
    ids = sorted(customers["customer_id"].unique())
    sample = list(np.random.default_rng(3).choice(ids, size=100, replace=False)) + ["nobody"]
    stores = {
        "sqlite": feast_store.feature_store(sqlite_home),
        "redis": feast_store.feature_store(redis_home),
    }
    for service in SERVICES:
        frames = {k: feast_store.online_features(s, service, sample) for k, s in stores.items()}
        assert frames["sqlite"]["known"].sum() == 100 and not frames["sqlite"]["known"].iloc[-1]
        pd.testing.assert_frame_equal(frames["redis"], frames["sqlite"], check_exact=True)

    client = redis.Redis.from_url(services["redis"])
    keys = list(client.scan_iter(match=b"*" + redis_project.encode(), count=1000))
    assert len(keys) == len(ids)
    longest = max(TTLS.values()).total_seconds()
    ttls = [client.ttl(k) for k in keys[:50]]
    assert all(longest - 60 < t <= longest for t in ttls), ttls


# --- Feast registry on PostgreSQL ---------------------------------------------------------------
_SECOND_PROCESS = """
import json, sys
from datetime import datetime
from data_layer import feast_store as store
from data_layer.settings import Settings

settings = Settings.from_env()
fs = store.feature_store(settings)
views = {v.name: v.most_recent_end_time.isoformat() for v in fs.list_feature_views()}
services = sorted(s.name for s in fs.list_feature_services())
online = store.online_features(fs, "churn_v1", ["c1"])
report = store.materialize(settings, end=datetime.fromisoformat(sys.argv[1]))
print(json.dumps({"views": views, "services": services, "registry": report.online_store,
                  "tenure_c1": float(online.loc[0, "tenure_days"]), "rows": report.rows}))
"""


def test_postgres_registry_is_shared_by_a_second_process(snapshot_home, postgres_db):
    url = postgres_db()
    settings = replace(snapshot_home.settings, feast_registry=url)
    summary = feast_store.apply(settings)
    assert summary.registry.startswith("postgresql+psycopg://")
    assert sorted(summary.feature_views) == sorted(VIEWS)
    first_end = SNAPSHOT_TIMES[1] + DAY
    feast_store.materialize(settings, end=first_end)
    tables = {r[0] for r in _pg_rows(url, "SELECT tablename FROM pg_tables")}
    assert {"feature_views", "feature_services", "entities"} <= tables

    env = {
        **os.environ,
        "OMNISCORE_HOME": str(settings.home),
        "OMNISCORE_FEAST_REGISTRY": url,
        "OMNISCORE_ONLINE_STORE": "sqlite",
    }
    env.pop("OMNISCORE_PROFILE", None)
    second_end = T3 + DAY
    out = subprocess.run(
        [sys.executable, "-c", _SECOND_PROCESS, second_end.isoformat()],
        env=env, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    # The reader sees what this process wrote...
    assert set(seen["views"]) == set(VIEWS)
    assert set(seen["views"].values()) == {first_end.isoformat()}
    assert seen["services"] == sorted(SERVICES)
    expected = snapshot_home.latest("profile", "c1", first_end)["tenure_days"]
    assert seen["tenure_c1"] == expected
    # ...and this process sees what the second one wrote (its materialization interval).
    assert seen["rows"] > 0
    store = feast_store.feature_store(settings)
    ends = {v.most_recent_end_time for v in store.list_feature_views(allow_cache=False)}
    assert ends == {second_end.to_pydatetime()}


# --- MLflow on PostgreSQL -----------------------------------------------------------------------
@pytest.mark.slow
def test_mlflow_on_postgres_trains_promotes_and_rolls_back(
    home, postgres_db, mlflow_template, tmp_path
):
    artifacts = tmp_path / "shared-artifacts"
    settings = replace(
        home,
        mlflow_tracking_uri=postgres_db(template=mlflow_template),
        optuna_storage=postgres_db(),
        mlflow_artifacts=str(artifacts),
    )
    first = train_model(settings, "segments", trials=3, seed=7)
    assert first.version == "1" and first.trials_run == 3
    client = _client(settings)
    assert client.get_experiment(first.experiment_id).artifact_location == artifacts.as_uri()
    assert any(artifacts.rglob("segments.json"))
    children = client.search_runs(
        [first.experiment_id], f"tags.mlflow.parentRunId = '{first.run_id}'"
    )
    assert len(children) == 3

    decision = promote(settings, "segments", policy=POLICY)
    assert decision.promoted and decision.champion_after == "1"
    second = train_model(settings, "segments", trials=3, seed=7)
    assert second.version == "2" and second.trials_run == 0  # the study already had 3 trials
    assert promote(settings, "segments", policy=POLICY).champion_after == "2"
    back = rollback(settings, "segments")
    assert (back.from_version, back.to_version) == ("2", "1")

    # The registry state lives in PostgreSQL, as another process reading it would see it.
    aliases = dict(
        _pg_rows(
            settings.tracking_uri,
            f"SELECT alias, version FROM registered_model_aliases WHERE name = '{SEGMENTS}'",
        )
    )
    assert aliases == {"champion": 1, "challenger": 2}
    studies = _pg_rows(settings.optuna_storage_url, "SELECT study_name FROM studies")
    assert [s for (s,) in studies] == [first.study_name]


def _register_when_released(settings: Settings, barrier, versions: list) -> None:
    """One training job's registration: a run and a tiny package, registered on release."""
    client = _client(settings)
    exp = experiment_id(client, settings, "concurrent")
    run = client.create_run(exp, run_name=f"job-{threading.get_ident()}")
    with tempfile.TemporaryDirectory() as tmp:
        package = Path(tmp) / "package"
        package.mkdir()
        (package / "model.txt").write_text(f"model of job {run.info.run_id}\n")
        barrier.wait(timeout=120)
        mv = register_package(
            settings, "propensity", package, experiment_id=exp, run_id=run.info.run_id,
            hashes={"model.txt": "not-checked"}, description="concurrent registration",
            tags={"omniscore.feature_service": "propensity_v1"},
        )  # fmt: skip
    versions.append(str(mv.version))


def test_two_concurrent_registrations_get_distinct_versions(postgres_db, mlflow_template, tmp_path):
    # Two jobs released by one barrier: each has its own database connection, so PostgreSQL
    # sees two transactions racing for the next version number of one model.
    url = postgres_db(template=mlflow_template)
    settings = replace(Settings.from_env(tmp_path / "jobs"), mlflow_tracking_uri=url)
    experiment_id(_client(settings), settings, "concurrent")
    barrier, versions, errors = threading.Barrier(2), [], []

    def job() -> None:
        try:
            _register_when_released(settings, barrier, versions)
        except BaseException as exc:  # reported below, with the version numbers
            errors.append(exc)

    threads = [threading.Thread(target=job) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    assert errors == [] and sorted(versions) == ["1", "2"], (errors, versions)
    registered = _client(settings).search_model_versions("name='omniscore-propensity'")
    assert sorted(int(v.version) for v in registered) == [1, 2]
    assert len({v.run_id for v in registered}) == 2
    # Whichever order the two alias writes landed in, challenger is the newest version.
    challenger = _client(settings).get_model_version_by_alias("omniscore-propensity", "challenger")
    assert str(challenger.version) == "2"


class _InterleavedClient(MlflowClient):
    """A real MLflow client whose next alias write is followed at once by ``other_write`` (a
    write through another client): the interleaving of two jobs, made deterministic."""

    def __init__(self, uri: str, other_write) -> None:
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.other_write = other_write

    def set_registered_model_alias(self, name: str, alias: str, version) -> None:
        super().set_registered_model_alias(name, alias, version)
        if self.other_write is not None:
            write, self.other_write = self.other_write, None
            write()


def test_challenger_ends_on_the_newest_version_and_champion_refuses_a_moved_alias(
    postgres_db, mlflow_template, tmp_path
):
    url = postgres_db(template=mlflow_template)
    name = "omniscore-propensity"
    other = MlflowClient(tracking_uri=url, registry_uri=url)
    other.create_registered_model(name)

    def new_version() -> None:
        other.create_model_version(name, source=str(tmp_path / "package"))

    def challenger() -> str:
        return str(other.get_model_version_by_alias(name, "challenger").version)

    def write_challenger(version: int):
        return lambda: other.set_registered_model_alias(name, "challenger", version)

    new_version(), new_version()
    # Version 2's job writes challenger, and version 1's job lands its write right after:
    # version 2's job reads the alias back behind the newest version and writes again.
    _point_challenger_at_newest(_InterleavedClient(url, write_challenger(1)), name, "2")
    assert challenger() == "2"
    # Version 1's job is so slow that its only write lands after version 2's job is done:
    # it finds a newer version and puts the alias on it.
    _point_challenger_at_newest(other, name, "1")
    assert challenger() == "2"
    new_version()
    # Version 2's job writes, then version 3's job writes: newer than ours, accepted.
    _point_challenger_at_newest(_InterleavedClient(url, write_challenger(3)), name, "2")
    assert challenger() == "3"

    # champion is never corrected silently: a promotion racing another one refuses.
    racing = _InterleavedClient(url, lambda: other.set_registered_model_alias(name, "champion", 1))
    with pytest.raises(RuntimeError, match="moved to version 1 by another writer"):
        _set_alias_checked(racing, name, "champion", "2")
    _set_alias_checked(other, name, "champion", "2")
    assert str(other.get_model_version_by_alias(name, "champion").version) == "2"


@contextmanager
def _alias_created_by_another_job(url: str, name: str, alias: str, version: int):
    """Another job's creation of ``alias``, left uncommitted until the block's end.

    A writer that starts meanwhile reads "no alias yet" and its insert waits on the alias
    table's unique key; the block yields once it waits (a session of this database waits on a
    lock), then commits, and the waiting insert fails on the key: the race of two first
    writes of one alias, made deterministic.
    """
    creator = psycopg2.connect(url)
    try:
        with creator.cursor() as cur:
            cur.execute(
                "INSERT INTO registered_model_aliases (workspace, name, alias, version)"
                " VALUES ('default', %s, %s, %s)",
                (name, alias, version),
            )

        def wait_for_the_racing_write() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND wait_event_type = 'Lock'")  # fmt: skip
                if _pg_rows(url, query)[0][0]:
                    return
                time.sleep(0.05)
            raise TimeoutError("the racing alias write never waited on the uncommitted one")

        yield wait_for_the_racing_write
        creator.commit()
    finally:
        creator.close()


def test_two_first_writes_of_one_alias_at_once(postgres_db, mlflow_template, tmp_path):
    # MLflow writes an alias as a read, then an insert: two jobs that both read "no alias"
    # both insert, and the second used to fail its whole registration on the unique key.
    url = postgres_db(template=mlflow_template)
    name = "omniscore-propensity"
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    client.create_registered_model(name)
    for _ in range(2):
        client.create_model_version(name, source=str(tmp_path / "package"))

    with ThreadPoolExecutor(max_workers=1) as racing_job:
        with _alias_created_by_another_job(url, name, "challenger", 1) as wait_for_racing_write:
            challenger = racing_job.submit(_point_challenger_at_newest, client, name, "2")
            wait_for_racing_write()
        assert challenger.exception(timeout=60) is None
        assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"

        # champion is not corrected: the promotion that lost refuses, with the usual message.
        with _alias_created_by_another_job(url, name, "champion", 1) as wait_for_racing_write:
            champion = racing_job.submit(_set_alias_checked, client, name, "champion", "2")
            wait_for_racing_write()
        with pytest.raises(RuntimeError, match="moved to version 1 by another writer"):
            champion.result(timeout=60)
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"


# --- distributed tuning on PostgreSQL -----------------------------------------------------------
def _study(url: str) -> optuna.Study:
    storage = tune.storage_for(url, heartbeat=None)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


@pytest.mark.slow
def test_three_workers_join_the_study_of_train_with_its_data_options_and_log_every_trial(
    home, postgres_db, mlflow_db, tmp_path
):
    # A non-default horizon, cutoff count and minimum class count change the training rows,
    # hence the study name: a worker left on the defaults would tune (or fail on) another
    # study. Four cutoffs also keep each LightGBM trial small.
    url = postgres_db()
    settings = replace(home, optuna_storage=url, mlflow_tracking_uri=mlflow_db(tmp_path / "m.db"))
    trials, workers = 6, 3
    result = train_with_workers(
        settings, "propensity", trials, workers, seed=23, register=False,
        horizon_days=21, min_class=20, n_cutoffs=4,
    )  # fmt: skip
    study = _study(url)  # exactly one study: every worker computed the same name and joined it
    assert study.study_name == result.study_name
    assert all(t.state in tune.FINISHED for t in study.trials)  # none left RUNNING
    finished = {t.number for t in study.trials if t.state in tune.FINISHED}
    assert trials <= len(finished) <= trials + workers - 1
    assert result.metrics["tuning_workers"] == workers
    assert result.metrics["worker_failures"] == 0
    assert result.metrics["trials_in_study"] == len(finished)
    # Each process counts only the trials it ran, so the counts add up to the study's.
    assert result.trials_run + result.metrics["worker_trials_run"] == len(finished)
    client = _client(settings)
    run = client.get_run(result.run_id)
    assert run.data.tags["omniscore.tuning_workers"] == str(workers)
    assert run.data.params["horizon_days"] == "21" and run.data.params["min_class"] == "20"
    assert run.data.params["n_cutoffs"] == "4"
    assert "[T, T+21d)" in run.data.tags["omniscore.label_definition"]
    assert run.data.metrics["trials_in_study"] == len(finished)
    assert logged_trial_numbers(client, result.experiment_id, result.run_id) == finished


@pytest.mark.slow
def test_tune_worker_command_with_the_options_of_train_fills_the_study_train_then_finds(
    copy_world, postgres_db, monkeypatch, tmp_path
):
    # `train` and `tune-worker` parse the data options with one helper: the workers, started
    # first, bring the study to the trial count, and train then finds it complete.
    home = copy_world(tmp_path / "home")
    secret = "pg-s3cret-of-the-tune-worker"  # trust auth ignores it; it must not be printed
    url = postgres_db().replace("postgres@", f"postgres:{secret}@", 1)
    for name, value in {
        "OMNISCORE_HOME": str(home.home),
        ENV_VARS["optuna_storage"]: url,
        "OMNISCORE_LGBM_THREADS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("OMNISCORE_PROFILE", raising=False)
    runner = CliRunner()
    trials = 3
    options = ["--seed", "5", "--trials", str(trials), "--horizon-days", "30",
               "--min-class", "20", "--cutoffs", "3", "--churn-lookback-days", "45"]  # fmt: skip
    out = runner.invoke(app, ["tune-worker", "churn", *options, "--workers", "2"])
    assert out.exit_code == 0, out.output
    assert secret not in out.output and "postgres:***@127.0.0.1" in out.output
    study = _study(url)
    finished = [t for t in study.trials if t.state in tune.FINISHED]
    assert trials <= len(finished) <= trials + 1
    assert f"(total {len(finished)})" in out.output

    trained = runner.invoke(app, ["train", "churn", *options])
    assert trained.exit_code == 0, trained.output
    assert secret not in trained.output
    # Still one study: the training job found the workers' trials there and ran none.
    (summary,) = optuna.get_all_study_summaries(tune.storage_for(url, heartbeat=None))
    assert summary.study_name == study.study_name and summary.n_trials == len(study.trials)
    client = MlflowClient(tracking_uri=home.tracking_uri)
    experiment = client.get_experiment_by_name("omniscore").experiment_id
    (run,) = client.search_runs([experiment], "tags.`omniscore.model` = 'churn'")
    assert run.data.tags["omniscore.optuna_study"] == study.study_name
    assert run.data.metrics["trials_run"] == 0
    assert run.data.params["n_cutoffs"] == "3" and run.data.params["active_lookback_days"] == "45"
    # Left on the default label, a worker would tune another study.
    default = ClassifierData.build(home, "churn", LabelSpec.default("churn"), 3, 20)
    assert default.study_name(5) != study.study_name

    # No class has 100,000 examples in the small home: the worker refuses to tune, and the
    # command fails.
    failed = runner.invoke(
        app, ["tune-worker", "propensity", "--trials", "2", "--min-class", "100000"]
    )
    assert failed.exit_code == 1 and "1 of 1 worker(s) failed" in failed.output, failed.output


def _kill_mid_trial(url: str, process) -> int | None:
    """SIGKILL ``process`` while it runs a trial with a heartbeat; that trial's number."""
    query = (
        "SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
        "WHERE t.state = 'RUNNING'"
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.is_alive():
        tables = {r[0] for r in _pg_rows(url, "SELECT tablename FROM pg_tables")}
        if "trial_heartbeats" in tables and _pg_rows(url, query):
            os.kill(process.pid, signal.SIGKILL)
            process.join()
            running = _pg_rows(url, query)
            return running[0][0] if running else None
        time.sleep(0.02)
    process.kill()
    process.join()
    return None


@pytest.mark.slow
def test_a_killed_worker_trial_is_failed_and_requeued(home, postgres_db):
    url = postgres_db()
    settings = replace(home, optuna_storage=url, optuna_heartbeat_seconds=1, optuna_grace_seconds=2)
    trials, seed = 4, 13
    prepare_storage(url)
    killed = None
    for _ in range(3):  # a kill that lands between two trials is retried
        worker = start_worker(settings, "segments", trials, seed, threads=1)
        killed = _kill_mid_trial(url, worker)
        if killed is not None:
            break
    assert killed is not None, "no worker was caught mid-trial"
    assert worker.exitcode == -signal.SIGKILL
    assert _study(url).trials[killed].state == TrialState.RUNNING
    time.sleep(settings.optuna_grace_seconds + 0.5)  # the dead worker's heartbeat is now stale

    run_tuning_worker(settings, "segments", trials, seed, url)
    study = _study(url)
    by_number = {t.number: t for t in study.trials}
    assert [t.number for t in study.trials if t.state == TrialState.RUNNING] == []
    assert by_number[killed].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed]
    # The retry repeats whatever parameters the dead trial had drawn before it was killed.
    assert retry.state in tune.FINISHED
    assert by_number[killed].params.items() <= retry.params.items()
    assert len([t for t in study.trials if t.state in tune.FINISHED]) >= trials


# --- doctor -------------------------------------------------------------------------------------
def test_doctor_reports_every_backend_without_credentials(
    home, services, postgres_db, redis_project, caplog
):
    secret = "pg-s3cret-never-printed"  # trust auth ignores it; the doctor must not print it
    db = postgres_db().replace("postgres@", f"postgres:{secret}@", 1)
    settings = replace(
        home,
        online_store=services["redis"],
        feast_project=redis_project,
        feast_registry=db,
        mlflow_tracking_uri=db,
        optuna_storage=db,
    )
    caplog.set_level("DEBUG")
    checks = doctor(settings)
    by_name = {c.component: c for c in checks}
    assert all(c.ok for c in checks), format_checks(checks)
    assert by_name["online store"].backend.startswith("redis redis://")
    assert "PING ok" in by_name["online store"].detail
    for name in ("feast registry", "mlflow tracking", "optuna storage"):
        assert "postgres" in by_name[name].backend and "***@" in by_name[name].backend
    broken = replace(settings, online_store=f"redis://:{secret}@127.0.0.1:1/0")
    failed = {c.component: c for c in doctor(broken, timeout=1)}
    assert not failed["online store"].ok and "***" in failed["online store"].backend
    assert secret not in format_checks(checks) + format_checks(failed.values())
    assert secret not in caplog.text
