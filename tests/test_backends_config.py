"""Backend configuration without servers: the profile file, precedence, redaction, the Redis
URL mapping and the doctor on the embedded defaults (PostgreSQL and Redis are exercised in
tests/test_production.py)."""

from __future__ import annotations

import inspect
from dataclasses import replace

import pytest
from mlflow import MlflowClient

from data_layer import feast_store
from data_layer.settings import ENV_VARS, PROFILE_NAME, Settings, redact
from feature_repo.feature_views import TTLS
from omniscore.doctor import backends, doctor, format_checks, scrub
from training import tune
from training.distributed import shared_storage, threads_per_worker, worker_kwargs
from training.runs import experiment_id
from training.train import DATA_OPTIONS, run_tuning_worker, train_model
from training.tune import trial_heartbeat

PROFILE = """
online_store = "redis://:${OMNISCORE_TEST_REDIS_PASSWORD}@cache.internal:6380/1"
feast_registry = "postgresql://feast:${OMNISCORE_TEST_PG_PASSWORD}@pg.internal:5432/feast"
mlflow_tracking_uri = "postgresql://mlflow:${OMNISCORE_TEST_PG_PASSWORD}@pg.internal/mlflow"
optuna_storage = "postgresql://optuna:${OMNISCORE_TEST_PG_PASSWORD}@pg.internal/optuna"
mlflow_artifacts = "s3://omniscore-artifacts/mlflow"
feast_project = "shop"
"""
SECRETS = {"OMNISCORE_TEST_REDIS_PASSWORD": "r3d1s-pw", "OMNISCORE_TEST_PG_PASSWORD": "pg-pw-42"}


def test_embedded_defaults_when_nothing_is_set(tmp_path):
    settings = Settings.from_env(tmp_path, env={})
    assert settings.profile is None
    assert settings.online_store == "sqlite" and settings.feast_project == "omniscore"
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.optuna_storage_url == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert settings.feast_registry_path == str(tmp_path / "feast" / "registry.db")
    assert settings.mlflow_artifact_uri == (tmp_path / "mlartifacts").as_uri()
    assert not (tmp_path / "mlartifacts").exists()  # reading settings creates nothing


def test_profile_file_is_read_and_environment_variables_win(tmp_path):
    (tmp_path / PROFILE_NAME).write_text(PROFILE)
    settings = Settings.from_env(tmp_path, env=SECRETS)
    assert settings.profile == tmp_path / PROFILE_NAME
    assert settings.online_store == "redis://:r3d1s-pw@cache.internal:6380/1"
    assert settings.tracking_uri == "postgresql://mlflow:pg-pw-42@pg.internal/mlflow"
    assert settings.feast_project == "shop"
    assert settings.mlflow_artifact_uri == "s3://omniscore-artifacts/mlflow"
    with pytest.raises(ValueError, match="not a local folder"):
        _ = settings.mlflow_artifacts_dir

    env = SECRETS | {ENV_VARS["online_store"]: "sqlite", "MLFLOW_TRACKING_URI": "http://ml:5000"}
    overridden = Settings.from_env(tmp_path, env=env)
    assert overridden.online_store == "sqlite" and overridden.tracking_uri == "http://ml:5000"
    assert overridden.optuna_storage == settings.optuna_storage  # still from the profile


def test_profile_errors_are_clear(tmp_path):
    (tmp_path / PROFILE_NAME).write_text(PROFILE)
    with pytest.raises(ValueError, match=r"uses \$\{OMNISCORE_TEST_REDIS_PASSWORD\}"):
        Settings.from_env(tmp_path, env={})
    (tmp_path / PROFILE_NAME).write_text('online_stor = "sqlite"\n')
    with pytest.raises(ValueError, match="unknown keys \\['online_stor'\\]"):
        Settings.from_env(tmp_path, env={})
    other = tmp_path / "elsewhere.toml"
    other.write_text('feast_project = "from_named_profile"\n')
    named = Settings.from_env(tmp_path / "home", env={"OMNISCORE_PROFILE": str(other)})
    assert named.feast_project == "from_named_profile" and named.profile == other
    with pytest.raises(ValueError, match="does not exist"):
        Settings.from_env(tmp_path, env={"OMNISCORE_PROFILE": str(tmp_path / "missing.toml")})


