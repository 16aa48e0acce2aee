"""Optuna tuning of LightGBM: the search space, the objective, the study and its storage.

- The search space lives in one function (:func:`suggest_params`), the data are built once
  outside the objective, and the TPE sampler is seeded, so the same seed gives the same trials.
- Each trial trains on the training cutoffs and stops early on the validation cutoff's log loss;
  every :data:`REPORT_EVERY` rounds it reports that loss so the median pruner can stop an
  unpromising trial.
- The histogram bins are built once: the ``lgb.Dataset`` pair is constructed before the first
  trial (``free_raw_data=False``) and reused by every trial.
- The study lives in ``settings.optuna_storage_url`` (SQLite under the home, or PostgreSQL).
  Several processes running the same command share one study and stop together once the
  study has ``n_trials`` finished trials. With heartbeats (:class:`Heartbeat`, timing from
  the settings), a trial whose worker died is marked failed after the grace period and
  re-queued by ``RetryHeartbeatStaleTrialCallback``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lightgbm as lgb
import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from data_layer.settings import Settings
from training.evaluate import auc

MAX_ROUNDS = 2000
EARLY_STOPPING_ROUNDS = 40
REPORT_EVERY = 10
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def base_params(seed: int, threads: int) -> dict:
    """LightGBM parameters every trial shares: binary objective, ``threads`` threads (the
    settings' ``lgbm_thread_count``), deterministic."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "verbosity": -1,
        "num_threads": threads,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "feature_pre_filter": False,
    }


def study_name_for(model: str, parts: Sequence[str], seed: int) -> str:
    """Deterministic study name: the same data, cutoffs, labels and seed share one study."""
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]
    return f"omniscore-{model}-{digest}-seed{seed}"


def suggest_params(trial: optuna.Trial) -> dict:
    """The whole search space, in one place."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.03, 0.2, log=True),
        "num_leaves": trial.suggest_int("num_leaves", 8, 128, log=True),
        "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 400, log=True),
        "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
        "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
        "bagging_freq": 1,
        "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
        "min_gain_to_split": trial.suggest_float("min_gain_to_split", 0.0, 1.0),
        "cat_smooth": trial.suggest_float("cat_smooth", 1.0, 50.0, log=True),
    }


def make_datasets(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    feature_names: Sequence[str],
    categorical: Sequence[int],
    threads: int,
) -> tuple[lgb.Dataset, lgb.Dataset]:
    """Train and validation Datasets, constructed now so every trial reuses the bins."""
    params = {"verbosity": -1, "feature_pre_filter": False, "num_threads": threads}
    train = lgb.Dataset(
        x_train,
        label=y_train,
        feature_name=list(feature_names),
        categorical_feature=list(categorical),
        free_raw_data=False,
        params=params,
    )
    valid = lgb.Dataset(x_valid, label=y_valid, reference=train, free_raw_data=False)
    train.construct()
    valid.construct()
    return train, valid


def _pruning_callback(trial: optuna.Trial) -> Callable:
    def callback(env: lgb.callback.CallbackEnv) -> None:
        if (env.iteration + 1) % REPORT_EVERY:
            return
        for data_name, metric, value, _ in env.evaluation_result_list:
            if data_name == "valid" and metric == "binary_logloss":
                trial.report(value, step=env.iteration + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at round {env.iteration + 1}")

    callback.order = 40  # after early stopping's bookkeeping (order 30)
    return callback


@dataclass
class TrialClock:
    """Seconds spent inside LightGBM training, to measure tuning overhead against."""

    train_seconds: float = 0.0
    trials: int = 0


def make_objective(
    train: lgb.Dataset,
    valid: lgb.Dataset,
    y_valid: np.ndarray,
    seed: int,
    threads: int,
    clock: TrialClock | None = None,
) -> Callable[[optuna.Trial], float]:
    """Objective: validation log loss at the early-stopped round (to minimise).

    The validation AUC and the best round are stored as trial user attributes.
    """

    def objective(trial: optuna.Trial) -> float:
        params = base_params(seed, threads) | suggest_params(trial)
        started = time.perf_counter()
        try:
            booster = lgb.train(
                params,
                train,
                num_boost_round=MAX_ROUNDS,
                valid_sets=[valid],
                valid_names=["valid"],
                callbacks=[
                    lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False),
                    _pruning_callback(trial),
                ],
            )
        finally:
            if clock is not None:
                clock.train_seconds += time.perf_counter() - started
                clock.trials += 1
        best = booster.best_iteration or booster.current_iteration()
        loss = booster.best_score["valid"]["binary_logloss"]
        p = booster.predict(valid.get_data(), num_iteration=best, num_threads=threads)
        trial.set_user_attr("best_iteration", int(best))
        trial.set_user_attr("valid_auc", auc(y_valid, p))
        return float(loss)

    return objective


@dataclass(frozen=True)
class Heartbeat:
    """Optuna heartbeat timing of the trials a process runs.

    A running trial records a heartbeat every ``interval`` seconds; one whose last heartbeat
    is older than ``grace`` seconds is failed and re-queued by the next process that starts a
    trial. Built from the settings (``optuna_heartbeat_seconds``, ``optuna_grace_seconds``).
    """

    interval: int
    grace: int

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.grace <= self.interval:
            raise ValueError(
                f"heartbeat needs interval > 0 and grace > interval, got interval="
                f"{self.interval} s, grace={self.grace} s"
            )


def trial_heartbeat(settings: Settings) -> Heartbeat:
    """The heartbeat timing of Optuna trials, from the settings."""
    return Heartbeat(settings.optuna_heartbeat_seconds, settings.optuna_grace_seconds)


def storage_for(url: str, heartbeat: Heartbeat | None) -> RDBStorage:
    """RDB storage (SQLite or PostgreSQL) at ``url``.

    With a ``heartbeat``, running trials record heartbeats and a dead worker's trial is
    re-queued (three times at most); ``None`` opens the storage without them, for reading
    studies and creating the schema.
    """
    if not heartbeat:
        return RDBStorage(url)
    return RDBStorage(
        url,
        heartbeat_interval=heartbeat.interval,
        grace_period=heartbeat.grace,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
    )


def create_study(
    storage_url: str | None,
    study_name: str,
    seed: int,
    direction: str = "minimize",
    *,
    heartbeat: Heartbeat | None,
) -> optuna.Study:
    """Create or load a study: seeded TPE, median pruner, stored at ``storage_url``.

    ``storage_url=None`` keeps the study in memory (tests, notebooks); ``heartbeat`` is the
    timing of its trials' heartbeats in a storage (``None``: none).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage_for(storage_url, heartbeat) if storage_url else None
    return optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction=direction,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=5, n_warmup_steps=3 * REPORT_EVERY, interval_steps=REPORT_EVERY
        ),
    )


