"""Training runners: tune, refit, calibrate, evaluate, log to MLflow and register.

``omniscore train propensity|churn|segments|all`` calls :func:`train_model` (or
:func:`train_all`). One MLflow parent run per job, each Optuna trial a nested run (logged in
batches from the study, so trials run by other workers appear too), the test-cutoff metrics,
the charts, the baselines (RFM logistic regression, best single-channel LightGBM) and the
omnichannel gain over each, lineage tags, and the model package registered with alias
``challenger``.

The pure parts (baselines, calibration data, oracle comparison) are plain functions; MLflow,
Optuna storage and file I/O stay in the runner functions at the bottom.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from data_layer.event_store import event_data_hash
from data_layer.settings import Settings, redact
from feature_repo.catalog import RFM_FEATURES, service_features
from training import evaluate as ev
from training.datasets import (
    DEFAULT_CUTOFFS,
    DEFAULT_MIN_CLASS,
    TrainingSet,
    build_training_set,
    channel_features,
    segment_frame,
)
from training.labels import LabelSpec, oracle_probabilities
from training.model_io import (
    FEATURE_SERVICES,
    MODEL_NAMES,
    SERVICE_TAG,
    SHA_TAG,
    ClassifierPackage,
    encode_frame,
    fit_platt,
    population_stats,
    vocabulary,
    write_classifier_dir,
    write_segments_dir,
)
from training.registry import register_package
from training.segments import (
    METHODS,
    Preprocessor,
    SegmentModel,
    fit_segment_model,
    partition_score,
    segment_profile,
)
from training.tune import (
    Heartbeat,
    create_study,
    make_datasets,
    make_objective,
    num_threads,
    optimize,
    tune_lightgbm,
)

MODELS: tuple[str, ...] = ("propensity", "churn", "segments")
MEMORY_STORAGE = "memory"
EXPERIMENT = "omniscore"
SHAP_SAMPLE = 3000
"""Test rows whose SHAP values are computed for the charts (mean |SHAP| is stable by then;
LightGBM's pred_contrib costs about 30 plain predictions per row)."""
TUNING_ROWS = 120_000
"""Training rows the Optuna trials and the single-channel baselines fit on, at most: a
stratified sample when the training cutoffs hold more (the final model is refit on every
row). At 100k customers the training cutoffs hold about 375k rows; hyperparameters chosen on
120k of them, with 18k positives, carry over, and each trial costs a third."""
ALL_CHANNELS = "all"
"""Channel name of the all-feature comparator in :func:`single_channel_baselines`."""
TUNING_SAMPLE_SEED = 20_261_123
"""Fixed, so that every tuning worker of a study fits on the same rows."""
SEGMENT_K_RANGE = (3, 8)
DATA_OPTIONS: tuple[str, ...] = ("horizon_days", "churn_lookback_days", "n_cutoffs", "min_class")
"""Options of :func:`train_model` that change the training data, hence the study name; every
process tuning one study (:func:`run_tuning_worker`) must be given the same values."""
ProgressFn = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: the CLI draws rich progress bars from these calls."""


@dataclass
class TrainResult:
    """What one training job produced (the CLI prints its summary table from these)."""

    model: str
    registered_name: str
    version: str
    run_id: str
    experiment_id: str
    metrics: dict[str, float]
    cutoffs: str
    feature_service: str
    study_name: str
    trials_run: int
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, object]:
        """Headline numbers for a summary table."""
        keys = (
            "test_roc_auc",
            "test_pr_auc",
            "test_ece",
            "oracle_auc",
            "gain_over_best_single_channel",
            "gain_over_rfm",
            "silhouette",
            "stability",
            "n_segments",
            "ari_archetypes",
        )
        return {
            "model": self.model,
            "version": self.version,
            **{k: round(self.metrics[k], 4) for k in keys if k in self.metrics},
        }


# --- pure pieces ----------------------------------------------------------------------------
def rfm_matrix(frame: pd.DataFrame) -> np.ndarray:
    """RFM inputs for the logistic baseline: log1p of counts and money, capped recency."""
    cols = []
    for name in RFM_FEATURES:
        values = pd.to_numeric(frame[name], errors="coerce").to_numpy(dtype=float)
        if name.startswith("days_since"):
            values = np.where(np.isfinite(values), np.minimum(values, 365.0), 365.0)
            cols.append(values / 365.0)
        else:
            cols.append(np.log1p(np.clip(np.nan_to_num(values, nan=0.0), 0, None)))
    return np.column_stack(cols)


def fit_rfm_baseline(fit: pd.DataFrame, y: np.ndarray):
    """Logistic regression on RFM features only (standardised); returns a fitted pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(
        rfm_matrix(fit), y
    )


def tuning_sample(y: np.ndarray, limit: int = TUNING_ROWS, seed: int = TUNING_SAMPLE_SEED):
    """Sorted row indices of a class-stratified random sample of at most ``limit`` rows
    (every row when there are no more than that)."""
    n = len(y)
    if limit <= 0 or n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(y):
        rows = np.flatnonzero(y == label)
        take = max(1, int(round(limit * len(rows) / n)))
        picked.append(rng.choice(rows, size=min(take, len(rows)), replace=False))
    return np.sort(np.concatenate(picked))


def train_booster(params: dict, x: np.ndarray, y: np.ndarray, names, categorical, rounds: int):
    """One LightGBM fit with fixed rounds (refits and baselines)."""
    data = lgb.Dataset(
        x,
        label=y,
        feature_name=list(names),
        categorical_feature=list(categorical),
        params={"verbosity": -1, "feature_pre_filter": False, "num_threads": num_threads()},
    )
    return lgb.train(params, data, num_boost_round=max(1, int(rounds)))


def single_channel_baselines(
    params: dict,
    ts_names: Sequence[str],
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
) -> pd.DataFrame:
    """A LightGBM per channel on that channel's features only (tuned omnichannel params,
    early-stopped on validation), and one on every feature (channel ``ALL_CHANNELS``) fitted
    the same way on the same rows, for an equal-footing omnichannel gain. One row per model:
    valid and test AUC, rounds; single channels sorted by validation AUC, then the all-channel
    row."""
    rows = []
    index = {n: i for i, n in enumerate(ts_names)}
    groups = {**channel_features(ts_names), ALL_CHANNELS: list(ts_names)}
    for channel, names in groups.items():
        cols = [index[n] for n in names]
        train = lgb.Dataset(
            x_train[:, cols],
            label=y_train,
            feature_name=names,
            params={"verbosity": -1, "feature_pre_filter": False, "num_threads": num_threads()},
        )
        valid = lgb.Dataset(x_valid[:, cols], label=y_valid, reference=train)
        booster = lgb.train(
            params,
            train,
            num_boost_round=2000,
            valid_sets=[valid],
            valid_names=["valid"],
            callbacks=[lgb.early_stopping(40, verbose=False)],
        )
        best = booster.best_iteration or booster.current_iteration()
        rows.append(
            {
                "channel": channel,
                "n_features": len(names),
                "rounds": best,
                "valid_auc": ev.auc(y_valid, booster.predict(x_valid[:, cols], num_iteration=best)),
                "test_auc": ev.auc(y_test, booster.predict(x_test[:, cols], num_iteration=best)),
            }
        )
    table = pd.DataFrame(rows)
    singles = table[table["channel"] != ALL_CHANNELS].sort_values("valid_auc", ascending=False)
    return pd.concat([singles, table[table["channel"] == ALL_CHANNELS]], ignore_index=True)


def study_name_for(model: str, parts: Sequence[str], seed: int) -> str:
    """Deterministic study name: the same data, cutoffs, labels and seed share one study."""
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"omniscore-{model}-{digest}-seed{seed}"


# --- MLflow plumbing ------------------------------------------------------------------------
def git_commit() -> str:
    """Commit of the working tree (``unknown`` outside a git checkout)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def launcher_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Tags that nest a training run under the run which launched the job, if any.

    ``mlflow run`` creates a run for the project entry point and passes its id to the command
    as ``MLFLOW_RUN_ID``. The training run (created in the ``omniscore`` experiment, never
    resumed from that id, so ``train all`` still gets one run per model) records it as its
    parent, which leads from the project run to the models it trained.
    """
    run_id = (os.environ if env is None else env).get("MLFLOW_RUN_ID", "").strip()
    return {"mlflow.parentRunId": run_id} if run_id else {}


def experiment_id(client, settings: Settings, name: str = EXPERIMENT) -> str:
    """Get or create the experiment; a new one keeps its artifacts under the configured
    artifact root (``settings.mlflow_artifact_uri``: this home's ``mlartifacts``, a shared
    folder or an object store such as ``s3://bucket/prefix``)."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    root = settings.mlflow_artifact_uri
    if root.startswith("file://"):
        settings.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)
    return client.create_experiment(name, artifact_location=root)


def log_batch(client, run_id: str, metrics=None, params=None, tags=None, step: int = 0) -> None:
    """Log many metrics / params / tags in as few ``log_batch`` calls as the API allows."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    metric_list = [
        Metric(k, float(v), now, step)
        for k, v in (metrics or {}).items()
        if v is not None and np.isfinite(float(v))
    ]
    param_list = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, str(v)[:8000]) for k, v in (tags or {}).items()]
    # One call carries at most 1000 entities, of which at most 100 params and 100 tags.
    i = j = 0
    while i < len(metric_list) or j < max(len(param_list), len(tag_list)) or i == j == 0:
        client.log_batch(
            run_id,
            metrics=metric_list[i : i + 800],
            params=param_list[j : j + 100],
            tags=tag_list[j : j + 100],
        )
        i, j = i + 800, j + 100


