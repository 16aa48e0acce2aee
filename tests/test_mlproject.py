"""``mlflow run . -e train`` (the MLproject's train entry point) against a prebuilt home.

``mlflow run`` creates a run for the entry point and hands its id to ``omniscore train`` as
``MLFLOW_RUN_ID``; the training run must nest under it, register a new version and succeed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from training.model_io import registry_client
from training.runs import launcher_tags

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_launcher_tags_nest_under_the_launching_run() -> None:
    assert launcher_tags({"MLFLOW_RUN_ID": "abc123"}) == {"mlflow.parentRunId": "abc123"}
    assert launcher_tags({}) == {} and launcher_tags({"MLFLOW_RUN_ID": " "}) == {}


@pytest.mark.slow
def test_mlflow_run_train_entry_point_registers_churn(copy_world, tmp_path: Path) -> None:
    settings = copy_world(tmp_path / "home")
    tracking = f"sqlite:///{settings.home / 'mlflow.db'}"
    client = registry_client(tracking)
    before = len(client.search_model_versions("name='omniscore-churn'"))
    env = {
        **os.environ,
        "OMNISCORE_HOME": str(settings.home),
        "MLFLOW_TRACKING_URI": tracking,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # On two busy cores, OpenMP threads wait on each other: one LightGBM thread is faster.
        "OMNISCORE_LGBM_THREADS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    # Run from the tmp folder: the Default experiment's artifact root is the working folder.
    result = subprocess.run(
        [str(BIN / "mlflow"), "run", str(ROOT), "-e", "train", "-P", "model=churn",
         "-P", "trials=2", "-P", "cutoffs=3", "-P", "churn_lookback_days=60", "-P", "min_class=20",
         "--env-manager", "local"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    project_runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        "tags.`mlflow.source.type` = 'PROJECT' and tags.`mlflow.project.entryPoint` = 'train'",
    )
    assert len(project_runs) == 1
    project = project_runs[0]
    assert project.info.status == "FINISHED"
    assert project.data.params == {
        "model": "churn",
        "trials": "2",
        "seed": "42",
        "min_class": "20",
        "cutoffs": "3",
        "churn_lookback_days": "60",
    }

    experiment = client.get_experiment_by_name("omniscore")
    trained = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{project.info.run_id}'"
    )
    assert len(trained) == 1, "omniscore train must nest its run under the mlflow run"
    run = trained[0]
    assert run.info.status == "FINISHED" and run.data.tags["omniscore.model"] == "churn"
    assert run.data.params["trials"] == "2" and run.data.params["horizon_days"] == "60"
    # The data options reached training through the command line's flags.
    assert run.data.params["n_cutoffs"] == "3"
    assert run.data.params["active_lookback_days"] == "60"
    assert "[T-60d, T)" in run.data.tags["omniscore.label_definition"]
    trials = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'"
    )
    assert len(trials) == 2

    versions = client.search_model_versions("name='omniscore-churn'")
    assert len(versions) == before + 1
    new = client.get_model_version_by_alias("omniscore-churn", "challenger")
    assert new.run_id == run.info.run_id
    assert run.data.tags["omniscore.registered_version"] == str(new.version)
