"""`omniscore demo` end to end on a small population, through the installed console script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from data_layer.event_store import event_count
from data_layer.feast_store import feature_store, online_features
from data_layer.settings import Settings

pytestmark = pytest.mark.slow
OMNISCORE = Path(sys.executable).with_name("omniscore")


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {**os.environ, "OMNISCORE_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run(
        # Churn's 60-day label window needs about 300 days of history for time splits.
        [str(OMNISCORE), "demo", "--customers", "400", "--days", "330", "--trials", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    settings = Settings.from_env(home)
    assert event_count(settings) > 10_000
    for view in ("channel_activity", "transactions", "profile"):
        assert (settings.features_dir / f"{view}.parquet").exists()
    online = online_features(feature_store(settings), "segments_v1", ["C000001", "C000002"])
    assert online["known"].all(), "demo must leave customers in the online store"
    assert "materialized into sqlite" in result.stdout
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for name in ("omniscore-propensity", "omniscore-churn", "omniscore-segments"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