def log_trials(client, experiment: str, parent_run_id: str, study, model: str) -> float:
    """One nested run per finished Optuna trial, each logged with a single batch call."""
    from optuna.trial import TrialState

    started = time.perf_counter()
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED):
            continue
        start_ms = int(trial.datetime_start.timestamp() * 1000) if trial.datetime_start else None
        run = client.create_run(
            experiment,
            start_time=start_ms,
            run_name=f"{model}-trial-{trial.number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "optuna.study": study.study_name,
                "optuna.trial": str(trial.number),
                "optuna.state": trial.state.name,
            },
        )
        metrics = {f"trial_{k}": v for k, v in trial.user_attrs.items() if _is_number(v)}
        if trial.value is not None:
            metrics["objective"] = float(trial.value)
        if trial.intermediate_values:
            metrics["last_reported_step"] = float(max(trial.intermediate_values))
        log_batch(client, run.info.run_id, metrics=metrics, params=trial.params)
        end_ms = (
            int(trial.datetime_complete.timestamp() * 1000) if trial.datetime_complete else None
        )
        client.set_terminated(run.info.run_id, "FINISHED", end_time=end_ms)
    return time.perf_counter() - started


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v)


def _client(settings: Settings):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def _champion_segments(settings: Settings) -> SegmentModel | None:
    """The current champion segmentation, for stable ids (None on a first training)."""
    from mlflow.exceptions import MlflowException

    from training.model_io import load_champion

    try:
        return load_champion(settings, MODEL_NAMES["segments"]).segments
    except MlflowException:
        return None


