"""Paths and backend settings for one OmniScore home.

All state lives under ``$OMNISCORE_HOME`` (default ``./data``). Importing this module does
nothing: callers build a :class:`Settings` explicitly (``Settings.from_env()``) and create
folders only when they write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOME = "data"
FEATURE_REPO_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Settings:
    """Where one OmniScore home keeps its state, and which backend each component uses."""

    home: Path
    mlflow_tracking_uri: str | None = None
    optuna_storage: str | None = None
    online_store: str = "sqlite"
    feast_registry: str | None = None
    feast_project: str = "omniscore"

    @classmethod
    def from_env(cls, home: str | os.PathLike | None = None) -> Settings:
        """Settings from the environment; ``home`` overrides ``$OMNISCORE_HOME``."""
        root = Path(home or os.environ.get("OMNISCORE_HOME") or DEFAULT_HOME).resolve()
        return cls(
            home=root,
            mlflow_tracking_uri=os.environ.get("MLFLOW_TRACKING_URI") or None,
            optuna_storage=os.environ.get("OMNISCORE_OPTUNA_STORAGE") or None,
            online_store=os.environ.get("OMNISCORE_ONLINE_STORE") or "sqlite",
            feast_registry=os.environ.get("OMNISCORE_FEAST_REGISTRY") or None,
            feast_project=os.environ.get("OMNISCORE_FEAST_PROJECT") or "omniscore",
        )

    # --- canonical data ---------------------------------------------------------------
    @property
    def events_dir(self) -> Path:
        """Canonical event store: Parquet files, one per ingest or generate batch."""
        return self.home / "events"

    @property
    def quarantine_dir(self) -> Path:
        """Rejected input rows, each with the reason it was rejected."""
        return self.home / "quarantine"

    @property
    def customers_path(self) -> Path:
        """Profile table: one row per customer (signup date, region, age band, ...)."""
        return self.home / "customers.parquet"

    @property
    def ground_truth_dir(self) -> Path:
        """Simulator truth the models never see (archetypes, latent probabilities)."""
        return self.home / "ground_truth"

    # --- features -----------------------------------------------------------------------
    @property
    def features_dir(self) -> Path:
        """Point-in-time feature snapshots, one Parquet file per feature view."""
        return self.home / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast registry and the embedded SQLite online store."""
        return self.home / "feast"

    @property
    def feast_registry_path(self) -> str:
        """Feast registry: a local file by default, or a SQL URL for a shared registry."""
        return self.feast_registry or str(self.feast_dir / "registry.db")

    @property
    def online_store_path(self) -> Path:
        """SQLite online store file (used when ``online_store`` is ``sqlite``)."""
        return self.feast_dir / "online_store.db"

    # --- training -----------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        """MLflow tracking and registry URI (``MLFLOW_TRACKING_URI`` wins)."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Where MLflow keeps run artifacts for experiments created under this home."""
        return self.home / "mlartifacts"

    @property
    def optuna_storage_url(self) -> str:
        """Optuna study storage (SQLite for one process, PostgreSQL for many workers)."""
        return self.optuna_storage or f"sqlite:///{self.home / 'optuna.db'}"

    def ensure_dirs(self) -> None:
        """Create the home's folders; called by commands that write, never on import."""
        for path in (
            self.home,
            self.events_dir,
            self.quarantine_dir,
            self.ground_truth_dir,
            self.features_dir,
            self.feast_dir,
            self.mlflow_artifacts_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
