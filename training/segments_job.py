"""The clustering training job (segments): choose method and k, fit, name, register.

For a model whose contract kind is ``clustering``: the customers active before the latest
snapshot (:func:`~training.datasets.segment_frame`), an Optuna study over the method (k-means
or a Gaussian mixture) and the number of segments scored on silhouette plus bootstrap
stability (:func:`~training.segments.partition_score`), a refit whose segment ids follow the
champion's (stable ids), the profile charts, and the package registered through the shared
run lifecycle (:mod:`training.runs`).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from data_layer.event_store import event_data_hash
from data_layer.settings import Settings
from feature_repo.catalog import service_features
from training import evaluate as ev
from training.contract import contract
from training.datasets import segment_frame
from training.model_io import write_segments_dir
from training.runs import JobOptions, Lineage, TrainResult, training_run, trial_progress
from training.segments import (
    METHODS,
    Preprocessor,
    SegmentModel,
    fit_segment_model,
    partition_score,
    segment_profile,
)
from training.tune import create_study, optimize, study_name_for, trial_heartbeat

SEGMENT_K_RANGE = (3, 8)
"""Numbers of segments the study tries."""


def segment_objective(
    settings: Settings, model: str, frame: pd.DataFrame, cutoff, seed: int
) -> tuple[str, Callable]:
    """The study name and objective (silhouette plus stability, to maximise) of a frame."""
    features = service_features(contract(model).feature_service)
    x = Preprocessor.fit(frame, features).transform(frame)
    name = study_name_for(model, [event_data_hash(settings), str(cutoff), ",".join(features)], seed)

    def objective(trial) -> float:
        method = trial.suggest_categorical("method", list(METHODS))
        k = trial.suggest_int("k", *SEGMENT_K_RANGE)
        scores = partition_score(x, method, k, seed)
        trial.set_user_attr("silhouette", scores["silhouette"])
        trial.set_user_attr("stability", scores["stability"])
        return scores["score"]

    return name, objective


def tuning(settings: Settings, model: str, seed: int) -> tuple[str, Callable, str]:
    """What a tuning worker runs: (study name, objective, direction) of the job's study."""
    frame, cutoff = segment_frame(settings, model=model)
    name, objective = segment_objective(settings, model, frame, cutoff, seed)
    return name, objective, "maximize"


def _champion_segments(settings: Settings, model: str) -> SegmentModel | None:
    """The current champion segmentation, for stable ids (None on a first training)."""
    from mlflow.exceptions import MlflowException

    from training.model_io import load_champion

    try:
        return load_champion(settings, model).segments
    except MlflowException:
        return None


def _archetypes(settings: Settings) -> pd.DataFrame | None:
    """The simulator's archetype of each customer (synthetic homes only)."""
    path = settings.ground_truth_dir / "customers.parquet"
    if not path.exists():
        return None
    truth = pd.read_parquet(path, columns=["customer_id", "archetype"])
    truth["customer_id"] = truth["customer_id"].astype(str)
    truth["archetype"] = truth["archetype"].astype(str)
    return truth


def train_segments(
    settings: Settings,
    model: str,
    trials: int,
    seed: int,
    *,
    job: JobOptions,
) -> TrainResult:
    """Tune, fit, evaluate, log and register one segmentation (see the module docstring)."""
    say = job.say
    terms = contract(model)
    service = terms.feature_service
    features = service_features(service)
    say("features", 0, 1)
    started = time.perf_counter()
    frame, cutoff = segment_frame(settings, service, model=model)
    dataset_seconds = time.perf_counter() - started
    say("features", 1, 1)
    study_name, objective = segment_objective(settings, model, frame, cutoff, seed)
    with training_run(settings, model, job.experiment) as run:
        run.timings["time_dataset"] = dataset_seconds
        with run.timed("time_tuning"):
            study = create_study(
                job.storage, study_name, seed, direction="maximize",
                heartbeat=trial_heartbeat(settings),
            )  # fmt: skip
            progress = trial_progress(job.progress, trials)
            ran = optimize(study, objective, trials, callbacks=[progress])
        best = study.best_trial
        say("refit", 0, 1)
        with run.timed("time_refit"):
            seg = fit_segment_model(
                frame, features, best.params["method"], best.params["k"], seed,
                champion=_champion_segments(settings, model),
            )  # fmt: skip
            ids, _ = seg.assign(frame)
            metrics = {
                "silhouette": float(best.user_attrs["silhouette"]),
                "stability": float(best.user_attrs["stability"]),
                "objective": float(best.value),
                "n_segments": float(len(seg.ids)),
                "n_rows": float(len(frame)),
                "trials_run": float(ran),
            }
            truth = _archetypes(settings)
            if truth is not None:
                from sklearn.metrics import adjusted_rand_score

                arch = frame[["customer_id"]].merge(truth, on="customer_id", how="left")
                metrics["ari_archetypes"] = float(
                    adjusted_rand_score(arch["archetype"].fillna("?"), ids)
                )
            seg.metrics = {k: round(v, 5) for k, v in metrics.items()}
        say("refit", 1, 1)
        say("logging", 0, 1)
        started = time.perf_counter()
        run.log_trials(study)
        with tempfile.TemporaryDirectory() as tmp:
            charts = Path(tmp) / "evaluation"
            profile = segment_profile(seg, frame)
            population = frame[features].apply(pd.to_numeric, errors="coerce").median()
            ev.segment_report(profile, population, charts, features)
            run.log_artifacts(charts, "evaluation")
            # The monitor's reference: a sample of the population, without ids.
            from training.monitor import write_reference

            reference = Path(tmp) / "reference"
            write_reference(frame, features, reference, seed, segment_id=ids)
            run.log_artifacts(reference, "reference")
            package_dir = Path(tmp) / "package"
            hashes = write_segments_dir(seg, package_dir, frame.head(50))
            method, k = best.params["method"], best.params["k"]
            population_text = (
                f"{model}: unsupervised, customers active in the "
                f"{terms.population_lookback_days} days before the cutoff"
            )
            run.timings["time_logging"] = time.perf_counter() - started
            version = run.publish(
                package_dir,
                hashes,
                lineage=Lineage(service, population_text, f"fit={cutoff.date()}", seed,
                                event_data_hash(settings), study_name),
                metrics=metrics,
                params={"method": method, "k": k, "trials": trials, "seed": seed},
                description=(
                    f"OmniScore {model}: {method} with k={k} on Feast service {service} "
                    f"({len(features)} features), {len(frame)} customers active before "
                    f"{cutoff.date()}; segments: "
                    + "; ".join(f"{i}={n}" for i, n in seg.name_by_id.items())
                ),
                register=job.register,
                run_tags={"omniscore.segment_names": json.dumps(seg.name_by_id)},
                version_tags={"silhouette": f"{metrics['silhouette']:.4f}"},
            )  # fmt: skip
        say("logging", 1, 1)
    return TrainResult(
        model=model,
        registered_name=terms.registered_name,
        version=version,
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        metrics=metrics,
        cutoffs=f"fit={cutoff.date()}",
        feature_service=service,
        study_name=study_name,
        trials_run=ran,
        timings=run.timings,
    )
