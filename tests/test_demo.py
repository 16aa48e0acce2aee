"""The pipeline definition, `omniscore demo` end to end, and the CLI's one-line errors.

The demo runs through the installed console script, as `make demo` does; so does the
serving-configuration check, since a traceback is what a user would otherwise see.
"""

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
from feature_repo.data_sources import snapshot_path
from omniscore.pipeline import STAGE_NAMES, PipelineOptions, run_pipeline, select_stages

OMNISCORE = Path(sys.executable).with_name("omniscore")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "OMNISCORE_HOME": str(home), **extra}
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "OMNISCORE_PROFILE"):
        env.pop(var, None)
    return env


def _statuses(outcomes) -> list[tuple[str, str]]:
    return [(o.stage.name, o.status) for o in outcomes]


# --- the pipeline definition ----------------------------------------------------------------


def test_stages_are_in_data_flow_order_and_selected_by_name() -> None:
    assert STAGE_NAMES == (
        "generate", "features", "apply", "materialize", "train", "promote", "serve"
    )  # fmt: skip
    assert [s.name for s in select_stages("apply", "train")] == ["apply", "materialize", "train"]
    assert [s.name for s in select_stages(until="generate")] == ["generate"]
    with pytest.raises(ValueError, match="unknown stage 'fit'"):
        select_stages(until="fit")
    with pytest.raises(ValueError, match="comes after"):
        select_stages("promote", "features")
    with pytest.raises(ValueError, match="unknown model 'ltv'"):
        run_pipeline(Settings(home=Path("/nonexistent")), options=PipelineOptions(models=("ltv",)))


def test_pipeline_skips_done_stages_and_reruns_everything_after_a_change(tmp_path: Path) -> None:
    settings = Settings.from_env(tmp_path / "home")
    options = PipelineOptions(customers=150, days=120, seed=3, snapshot_weeks=4)
    seen: list[tuple[str, str]] = []
    first = run_pipeline(
        settings, "materialize", options, lambda o: seen.append((o.stage.name, o.status))
    )
    assert _statuses(first) == [(name, "ran") for name in STAGE_NAMES[:4]]
    assert seen == [(name, status) for name in STAGE_NAMES[:4] for status in ("running", "ran")]
    assert first[0].result["customers"] == 150 and event_count(settings) > 0
    assert len(first[1].result.snapshots) == 4
    assert first[3].result.customers > 0 and all(o.seconds > 0 for o in first)
    online = online_features(feature_store(settings), "segments_v1", ["C000001"])
    assert online["known"].all()

    again = run_pipeline(settings, "materialize", options)
    assert _statuses(again) == [(name, "skipped") for name in STAGE_NAMES[:4]]

    # A lost snapshot file: features is built again, and apply and materialize follow it.
    snapshot_path(settings.features_dir, "profile").unlink()
    rebuilt = run_pipeline(settings, "materialize", options)
    assert _statuses(rebuilt) == [
        ("generate", "skipped"), ("features", "ran"), ("apply", "ran"), ("materialize", "ran"),
    ]  # fmt: skip
    assert snapshot_path(settings.features_dir, "profile").exists()

    forced = run_pipeline(settings, "features", options, first="features", rerun=True)
    assert _statuses(forced) == [("features", "ran")]


# --- one-line errors instead of tracebacks --------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("OMNISCORE_API_KEY", "short", "OMNISCORE_API_KEY (api_key) must be at least 16 "),
        ("OMNISCORE_MAX_IDS", "many", "OMNISCORE_MAX_IDS='many' is not a valid int"),
    ],
)
def test_serve_refuses_a_bad_setting_in_one_line(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    result = subprocess.run(
        [str(OMNISCORE), "serve", "--port", "1"],
        env=_env(tmp_path / "home", **{variable: value}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert output.startswith(f"error: {message}") and output.count("\n") == 1, output
    assert "Traceback" not in output


def test_pipeline_refuses_an_unknown_stage_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(OMNISCORE), "pipeline", "--until", "deploy"],
        env=_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "unknown stage 'deploy'" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "home" / "events").exists(), "nothing may run after a bad stage name"


# --- the demo -------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_runs_end_to_end_and_prints_only_its_own_output(tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = subprocess.run(
        # Churn's 60-day label window needs about 300 days of history for time splits; 400
        # customers give about 50 churners over the training cutoffs, hence --min-class 20.
        # Four cutoffs (validation, test, two to train on) keep the run short.
        [
            str(OMNISCORE),
            *("demo", "--customers", "400", "--days", "330", "--trials", "1"),
            *("--min-class", "20", "--cutoffs", "4"),
        ],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    settings = Settings.from_env(home)
    assert event_count(settings) > 10_000
    for view in ("channel_activity", "transactions", "profile"):
        assert (settings.features_dir / f"{view}.parquet").exists()
    online = online_features(feature_store(settings), "segments_v1", ["C000001", "C000002"])
    assert online["known"].all(), "demo must leave customers in the online store"
    assert "materialized into sqlite" in result.stdout
    assert "POST http://127.0.0.1:" in result.stdout
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    for name in ("omniscore-propensity", "omniscore-churn", "omniscore-segments"):
        assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    # Library warnings and log lines go to the log the demo names, not between its lines.
    log = home / "logs" / "omniscore.log"
    assert f"Library warnings and logs: {log}" in " ".join(result.stdout.split())
    assert "Warning" not in output and " INFO " not in output, output
    assert log.stat().st_size > 0

    # Run again, the pipeline finds every stage done and trains nothing.
    again = subprocess.run(
        [str(OMNISCORE), "pipeline", "--until", "promote"],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in STAGE_NAMES[:-1]:
        assert f"· {stage}: already done, skipped" in again.stdout
    versions = client.search_model_versions("name='omniscore-churn'")
    assert [str(v.version) for v in versions] == ["1"]