# --- runners --------------------------------------------------------------------------------
def train_model(
    settings: Settings,
    model: str,
    trials: int = 20,
    seed: int = 42,
    *,
    horizon_days: int | None = None,
    churn_lookback_days: int | None = None,
    n_cutoffs: int = DEFAULT_CUTOFFS,
    min_class: int = DEFAULT_MIN_CLASS,
    experiment: str = EXPERIMENT,
    register: bool = True,
    storage_url: str | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train one model end to end (``omniscore train MODEL --trials N --seed S``).

    ``horizon_days`` overrides the label horizon (propensity 14, churn 60);
    ``churn_lookback_days`` the churn activity window (90). ``storage_url`` overrides the
    Optuna storage (default ``settings.optuna_storage_url``; ``"memory"`` keeps the study in
    memory, so nothing is resumed). Raises
    :class:`~training.datasets.IneligibleError` with a clear message when the data cannot
    support the model. Returns a :class:`TrainResult`.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS} or 'all'")
    storage = _storage(settings, storage_url)
    if model == "segments":
        return _train_segments(settings, trials, seed, experiment, register, storage, progress)
    spec = label_spec(model, horizon_days, churn_lookback_days)
    return _train_classifier(
        settings, model, spec, trials, seed, n_cutoffs, min_class, experiment, register, storage,
        progress,
    )  # fmt: skip


