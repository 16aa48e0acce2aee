"""The generated test world and the homes made from it (not a test module).

:func:`build_home` generates a world (events, customers, ground truth), builds its weekly
feature snapshots and applies the Feast repository. Building one takes seconds, so
``tests/conftest.py`` builds the standard 500-customer world once per session
(``world_template``) and each module works on a private copy (:func:`copy_home`).
:func:`new_mlflow_db` does the same for MLflow's SQLite schema, which MLflow takes seconds
to create and which a file copy reproduces at once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from data_layer.feast_store import apply, feature_store
from data_layer.feature_pipeline import build_features, default_snapshot_range
from data_layer.settings import Settings
from data_layer.synthetic import generate, write_generated

SMALL_CUSTOMERS = 500
SMALL_DAYS = 300
SNAPSHOT_WEEKS = 32
"""Weekly snapshots over the last 32 weeks: enough for churn's 60-day train/valid/test gaps."""


def build_home(
    path: Path, n_customers: int = SMALL_CUSTOMERS, days: int = SMALL_DAYS, seed: int = 5
) -> Settings:
    """Generate a world, build weekly feature snapshots and apply the Feast repo."""
    settings = Settings.from_env(path)
    settings.ensure_dirs()
    write_generated(settings, generate(n_customers, days, seed))
    rebuild_features(settings)
    apply(settings)
    return settings


def copy_home(source: Settings, target: Path) -> Settings:
    """A private copy at ``target`` of the home built at ``source``, ready to change.

    Feast's registry records each data source by its absolute path, so the copy is applied
    again: its feature views then read the copy's snapshots, never the source's (checked
    here). MLflow records absolute artifact locations: in a copy of a home that already has
    experiments, registered versions load from the source home's artifact folder and new
    runs of those experiments write there (under their own run ids). Tests never delete
    artifacts, so the two homes still cannot change each other's models.
    """
    shutil.copytree(source.home, target, dirs_exist_ok=True)
    settings = Settings.from_env(target)
    apply(settings)
    paths = {v.batch_source.path for v in feature_store(settings).list_feature_views()}
    outside = {p for p in paths if not Path(p).resolve().is_relative_to(settings.features_dir)}
    assert not outside, f"Feast still reads the source home's snapshots: {sorted(outside)}"
    return settings


def new_mlflow_db(template: Path, path: Path) -> str:
    """A fresh MLflow tracking database at ``path`` (a copy of ``template``, a database
    holding only the schema MLflow created); returns its ``sqlite:///`` URI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def create_mlflow_schema(path: Path) -> Path:
    """Let MLflow create its (empty) tracking schema in a SQLite file at ``path``."""
    from mlflow import MlflowClient

    path.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


SERVING_MODELS = ("propensity", "churn", "segments")
SMALL_TRAINING = {"trials": 1, "n_cutoffs": 4, "min_class": 20}
"""A small but real training run: one Optuna trial on four cutoffs (two to train on), not
the default weekly cutoffs over the whole history; about 4x faster for propensity."""


def train_and_promote(settings: Settings, model: str, seed: int) -> str:
    """Train a small real model (:data:`SMALL_TRAINING`), register it and force it to
    champion; returns its version. Churn gets a 30-day horizon (the history is short)."""
    from training.registry import promote
    from training.train import train_model

    extra = {"horizon_days": 30} if model == "churn" else {}
    result = train_model(settings, model, seed=seed, **SMALL_TRAINING, **extra)
    decision = promote(settings, model, force=True, reason="serving tests")
    assert decision.promoted
    return result.version


def rebuild_features(settings: Settings) -> None:
    """(Re)compute the weekly snapshots over the standard range."""
    start, end = default_snapshot_range(settings, weeks=SNAPSHOT_WEEKS)
    build_features(settings, start, end)


def snapshot_end(settings: Settings) -> pd.Timestamp:
    """The newest snapshot time of a home."""
    return default_snapshot_range(settings, weeks=1)[1]
