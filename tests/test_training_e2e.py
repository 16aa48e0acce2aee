"""End to end on a small generated home: real Feast, real MLflow (SQLite), real Optuna.

Runs, nested trials, metrics, artifacts, registered versions and aliases, the serving
loader's contract (percentiles, bands, SHAP contributions, SHA-256 check) and determinism.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from data_layer.settings import Settings
from training.datasets import build_training_set, segment_frame
from training.model_io import IntegrityError, load_champion, load_version
from training.train import MEMORY_STORAGE, train_model

pytestmark = pytest.mark.slow
TRIALS = 3
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def home(copy_world, tmp_path_factory):
    return copy_world(tmp_path_factory.mktemp("e2e-home"))


@pytest.fixture(scope="module")
def trained(home):
    return {
        "propensity": train_model(
            home, "propensity", trials=TRIALS, seed=3, min_class=20, n_cutoffs=4
        ),
        "segments": train_model(home, "segments", trials=TRIALS, seed=3),
    }


def _client(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def test_parent_run_nested_trials_metrics_and_lineage(home, trained):
    client = _client(home)
    result = trained["propensity"]
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    for key in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift"):
        assert np.isfinite(run.data.metrics[f"test_{key}"])
    assert 0.6 < run.data.metrics["test_roc_auc"] <= 1.0
    for key in ("rfm_test_roc_auc", "gain_over_rfm", "gain_over_best_single_channel",
                "best_single_channel_test_roc_auc", "oracle_auc", "shap_channel_web"):  # fmt: skip
        assert key in run.data.metrics
    tags = run.data.tags
    assert tags["omniscore.feature_service"] == "propensity_v1"
    assert "any purchase" in tags["omniscore.label_definition"]
    assert tags["omniscore.cutoffs"].startswith("train=")
    assert tags["omniscore.seed"] == "3" and tags["omniscore.event_data_hash"]
    # The commit of the code that trained the model: this checkout's HEAD.
    head = subprocess.run(
        ["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT), "rev-parse", "HEAD"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert len(head) == 40 and tags["omniscore.git_commit"] == head
    assert tags["mlflow.source.git.commit"] == head
    children = client.search_runs(
        [result.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == TRIALS
    assert all("objective" in c.data.metrics and c.data.params for c in children)
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "evaluation")}
    for name in ("roc_curve.png", "pr_curve.png", "calibration_curve.png", "gains_lift.png",
                 "importance.png", "shap_features.png", "shap_channels.png"):  # fmt: skip
        assert f"evaluation/{name}" in artifacts
    experiment = client.get_experiment(result.experiment_id)
    assert experiment.artifact_location.startswith(home.mlflow_artifacts_dir.as_uri())


def test_registered_version_alias_and_the_serving_loader(home, trained):
    client = _client(home)
    result = trained["propensity"]
    mv = client.get_model_version_by_alias("omniscore-propensity", "challenger")
    assert str(mv.version) == result.version == "1"
    assert "trained on" in mv.description and "propensity_v1" in mv.description
    assert json.loads(mv.tags["omniscore.sha256"])["model.lgb"]
    model = load_version(home, "omniscore-propensity", mv.version)
    assert model.feature_service == "propensity_v1" and len(model.feature_names) == 124
    ts = build_training_set(home, "propensity", min_class=20)
    rows = ts.part("test")
    p = model.predict_proba(rows)
    assert p.shape == (len(rows),) and ((p > 0) & (p < 1)).all()
    contrib = model.contributions(rows.head(50))
    assert contrib.shape == (50, 125)
    assert np.allclose(contrib.sum(axis=1), model.raw_score(rows.head(50)), atol=1e-6)
    pct = model.score_percentile(p)
    assert ((pct >= 0) & (pct <= 100)).all() and np.corrcoef(p, pct)[0, 1] > 0.9
    assert set(model.band(p)) <= {"low", "medium", "high"}
    assert model.cold_start["band"] in ("low", "medium", "high")


def test_tampered_artifact_is_refused(home, trained, tmp_path):
    client = _client(home)
    location = client.get_model_version_download_uri("omniscore-propensity", "1")
    booster = Path(location.removeprefix("file://")) / "model.lgb"
    original = booster.read_bytes()
    try:
        booster.write_bytes(original.replace(b"learning_rate", b"learning_ratE", 1))
        with pytest.raises(IntegrityError, match="model.lgb"):
            load_version(home, "omniscore-propensity", "1")
    finally:
        booster.write_bytes(original)
    assert load_version(home, "omniscore-propensity", "1").version == "1"


def test_segments_registered_with_names_ids_and_cold_start(home, trained):
    result = trained["segments"]
    assert result.metrics["n_segments"] >= 3 and "ari_archetypes" in result.metrics
    model = load_champion(home, "segments", alias="challenger")
    assert model.kind == "segments" and model.feature_service == "segments_v1"
    frame, _ = segment_frame(home)
    ids, names = model.assign(frame)
    assert set(ids) <= set(model.segments.ids) and len(set(names)) >= 2
    assert model.cold_start["segment_id"] in model.segments.ids
    artifacts = {a.path for a in _client(home).list_artifacts(result.run_id, "evaluation")}
    assert {"evaluation/segment_profiles.csv", "evaluation/segments_vs_population.png"} <= artifacts


def test_same_seed_same_metrics(home):
    runs = [
        train_model(
            home,
            "churn",
            trials=2,
            seed=11,
            min_class=20,
            n_cutoffs=4,
            register=False,
            storage_url=MEMORY_STORAGE,
            experiment="determinism",
        )  # fmt: skip
        for _ in range(2)
    ]
    timing = lambda k: k.startswith("time_") or k == "tuning_overhead_ratio"  # noqa: E731
    first, second = ({k: v for k, v in r.metrics.items() if not timing(k)} for r in runs)
    assert first == second
    assert runs[0].run_id != runs[1].run_id and runs[0].trials_run == 2


def test_artifacts_land_under_the_configured_artifact_root(home, tmp_path, mlflow_db):
    shared = tmp_path / "shared-artifacts"
    env = {
        "OMNISCORE_MLFLOW_ARTIFACTS": str(shared),
        "MLFLOW_TRACKING_URI": mlflow_db(tmp_path / "mlflow.db"),
    }
    settings = Settings.from_env(home.home, env=env)
    result = train_model(settings, "segments", trials=1, seed=3, storage_url=MEMORY_STORAGE)
    client = _client(settings)
    assert client.get_experiment(result.experiment_id).artifact_location == shared.as_uri()
    run = client.get_run(result.run_id)
    assert run.info.artifact_uri.startswith(shared.as_uri())
    charts = {p.name for p in (shared / result.run_id / "artifacts" / "evaluation").iterdir()}
    assert "segment_profiles.csv" in charts
    (package,) = shared.rglob("segments.json")  # the registered model package
    source = client.get_model_version(result.registered_name, result.version).source
    assert source.startswith(shared.as_uri()) and package.parent.as_uri().startswith(source)
    assert not any(home.mlflow_artifacts_dir.rglob(result.run_id))
