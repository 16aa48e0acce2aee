"""Promotion through the registry: gate, refusal, forced override, rollback, decision tags.

The worse challenger is a real LightGBM model trained on shuffled labels, packaged and
registered exactly as training does; champion and challenger are scored by the default
evaluator (Feast features at the latest out-of-time cutoff).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from training.classifier_job import train_booster
from training.datasets import (
    build_training_set,
    fetch_features,
    latest_complete_cutoff,
)
from training.evaluate import classification_metrics
from training.labels import LabelSpec, label_frame
from training.model_io import (
    SERVICE_TAG,
    ClassifierPackage,
    encode_frame,
    load_version,
    population_stats,
    vocabulary,
    write_classifier_dir,
)
from training.registry import GatePolicy, describe, promote, register_package, rollback
from training.runs import experiment_id
from training.train import train_model
from training.tune import base_params

pytestmark = pytest.mark.slow
NAME = "omniscore-propensity"
# Small test populations make ECE noisy; the AUC rule is what these tests exercise.
POLICY = GatePolicy(auc_tolerance=0.01, max_ece=0.15, min_auc=0.6)


@pytest.fixture(scope="module")
def home(copy_world, tmp_path_factory):
    return copy_world(tmp_path_factory.mktemp("registry-home"))


def _client(settings) -> MlflowClient:
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _register_shuffled_label_model(settings) -> str:
    """A real but useless model: LightGBM fitted to permuted labels, registered normally."""
    ts = build_training_set(settings, "propensity", min_class=20)
    fit = ts.part("fit")
    vocab = {n: vocabulary(fit[n]) for n in ts.categorical}
    x = encode_frame(fit, ts.feature_names, vocab)
    y = np.random.default_rng(0).permutation(fit["label"].to_numpy())
    cats = [ts.feature_names.index(n) for n in ts.categorical]
    booster = train_booster(base_params(0, threads=1), x, y, ts.feature_names, cats, 30)
    pkg = ClassifierPackage(booster, ts.feature_names, vocab, {"a": 1.0, "b": 0.0}, [], [], {})
    pkg.score_quantiles, pkg.band_thresholds, pkg.cold_start = population_stats(
        pkg.predict_proba(fit)
    )
    client = _client(settings)
    exp = experiment_id(client, settings)
    run = client.create_run(exp, run_name="shuffled-labels")
    with tempfile.TemporaryDirectory() as tmp:
        hashes = write_classifier_dir(pkg, Path(tmp) / "pkg", fit.head(20))
        mv = register_package(
            settings, "propensity", Path(tmp) / "pkg", experiment_id=exp,
            run_id=run.info.run_id, hashes=hashes, description="trained on shuffled labels",
            tags={SERVICE_TAG: "propensity_v1", "omniscore.model": "propensity"},
        )  # fmt: skip
    client.set_terminated(run.info.run_id)
    return str(mv.version)


def _alias(settings, alias: str) -> str:
    return str(_client(settings).get_model_version_by_alias(NAME, alias).version)


def test_promotion_gate_force_and_rollback(home):
    client = _client(home)
    first = train_model(home, "propensity", trials=1, seed=5, min_class=20, n_cutoffs=4)
    decision = promote(home, "propensity", policy=POLICY)
    assert decision.promoted and decision.previous_champion is None
    assert "first version" in decision.reason
    assert _alias(home, "champion") == first.version == "1"

    worse = _register_shuffled_label_model(home)
    assert _alias(home, "challenger") == worse == "2"
    refused = promote(home, "propensity", policy=POLICY)
    assert not refused.promoted and _alias(home, "champion") == "1"
    assert refused.challenger_metrics["roc_auc"] < refused.champion_metrics["roc_auc"] - 0.01
    assert refused.evaluated_on.startswith("propensity@")
    tags = client.get_model_version(NAME, worse).tags
    assert tags["promotion.decision"] == "refused" and tags["promotion.from_version"] == "1"
    assert json.loads(tags["promotion.metrics"])["champion"]["roc_auc"] > 0.6

    with pytest.raises(ValueError, match="--force needs --reason"):
        promote(home, "propensity", force=True, policy=POLICY)
    with pytest.raises(ValueError, match="--force needs --reason"):
        promote(home, "propensity", force=True, reason="  ", policy=POLICY)
    forced = promote(home, "propensity", force=True, reason="incident drill", policy=POLICY)
    assert forced.promoted and forced.forced and "incident drill" in forced.reason
    assert _alias(home, "champion") == worse
    assert client.get_model_version(NAME, worse).tags["promotion.decision"] == "forced"
    assert client.get_model_version(NAME, "1").tags["demotion.replaced_by"] == worse

    back = rollback(home, "propensity")
    assert (back.from_version, back.to_version) == (worse, "1")
    assert _alias(home, "champion") == "1"
    assert client.get_model_version(NAME, worse).tags["rollback.restored_version"] == "1"

    better = train_model(home, "propensity", trials=1, seed=5, min_class=20, n_cutoffs=4)
    assert better.version == "3" and _alias(home, "challenger") == "3"
    promoted = promote(home, "propensity", policy=POLICY)
    assert promoted.promoted and not promoted.forced and promoted.previous_champion == "1"
    assert _alias(home, "champion") == "3"
    summary = describe(home, "propensity")
    assert summary["champion"] == "3" and len(summary["versions"]) == 3

    assert rollback(home, "propensity").to_version == "1"
    with pytest.raises(LookupError, match="no previous champion"):
        rollback(home, "propensity")


def _metrics_on_label(settings, name: str, version: str, spec: LabelSpec) -> dict[str, float]:
    """A version's metrics at the latest cutoff complete for ``spec``, computed by hand."""
    model = load_version(settings, name, version)
    labels = label_frame(settings, spec, [latest_complete_cutoff(settings, spec)])
    rows = fetch_features(settings, model.feature_service, labels)
    metrics = classification_metrics(rows["label"].to_numpy(dtype=int), model.predict_proba(rows))
    return {k: round(float(v), 5) for k, v in metrics.items()}


def test_each_version_is_gated_on_the_label_it_was_trained_with(home):
    # A churn model trained on 30-day labels was judged on the default 60-day labels.
    short = train_model(home, "churn", trials=1, seed=5, min_class=20, horizon_days=30, n_cutoffs=4)
    tags = _client(home).get_model_version("omniscore-churn", short.version).tags
    assert tags["omniscore.label_horizon_days"] == "30"
    assert tags["omniscore.label_lookback_days"] == "90"
    first = promote(home, "churn", policy=POLICY)
    thirty_days = LabelSpec("churn", 30, 90)
    assert first.challenger_metrics == _metrics_on_label(
        home, "omniscore-churn", short.version, thirty_days
    )
    assert first.evaluated_on.startswith("churn@") and "label 30d" in first.evaluated_on

    default = train_model(home, "churn", trials=1, seed=5, min_class=20, n_cutoffs=4)
    second = promote(home, "churn", policy=POLICY)
    assert second.challenger_metrics == _metrics_on_label(
        home, "omniscore-churn", default.version, LabelSpec.default("churn")
    )
    assert second.champion_metrics == _metrics_on_label(
        home, "omniscore-churn", short.version, thirty_days
    )
    assert "challenger churn@" in second.evaluated_on and "label 60d" in second.evaluated_on
    assert "champion churn@" in second.evaluated_on and "label 30d" in second.evaluated_on