def test_redaction_hides_every_password_form():
    cases = {
        "postgresql://u:p%40ss@h:5432/db": "postgresql://u:***@h:5432/db",
        "postgresql://u:p@ss@h/db": "postgresql://u:***@h/db",
        "redis://:pw@r:6379/0 and rediss://user:pw2@r2": "redis://:***@r:6379/0 and "
        "rediss://user:***@r2",
        "h:6379,db=2,password=s3cret,ssl=true": "h:6379,db=2,password=***,ssl=true",
        "redis://r?password=abc&x=1": "redis://r?password=***&x=1",
        "postgresql://postgres@127.0.0.1:5432/db": "postgresql://postgres@127.0.0.1:5432/db",
        "sqlite:////tmp/x.db": "sqlite:////tmp/x.db",
    }
    for raw, expected in cases.items():
        assert redact(raw) == expected
    assert scrub('failed for "pg-pw-42" at host', ["pg-pw-42"]) == 'failed for "***" at host'


def test_redis_urls_map_to_feast_with_the_view_ttl(tmp_path):
    longest = int(max(TTLS.values()).total_seconds())
    assert longest == 90 * 86400
    config = feast_store.redis_online_store_config("redis://127.0.0.1:6379/0")
    assert config == {
        "type": "redis",
        "connection_string": "127.0.0.1:6379,db=0",
        "key_ttl_seconds": longest,
    }
    forever = feast_store.redis_online_store_config("redis://h?key_ttl_seconds=0")
    assert "key_ttl_seconds" not in forever
    cluster = feast_store.redis_online_store_config("rediss+cluster://u:p@a:7000,b:7001")
    assert cluster["redis_type"] == "redis_cluster"
    assert cluster["connection_string"] == "a:7000,b:7001,password=p,username=u,ssl=true"
    settings = replace(Settings.from_env(tmp_path, env={}), online_store="rediss+cluster://a:1")
    assert feast_store.repo_config(settings).online_store.redis_type == "redis_cluster"
    with pytest.raises(ValueError) as err:
        feast_store.redis_online_store_config("http://:topsecret@h")
    assert "topsecret" not in str(err.value)


def test_doctor_on_embedded_defaults_and_on_backends_that_do_not_answer(tmp_path):
    settings = Settings.from_env(tmp_path, env={})
    checks = doctor(settings)
    assert [c.component for c in checks] == [
        "configuration", "feast registry", "online store", "offline store", "mlflow tracking",
        "mlflow registry", "mlflow artifacts", "optuna storage", "serving",
    ]  # fmt: skip
    assert all(c.ok for c in checks), format_checks(checks)
    assert "not applied yet" in checks[1].detail
    assert not any(tmp_path.iterdir())  # the doctor only reads

    secret = "do-not-print-me"
    unreachable = replace(
        settings,
        online_store=f"redis://:{secret}@127.0.0.1:1/0",
        mlflow_tracking_uri=f"postgresql://u:{secret}@127.0.0.1:1/mlflow",
        optuna_storage=f"postgresql://u:{secret}@127.0.0.1:1/optuna",
        serving_url="http://127.0.0.1:1",
    )
    failed = {c.component: c for c in doctor(unreachable, timeout=1)}
    for name in ("online store", "mlflow tracking", "mlflow registry", "optuna storage", "serving"):
        assert not failed[name].ok, name
    assert failed["offline store"].ok and failed["feast registry"].ok
    text = format_checks(failed.values())
    assert secret not in text and "u:***@127.0.0.1:1" in text
    assert secret not in str(backends(unreachable))