def label_spec(
    model: str, horizon_days: int | None = None, churn_lookback_days: int | None = None
) -> LabelSpec:
    """The label definition of a classifier: its defaults with the given overrides.

    ``churn_lookback_days`` applies to churn only, so that ``train all`` with it leaves the
    propensity label (and the history it needs) as it is.
    """
    spec = LabelSpec.default(model)
    if model != "churn":
        churn_lookback_days = None
    if horizon_days is None and churn_lookback_days is None:
        return spec
    return LabelSpec(
        model,
        horizon_days or spec.horizon_days,
        churn_lookback_days or spec.active_lookback_days,
    )


def trial_heartbeat(settings: Settings) -> Heartbeat:
    """The heartbeat timing of Optuna trials, from the settings."""
    return Heartbeat(settings.optuna_heartbeat_seconds, settings.optuna_grace_seconds)


def _storage(settings: Settings, storage_url: str | None) -> str | None:
    if storage_url == MEMORY_STORAGE:
        return None
    return storage_url or settings.optuna_storage_url


def train_all(settings: Settings, trials: int = 20, seed: int = 42, **kwargs) -> list[TrainResult]:
    """Train propensity, churn and segments in turn (``omniscore train all``)."""
    return [train_model(settings, m, trials, seed, **kwargs) for m in MODELS]


