"""A small synthetic home for the training tests: generated events, weekly features, Feast.

Not a test module: the training test files import :func:`build_home` and share one home per
module through a module-scoped fixture, so each file pays for the data once.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from data_layer.feast_store import apply
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


def rebuild_features(settings: Settings) -> None:
    """(Re)compute the weekly snapshots over the standard range."""
    start, end = default_snapshot_range(settings, weeks=SNAPSHOT_WEEKS)
    build_features(settings, start, end)


def snapshot_end(settings: Settings) -> pd.Timestamp:
    """The newest snapshot time of a home."""
    return default_snapshot_range(settings, weeks=1)[1]