def finished_trials(study: optuna.Study) -> int:
    """Completed plus pruned trials of a study."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def optimize(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    n_trials: int,
    callbacks: Sequence[Callable] = (),
    timeout: float | None = None,
) -> int:
    """Run trials until the study holds ``n_trials`` finished ones.

    Returns how many finished (complete or pruned) trials this process ran; trials other
    processes ran on the same study meanwhile are not counted, so the counts of all the
    processes of a job add up to the study's finished trials. A study that already has
    enough (a re-run, or other workers did them) runs nothing, so re-running a command is
    idempotent and several workers stop together.
    """
    remaining = n_trials - finished_trials(study)
    if remaining <= 0:
        return 0
    ran = {"finished": 0}

    def count(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # Optuna calls callbacks in the process that ran the trial, once it has been told.
        if trial.state in FINISHED:
            ran["finished"] += 1

    study.optimize(
        objective,
        n_trials=remaining,
        timeout=timeout,
        callbacks=[count, optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), *callbacks],
        gc_after_trial=False,
    )
    return ran["finished"]


@dataclass
class TuneResult:
    """Best trial of a study and the time accounting of this process's trials."""

    study_name: str
    best_params: dict
    best_iteration: int
    best_value: float
    best_valid_auc: float
    trials_run: int
    """Finished trials this process ran (not those of other workers on the study)."""
    trials_total: int
    wall_seconds: float
    train_seconds: float
    trial_durations: list[float] = field(default_factory=list)

    @property
    def overhead_ratio(self) -> float:
        """(tuning wall time - LightGBM training time) / LightGBM training time."""
        if self.train_seconds <= 0:
            return 0.0
        return (self.wall_seconds - self.train_seconds) / self.train_seconds


def tune_lightgbm(
    train: lgb.Dataset,
    valid: lgb.Dataset,
    y_valid: np.ndarray,
    n_trials: int,
    seed: int,
    storage_url: str | None,
    study_name: str,
    callbacks: Sequence[Callable] = (),
    *,
    heartbeat: Heartbeat | None,
    threads: int,
) -> tuple[optuna.Study, TuneResult]:
    """Tune LightGBM on a Dataset pair; returns the study and its best trial.

    ``heartbeat`` is the trials' heartbeat timing in the storage (see :func:`create_study`);
    ``threads`` the LightGBM threads of each trial.
    """
    study = create_study(storage_url, study_name, seed, heartbeat=heartbeat)
    clock = TrialClock()
    started = time.perf_counter()
    objective = make_objective(train, valid, y_valid, seed, threads, clock)
    ran = optimize(study, objective, n_trials, callbacks)
    wall = time.perf_counter() - started
    best = study.best_trial
    return study, TuneResult(
        study_name=study_name,
        best_params=base_params(seed, threads) | best.params | {"bagging_freq": 1},
        best_iteration=int(best.user_attrs.get("best_iteration", 100)),
        best_value=float(best.value),
        best_valid_auc=float(best.user_attrs.get("valid_auc", float("nan"))),
        trials_run=ran,
        trials_total=finished_trials(study),
        wall_seconds=wall,
        train_seconds=clock.train_seconds,
        trial_durations=[
            (t.datetime_complete - t.datetime_start).total_seconds()
            for t in study.get_trials(deepcopy=False, states=FINISHED)
            if t.datetime_complete and t.datetime_start
        ],
    )