def test_worker_options_must_match_the_study_of_train(tmp_path, monkeypatch):
    monkeypatch.delenv("OMNISCORE_LGBM_THREADS", raising=False)
    settings = Settings.from_env(tmp_path, env={})
    with pytest.raises(ValueError, match="in-memory study cannot be shared"):
        shared_storage(settings, "memory")
    assert shared_storage(settings, None) == settings.optuna_storage_url
    # Workers take every option of train_model that changes the training rows (the study).
    worker_options = {
        name
        for name, p in inspect.signature(run_tuning_worker).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    assert worker_options == set(DATA_OPTIONS) <= set(inspect.signature(train_model).parameters)
    assert worker_kwargs({"register": False, "experiment": "x", "storage_url": "y"}) == {}
    train_kwargs = {"horizon_days": 21, "churn_lookback_days": 30, "n_cutoffs": 4, "min_class": 20}
    assert worker_kwargs({**train_kwargs, "register": False}) == train_kwargs
    assert threads_per_worker(1, cpus=2) == 2 and threads_per_worker(4, cpus=2) == 1


def test_heartbeat_timing_comes_from_the_environment_or_the_profile(tmp_path):
    defaults = Settings.from_env(tmp_path, env={})
    assert (defaults.optuna_heartbeat_seconds, defaults.optuna_grace_seconds) == (30, 90)
    env = {"OMNISCORE_OPTUNA_HEARTBEAT_SECONDS": "5", "OMNISCORE_OPTUNA_GRACE_SECONDS": "20"}
    assert trial_heartbeat(Settings.from_env(tmp_path, env=env)) == tune.Heartbeat(5, 20)
    (tmp_path / PROFILE_NAME).write_text(
        'optuna_heartbeat_seconds = 10\noptuna_grace_seconds = "${GRACE}"\n'
    )
    profile = Settings.from_env(tmp_path, env={"GRACE": "45"})
    assert trial_heartbeat(profile) == tune.Heartbeat(10, 45)
    overridden = Settings.from_env(tmp_path, env={"GRACE": "45", **env})
    assert trial_heartbeat(overridden) == tune.Heartbeat(5, 20)

    storage = tune.storage_for(f"sqlite:///{tmp_path / 'optuna.db'}", tune.Heartbeat(5, 20))
    assert (storage.heartbeat_interval, storage.grace_period) == (5, 20)
    assert tune.storage_for(f"sqlite:///{tmp_path / 'optuna.db'}", None).heartbeat_interval is None

    bad = {
        "OMNISCORE_OPTUNA_HEARTBEAT_SECONDS=0": r"must be positive, got 0",
        "OMNISCORE_OPTUNA_GRACE_SECONDS=20": r"optuna_grace_seconds .* = 20 must be greater",
        "OMNISCORE_OPTUNA_GRACE_SECONDS=soon": r"must be a whole number of seconds, got 'soon'",
    }
    for assignment, message in bad.items():
        var, value = assignment.split("=")
        wrong = {"OMNISCORE_OPTUNA_HEARTBEAT_SECONDS": "20", "GRACE": "45", var: value}
        with pytest.raises(ValueError, match=message):
            Settings.from_env(tmp_path, env=wrong)
    (tmp_path / PROFILE_NAME).write_text("optuna_grace_seconds = 1.5\n")
    with pytest.raises(ValueError, match="optuna_grace_seconds must be a whole number"):
        Settings.from_env(tmp_path, env={})
    with pytest.raises(ValueError, match="grace > interval"):
        tune.Heartbeat(5, 5)


def test_an_object_store_artifact_root_is_what_mlflow_records(tmp_path, mlflow_db):
    env = {
        "OMNISCORE_MLFLOW_ARTIFACTS": "s3://omniscore-bucket/team/mlflow/",
        "MLFLOW_TRACKING_URI": mlflow_db(tmp_path / "mlflow.db"),
    }
    settings = Settings.from_env(tmp_path / "home", env=env)
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    exp = experiment_id(client, settings, "object-store")
    assert client.get_experiment(exp).artifact_location == "s3://omniscore-bucket/team/mlflow"
    run = client.create_run(exp)  # no artifact is written: nothing reaches the bucket
    assert run.info.artifact_uri.startswith("s3://omniscore-bucket/team/mlflow/")
    assert not (tmp_path / "home").exists()  # no local mlartifacts folder on the side