def run_tuning_worker(
    settings: Settings,
    model: str,
    trials: int,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    horizon_days: int | None = None,
    churn_lookback_days: int | None = None,
    n_cutoffs: int = DEFAULT_CUTOFFS,
    min_class: int = DEFAULT_MIN_CLASS,
) -> int:
    """Join a shared study as an extra worker: run trials only, log and register nothing.

    Start it on other processes or machines with the same arguments as ``train_model``
    (model, seed and the data options :data:`DATA_OPTIONS`, which decide the study name) and
    a PostgreSQL ``storage_url`` while ``train_model`` runs; all stop once the study has
    ``trials`` finished trials. Returns how many finished trials this worker ran.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {MODELS}")
    storage = _storage(settings, storage_url)
    beat = trial_heartbeat(settings)
    if model == "segments":
        frame, cutoff = segment_frame(settings, FEATURE_SERVICES["segments"])
        name, objective = _segment_objective(settings, frame, cutoff, seed)
        study = create_study(storage, name, seed, direction="maximize", heartbeat=beat)
        # The main process keeps the seeded sampler; an extra worker with the same seed would
        # only propose the same parameters again.
        study.sampler.reseed_rng()
        return optimize(study, objective, trials)
    spec = label_spec(model, horizon_days, churn_lookback_days)
    data = _ClassifierData.build(settings, model, spec, n_cutoffs, min_class)
    study = create_study(storage, data.study_name(seed), seed, heartbeat=beat)
    study.sampler.reseed_rng()
    return optimize(study, make_objective(data.train_ds, data.valid_ds, data.y_valid, seed), trials)


@dataclass
class _ClassifierData:
    ts: TrainingSet
    vocab: dict[str, list[str]]
    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]
    train_ds: lgb.Dataset
    valid_ds: lgb.Dataset
    data_hash: str
    seconds: float
    sample: np.ndarray
    """Training rows the trials fit on (:func:`tuning_sample`)."""

    @property
    def y_valid(self) -> np.ndarray:
        return self.y["valid"]

    @classmethod
    def build(cls, settings, model, spec, n_cutoffs, min_class) -> _ClassifierData:
        started = time.perf_counter()
        ts = build_training_set(settings, model, spec, n_cutoffs=n_cutoffs, min_class=min_class)
        fit = ts.part("fit")
        vocab = {n: vocabulary(fit[n]) for n in ts.categorical}
        x, y = {}, {}
        for part in ("train", "valid", "test"):
            rows = ts.part(part)
            x[part] = encode_frame(rows, ts.feature_names, vocab)
            y[part] = rows["label"].to_numpy(dtype=int)
        cat_idx = [ts.feature_names.index(n) for n in ts.categorical]
        sample = tuning_sample(y["train"])
        train_ds, valid_ds = make_datasets(
            x["train"][sample], y["train"][sample], x["valid"], y["valid"], ts.feature_names,
            cat_idx,
        )  # fmt: skip
        return cls(ts, vocab, x, y, train_ds, valid_ds, event_data_hash(settings),
                   time.perf_counter() - started, sample)  # fmt: skip

    def study_name(self, seed: int) -> str:
        return study_name_for(
            self.ts.model,
            [self.data_hash, self.ts.plan.describe(), self.ts.spec.definition(),
             self.ts.feature_service],
            seed,
        )  # fmt: skip


def _trial_progress(progress: ProgressFn | None, total: int):
    done = {"n": 0}

    def callback(study, trial) -> None:
        done["n"] += 1
        if progress:
            progress("tuning", done["n"], total)

    return callback


def _train_classifier(
    settings: Settings,
    model: str,
    spec: LabelSpec,
    trials: int,
    seed: int,
    n_cutoffs: int,
    min_class: int,
    experiment: str,
    register: bool,
    storage: str | None,
    progress: ProgressFn | None,
) -> TrainResult:
    timings: dict[str, float] = {}
    say = progress or (lambda *_: None)
    say("features", 0, 1)
    data = _ClassifierData.build(settings, model, spec, n_cutoffs, min_class)
    timings["time_dataset"] = data.seconds
    say("features", 1, 1)
    ts, x, y = data.ts, data.x, data.y
    names, cat_idx = ts.feature_names, [ts.feature_names.index(n) for n in ts.categorical]

    client = _client(settings)
    exp_id = experiment_id(client, settings, experiment)
    study_name = data.study_name(seed)
    run = client.create_run(
        exp_id, run_name=f"{model}-train", tags={"omniscore.model": model, **launcher_tags()}
    )
    run_id = run.info.run_id
    try:
        started = time.perf_counter()
        study, tuned = tune_lightgbm(
            data.train_ds, data.valid_ds, y["valid"], trials, seed, storage, study_name,
            callbacks=[_trial_progress(progress, trials)], heartbeat=trial_heartbeat(settings),
        )  # fmt: skip
        timings["time_tuning"] = time.perf_counter() - started
        timings["time_trial_training"] = tuned.train_seconds

        say("refit", 0, 2)
        started = time.perf_counter()
        params = tuned.best_params
        rounds = tuned.best_iteration
        holdout = train_booster(params, x["train"], y["train"], names, cat_idx, rounds)
        raw_valid = holdout.predict(x["valid"], raw_score=True, num_threads=num_threads())
        calibration = fit_platt(raw_valid, y["valid"])
        x_fit = np.vstack([x["train"], x["valid"]])
        y_fit = np.concatenate([y["train"], y["valid"]])
        # More rows support proportionally more rounds; cap the stretch at 1.5x.
        fit_rounds = int(round(rounds * min(1.5, len(y_fit) / max(len(y["train"]), 1))))
        final = train_booster(params, x_fit, y_fit, names, cat_idx, fit_rounds)
        timings["time_refit"] = time.perf_counter() - started
        say("refit", 2, 2)

        say("evaluate", 0, 1)
        started = time.perf_counter()
        pkg = ClassifierPackage(
            booster=final,
            feature_names=list(names),
            vocabularies=data.vocab,
            calibration=calibration,
            score_quantiles=[],
            band_thresholds=[],
            cold_start={},
            info={
                "model": model,
                "feature_service": ts.feature_service,
                "label_definition": spec.definition(),
                "cutoffs": ts.plan.describe(),
                "rounds": fit_rounds,
            },
        )
        raw_valid_final = final.predict(x["valid"], raw_score=True, num_threads=num_threads())
        valid_p = pkg.calibrate(raw_valid_final)
        pkg.score_quantiles, pkg.band_thresholds, pkg.cold_start = population_stats(valid_p)
        raw_test = final.predict(x["test"], raw_score=True, num_threads=num_threads())
        p_test = pkg.calibrate(raw_test)
        metrics = {f"test_{k}": v for k, v in ev.classification_metrics(y["test"], p_test).items()}
        metrics.update(
            valid_auc_best_trial=tuned.best_valid_auc,
            valid_logloss_best_trial=tuned.best_value,
            best_iteration=rounds,
            final_rounds=fit_rounds,
            n_train_rows=len(y["train"]),
            n_tuning_rows=len(data.sample),
            n_valid_rows=len(y["valid"]),
            n_test_rows=len(y["test"]),
            train_positive_rate=float(y["train"].mean()),
        )
        # Baselines, on equal footing: the omnichannel holdout model (train cutoffs only)
        # against single-channel models on the same rows; RFM against the final refit.
        holdout_test_auc = ev.auc(y["test"], holdout.predict(x["test"], num_threads=num_threads()))
        # Single channels and their all-channel comparator fit on the tuning sample, each
        # early-stopped on validation: the gain compares models trained the same way.
        sample = data.sample
        baselines = single_channel_baselines(
            params, names, x["train"][sample], y["train"][sample], x["valid"], y["valid"],
            x["test"], y["test"],
        )  # fmt: skip
        everything = baselines[baselines["channel"] == ALL_CHANNELS].iloc[0]
        singles = baselines[baselines["channel"] != ALL_CHANNELS]
        best_single = singles.iloc[0]
        rfm = fit_rfm_baseline(ts.part("fit"), y_fit)
        p_rfm = rfm.predict_proba(rfm_matrix(ts.part("test")))[:, 1]
        metrics.update(
            holdout_test_roc_auc=holdout_test_auc,
            rfm_test_roc_auc=ev.auc(y["test"], p_rfm),
            best_single_channel_test_roc_auc=float(best_single["test_auc"]),
            all_channels_baseline_test_roc_auc=float(everything["test_auc"]),
            gain_over_best_single_channel=float(everything["test_auc"] - best_single["test_auc"]),
            gain_over_rfm=metrics["test_roc_auc"] - ev.auc(y["test"], p_rfm),
            **{f"single_{r.channel}_test_roc_auc": r.test_auc for r in singles.itertuples()},
        )
        oracle = oracle_probabilities(settings, spec, ts.plan.test)
        test_rows = ts.part("test")
        if oracle is not None:
            o = test_rows[["customer_id"]].merge(oracle, on="customer_id", how="left")["oracle"]
            o = o.fillna(o.median()).to_numpy() if spec.model == "propensity" else o.fillna(1.0)
            metrics["oracle_auc"] = ev.auc(y["test"], np.asarray(o, dtype=float))
            metrics["auc_gap_to_oracle"] = metrics["oracle_auc"] - metrics["test_roc_auc"]
        timings["time_evaluate"] = time.perf_counter() - started
        say("evaluate", 1, 1)

        say("logging", 0, 1)
        started = time.perf_counter()
        timings["time_logging_trials"] = log_trials(client, exp_id, run_id, study, model)
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(y["test"]), size=min(SHAP_SAMPLE, len(y["test"])), replace=False)
        sample.sort()
        contrib = final.predict(x["test"][sample], pred_contrib=True, num_threads=num_threads())
        with tempfile.TemporaryDirectory() as tmp:
            charts = Path(tmp) / "evaluation"
            ev.classifier_report(
                y["test"], p_test, contrib, names,
                final.feature_importance(importance_type="gain"), charts,
                baselines={"RFM logistic": p_rfm},
            )  # fmt: skip
            baselines.to_csv(charts / "single_channel_baselines.csv", index=False)
            per_channel = ev.shap_by_channel(ev.mean_abs_shap(contrib, names))
            client.log_artifacts(run_id, str(charts), "evaluation")
            package_dir = Path(tmp) / "package"
            hashes = write_classifier_dir(pkg, package_dir, test_rows.head(50))
            metrics.update({f"shap_channel_{k}": float(v) for k, v in per_channel.items()})
            lineage = _lineage(settings, ts.feature_service, spec.definition(),
                               ts.plan.describe(), seed, data.data_hash, study_name)  # fmt: skip
            lineage[SHA_TAG] = json.dumps(hashes, sort_keys=True)
            params_logged = {**{f"lgb_{k}": v for k, v in params.items()},
                             "trials": trials, "seed": seed, "horizon_days": spec.horizon_days,
                             "active_lookback_days": spec.active_lookback_days,
                             "n_cutoffs": len(ts.plan.all), "min_class": min_class}  # fmt: skip
            timings["time_logging"] = time.perf_counter() - started
            metrics.update(timings)
            metrics["tuning_overhead_ratio"] = tuned.overhead_ratio
            metrics["trials_run"] = tuned.trials_run
            log_batch(client, run_id, metrics=metrics, params=params_logged, tags=lineage)
            version = ""
            if register:
                description = _description(model, ts, spec, data.data_hash, metrics)
                mv = register_package(
                    settings, model, package_dir, experiment_id=exp_id, run_id=run_id,
                    hashes=hashes, description=description,
                    tags={SERVICE_TAG: ts.feature_service, "omniscore.model": model,
                          "omniscore.cutoffs": ts.plan.describe(),
                          "omniscore.label_definition": spec.definition(),
                          "test_roc_auc": f"{metrics['test_roc_auc']:.4f}",
                          "test_ece": f"{metrics['test_ece']:.4f}"},
                )  # fmt: skip
                version = str(mv.version)
                client.set_tag(run_id, "omniscore.registered_version", version)
        say("logging", 1, 1)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return TrainResult(
        model=model,
        registered_name=MODEL_NAMES[model],
        version=version,
        run_id=run_id,
        experiment_id=exp_id,
        metrics=metrics,
        cutoffs=ts.plan.describe(),
        feature_service=ts.feature_service,
        study_name=study_name,
        trials_run=tuned.trials_run,
        timings=timings,
    )


def _lineage(settings, service, label_def, cutoffs, seed, data_hash, study_name) -> dict:
    commit = git_commit()
    return {
        "omniscore.feature_service": service,
        "omniscore.label_definition": label_def,
        "omniscore.cutoffs": cutoffs,
        "omniscore.event_data_hash": data_hash,
        "omniscore.git_commit": commit,
        "mlflow.source.git.commit": commit,
        "omniscore.seed": str(seed),
        "omniscore.optuna_study": study_name,
        "omniscore.optuna_storage": redact(settings.optuna_storage_url),
    }


def _description(model, ts: TrainingSet, spec: LabelSpec, data_hash: str, metrics) -> str:
    fit = ts.part("fit")
    return (
        f"OmniScore {model}: LightGBM on Feast service {ts.feature_service} "
        f"({len(ts.feature_names)} features), trained on {len(fit)} rows "
        f"({fit['customer_id'].nunique()} customers) at cutoffs {ts.plan.describe()}; "
        f"label: {spec.definition()}; events {data_hash}. "
        f"Test AUC {metrics['test_roc_auc']:.3f}, ECE {metrics['test_ece']:.3f}."
    )


# --- segments -------------------------------------------------------------------------------
def _segment_objective(settings: Settings, frame: pd.DataFrame, cutoff, seed: int):
    features = service_features(FEATURE_SERVICES["segments"])
    x = Preprocessor.fit(frame, features).transform(frame)
    name = study_name_for(
        "segments", [event_data_hash(settings), str(cutoff), ",".join(features)], seed
    )

    def objective(trial) -> float:
        method = trial.suggest_categorical("method", list(METHODS))
        k = trial.suggest_int("k", *SEGMENT_K_RANGE)
        scores = partition_score(x, method, k, seed)
        trial.set_user_attr("silhouette", scores["silhouette"])
        trial.set_user_attr("stability", scores["stability"])
        return scores["score"]

    return name, objective


def _train_segments(
    settings: Settings,
    trials: int,
    seed: int,
    experiment: str,
    register: bool,
    storage: str | None,
    progress: ProgressFn | None,
) -> TrainResult:
    timings: dict[str, float] = {}
    say = progress or (lambda *_: None)
    service = FEATURE_SERVICES["segments"]
    features = service_features(service)
    say("features", 0, 1)
    started = time.perf_counter()
    frame, cutoff = segment_frame(settings, service)
    timings["time_dataset"] = time.perf_counter() - started
    say("features", 1, 1)
    client = _client(settings)
    exp_id = experiment_id(client, settings, experiment)
    study_name, objective = _segment_objective(settings, frame, cutoff, seed)
    run = client.create_run(
        exp_id, run_name="segments-train", tags={"omniscore.model": "segments", **launcher_tags()}
    )
    run_id = run.info.run_id
    try:
        started = time.perf_counter()
        study = create_study(
            storage, study_name, seed, direction="maximize", heartbeat=trial_heartbeat(settings)
        )
        ran = optimize(study, objective, trials, callbacks=[_trial_progress(progress, trials)])
        timings["time_tuning"] = time.perf_counter() - started
        best = study.best_trial
        say("refit", 0, 1)
        started = time.perf_counter()
        champion = _champion_segments(settings)
        seg = fit_segment_model(
            frame, features, best.params["method"], best.params["k"], seed, champion=champion
        )
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

            arch = frame[["customer_id"]].merge(truth, on="customer_id", how="left")["archetype"]
            metrics["ari_archetypes"] = float(adjusted_rand_score(arch.fillna("?"), ids))
        seg.metrics = {k: round(v, 5) for k, v in metrics.items()}
        timings["time_refit"] = time.perf_counter() - started
        say("refit", 1, 1)
        say("logging", 0, 1)
        started = time.perf_counter()
        timings["time_logging_trials"] = log_trials(client, exp_id, run_id, study, "segments")
        with tempfile.TemporaryDirectory() as tmp:
            charts = Path(tmp) / "evaluation"
            profile = segment_profile(seg, frame)
            population = frame[features].apply(pd.to_numeric, errors="coerce").median()
            ev.segment_report(profile, population, charts, features)
            client.log_artifacts(run_id, str(charts), "evaluation")
            package_dir = Path(tmp) / "package"
            hashes = write_segments_dir(seg, package_dir, frame.head(50))
            lineage = _lineage(settings, service, "segments: unsupervised, customers active in "
                               "the 90 days before the cutoff", f"fit={cutoff.date()}", seed,
                               event_data_hash(settings), study_name)  # fmt: skip
            lineage[SHA_TAG] = json.dumps(hashes, sort_keys=True)
            lineage["omniscore.segment_names"] = json.dumps(seg.name_by_id)
            timings["time_logging"] = time.perf_counter() - started
            metrics.update(timings)
            log_batch(
                client, run_id, metrics=metrics, tags=lineage,
                params={"method": best.params["method"], "k": best.params["k"],
                        "trials": trials, "seed": seed},
            )  # fmt: skip
            version = ""
            if register:
                description = (
                    f"OmniScore segments: {best.params['method']} with k={best.params['k']} on "
                    f"Feast service {service} ({len(features)} features), {len(frame)} customers "
                    f"active before {cutoff.date()}; segments: "
                    + "; ".join(f"{i}={n}" for i, n in seg.name_by_id.items())
                )
                mv = register_package(
                    settings, "segments", package_dir, experiment_id=exp_id, run_id=run_id,
                    hashes=hashes, description=description,
                    tags={SERVICE_TAG: service, "omniscore.model": "segments",
                          "silhouette": f"{metrics['silhouette']:.4f}"},
                )  # fmt: skip
                version = str(mv.version)
                client.set_tag(run_id, "omniscore.registered_version", version)
        say("logging", 1, 1)
        client.set_terminated(run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    return TrainResult(
        model="segments",
        registered_name=MODEL_NAMES["segments"],
        version=version,
        run_id=run_id,
        experiment_id=exp_id,
        metrics=metrics,
        cutoffs=f"fit={cutoff.date()}",
        feature_service=service,
        study_name=study_name,
        trials_run=ran,
        timings=timings,
    )


def _archetypes(settings: Settings) -> pd.DataFrame | None:
    path = settings.ground_truth_dir / "customers.parquet"
    if not path.exists():
        return None
    truth = pd.read_parquet(path, columns=["customer_id", "archetype"])
    truth["customer_id"] = truth["customer_id"].astype(str)
    truth["archetype"] = truth["archetype"].astype(str)
    return truth
