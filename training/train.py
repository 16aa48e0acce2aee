"""Training entry points: train a model, train them all, or join a job's study as a worker.

``omniscore train MODEL|all`` calls :func:`train_model` (or :func:`train_all`);
``omniscore tune-worker`` reaches :func:`run_tuning_worker` through
:mod:`training.distributed`. Each looks up the model's contract (:mod:`training.contract`)
and hands the work to the job of its kind:

- :mod:`training.classifier_job` for classifiers (propensity, churn): Optuna-tuned LightGBM,
  calibration, baselines (:mod:`training.baselines`), the oracle comparison;
- :mod:`training.segments_job` for clusterings (segments).

Both jobs run inside the same MLflow run lifecycle (:mod:`training.runs`): one parent run per
job, each Optuna trial a nested run, metrics, charts, lineage tags and the package registered
with alias ``challenger``, the run marked ``FAILED`` if anything raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from data_layer.settings import Settings
from training import classifier_job, segments_job
from training.contract import CLUSTERING, MODEL_NAMES, contract
from training.datasets import DEFAULT_CUTOFFS, DEFAULT_MIN_CLASS, IneligibleError
from training.labels import label_spec
from training.runs import EXPERIMENT, JobOptions, ProgressFn, TrainResult
from training.tune import create_study, optimize, trial_heartbeat

MEMORY_STORAGE = "memory"
"""``storage_url`` that keeps the Optuna study in memory (nothing resumed, nothing shared)."""
DATA_OPTIONS: tuple[str, ...] = ("horizon_days", "churn_lookback_days", "n_cutoffs", "min_class")
"""Options of :func:`train_model` that change the training data, hence the study name; every
process tuning one study (:func:`run_tuning_worker`) must be given the same values."""
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainFailure:
    """A model :func:`train_all` could not train, and why (one line for a person)."""

    model: str
    reason: str


@dataclass
class TrainAllReport:
    """What ``train all`` did: the models trained and the ones it could not train."""

    results: list[TrainResult] = field(default_factory=list)
    failures: list[TrainFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every model trained."""
        return not self.failures


def train_model(
    settings: Settings,
    model: str,
    trials: int = 20,
    seed: int = 42,
    *,
    horizon_days: int | None = None,
    churn_lookback_days: int | None = None,
    n_cutoffs: int | None = DEFAULT_CUTOFFS,
    min_class: int = DEFAULT_MIN_CLASS,
    experiment: str = EXPERIMENT,
    register: bool = True,
    storage_url: str | None = None,
    progress: ProgressFn | None = None,
) -> TrainResult:
    """Train one model end to end (``omniscore train MODEL --trials N --seed S``).

    ``horizon_days`` overrides the label horizon (propensity 14, churn 60);
    ``churn_lookback_days`` the activity window of an ``active`` population (churn, 90);
    ``n_cutoffs`` the number of cutoffs (default ``None``: chosen from the history and the
    horizon, see :func:`~training.datasets.plan_cutoffs`). Clusterings take none of them.
    ``storage_url`` overrides the Optuna storage (default
    ``settings.optuna_storage_url``; ``"memory"`` keeps the study in memory, so nothing is
    resumed). Raises ``ValueError`` for an unknown model and
    :class:`~training.datasets.IneligibleError` with a clear message when the data cannot
    support the model. Returns a :class:`~training.runs.TrainResult`.
    """
    terms = contract(model)
    job = JobOptions(experiment, register, _storage(settings, storage_url), progress)
    if terms.kind == CLUSTERING:
        return segments_job.train_segments(settings, terms.name, trials, seed, job=job)
    spec = label_spec(terms.name, horizon_days, churn_lookback_days)
    return classifier_job.train_classifier(
        settings, terms.name, trials, seed, spec=spec, n_cutoffs=n_cutoffs, min_class=min_class,
        job=job,
    )  # fmt: skip


def train_all(
    settings: Settings,
    trials: int = 20,
    seed: int = 42,
    *,
    models: Sequence[str] = MODEL_NAMES,
    progress_for: Callable[[str], ProgressFn | None] | None = None,
    **kwargs,
) -> TrainAllReport:
    """Train every model of the contract in turn (``omniscore train all``).

    A model that cannot be trained does not stop the others: it is reported with the reason
    (the :class:`~training.datasets.IneligibleError` message, such as too little history for
    churn's label window, or the error's type and message, with the traceback in the log).
    The caller exits non-zero when :attr:`TrainAllReport.ok` is false. ``progress_for(model)``
    gives each model's progress callback (the CLI's bars).
    """
    report = TrainAllReport()
    for model in models:
        progress = progress_for(model) if progress_for else kwargs.get("progress")
        options = {**kwargs, "progress": progress}
        try:
            report.results.append(train_model(settings, model, trials, seed, **options))
        except IneligibleError as error:
            report.failures.append(TrainFailure(model, str(error)))
        except Exception as error:  # noqa: BLE001 - reported, logged, and the run fails
            log.exception("training %s failed", model)
            report.failures.append(TrainFailure(model, f"{type(error).__name__}: {error}"))
    return report


def run_tuning_worker(
    settings: Settings,
    model: str,
    trials: int,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    horizon_days: int | None = None,
    churn_lookback_days: int | None = None,
    n_cutoffs: int | None = DEFAULT_CUTOFFS,
    min_class: int = DEFAULT_MIN_CLASS,
) -> int:
    """Join a shared study as an extra worker: run trials only, log and register nothing.

    Start it on other processes or machines with the same arguments as ``train_model``
    (model, seed and the data options :data:`DATA_OPTIONS`, which decide the study name) and
    a PostgreSQL ``storage_url`` while ``train_model`` runs; all stop once the study has
    ``trials`` finished trials. Returns how many finished trials this worker ran.
    """
    terms = contract(model)
    if terms.kind == CLUSTERING:
        name, objective, direction = segments_job.tuning(settings, terms.name, seed)
    else:
        spec = label_spec(terms.name, horizon_days, churn_lookback_days)
        name, objective, direction = classifier_job.tuning(
            settings, terms.name, seed, spec, n_cutoffs, min_class
        )
    study = create_study(
        _storage(settings, storage_url), name, seed, direction=direction,
        heartbeat=trial_heartbeat(settings),
    )  # fmt: skip
    # The main process keeps the seeded sampler; an extra worker with the same seed would
    # only propose the same parameters again.
    study.sampler.reseed_rng()
    return optimize(study, objective, trials)


def _storage(settings: Settings, storage_url: str | None) -> str | None:
    if storage_url == MEMORY_STORAGE:
        return None
    return storage_url or settings.optuna_storage_url
