"""Distributed tuning: several processes, on one machine or many, share one Optuna study.

``omniscore train MODEL --workers N`` calls :func:`train_with_workers`: it starts ``N - 1``
tuning workers (:func:`training.train.run_tuning_worker` in spawned processes) and runs
:func:`training.train.train_model` in this process on the same study. Every process stops once
the study holds the requested number of finished trials; the main process then refits,
evaluates, logs and registers as usual, and after the workers have exited
:func:`log_missing_trials` adds to the parent MLflow run any trial that finished after
``train_model`` had logged the study, so the parent run shows every trial.

Other machines join the same study with ``omniscore tune-worker MODEL``, the one command line
for tuning workers, wired to :func:`run_workers`, pointing at the same PostgreSQL storage and
given the same seed and data options as the training job (the same flags as ``omniscore
train``, parsed by the same code, so both compute the same study name). The storage URL is
never put on a command line (it may hold a password): workers read it from the settings
(environment or profile) or receive it pickled through the process pipe. Each process uses
the settings' ``lgbm_threads`` LightGBM threads; unset, the cores are split between the
processes of one machine.

A worker that dies mid-trial (SIGKILL, a lost machine) leaves its trial RUNNING only until
its heartbeat is older than the grace period (``optuna_heartbeat_seconds`` and
``optuna_grace_seconds`` of the settings): the next trial started by any process marks it
FAIL and ``RetryHeartbeatStaleTrialCallback`` enqueues a copy that the next free worker runs.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized

from data_layer.settings import Settings
from training import tune
from training.model_io import registry_client
from training.runs import TrainResult, log_trials
from training.train import DATA_OPTIONS, MEMORY_STORAGE, run_tuning_worker, train_model

STOP_TIMEOUT_SECONDS = 600.0
"""How long :func:`train_with_workers` waits for workers after its own tuning has finished."""


@dataclass(frozen=True)
class WorkerReport:
    """How the tuning workers of one job ended."""

    workers: int
    exit_codes: list[int | None]
    """One per extra process: 0 ran to the end, other values failed, None still running."""
    trials_run: list[int | None]
    """Finished trials each process ran (None: it did not get to report, having failed)."""

    @property
    def failed(self) -> int:
        """Workers that did not exit cleanly."""
        return sum(1 for code in self.exit_codes if code != 0)

    @property
    def total_trials_run(self) -> int:
        """Finished trials the workers that reported ran, together."""
        return sum(n for n in self.trials_run if n is not None)


# --- settings helpers (pure) --------------------------------------------------------------------
def shared_storage(settings: Settings, storage_url: str | None) -> str:
    """The study storage all workers use; refuses the in-memory study, which no one can share."""
    url = storage_url or settings.optuna_storage_url
    if url == MEMORY_STORAGE:
        raise ValueError("an in-memory study cannot be shared: give an SQLite or PostgreSQL URL")
    return url


def threads_per_worker(workers: int, cpus: int | None = None, configured: int | None = None) -> int:
    """LightGBM threads for each of ``workers`` processes on one machine (at least 1).

    ``configured`` (the settings' ``lgbm_threads``, ``OMNISCORE_LGBM_THREADS``) wins;
    otherwise the cores are split between the workers, as OpenMP threads of several
    processes on the same cores wait on each other.
    """
    if configured:
        return max(1, configured)
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


def worker_kwargs(train_kwargs: dict) -> dict:
    """The data options (:data:`~training.train.DATA_OPTIONS`) among ``train_kwargs``, which
    the workers must be given too: they decide the training rows and so the study name."""
    return {key: train_kwargs[key] for key in DATA_OPTIONS if key in train_kwargs}


def with_threads(settings: Settings, threads: int | None) -> Settings:
    """``settings`` whose processes use ``threads`` LightGBM threads (unchanged for None)."""
    return settings if threads is None else replace(settings, lgbm_threads=threads)


def prepare_storage(storage_url: str) -> None:
    """Create the Optuna tables once, before several processes open an empty database.

    Processes that create the schema of an empty PostgreSQL database at the same moment can
    collide on its catalog; one creator first makes every later open a plain read.
    """
    tune.storage_for(storage_url, heartbeat=None).remove_session()


# --- processes ----------------------------------------------------------------------------------
def _worker_main(
    settings: Settings,
    model: str,
    trials: int,
    seed: int,
    storage_url: str,
    threads: int | None,
    kwargs: dict,
    counter: Synchronized | None,
) -> None:
    ran = run_tuning_worker(
        with_threads(settings, threads), model, trials, seed, storage_url, **kwargs
    )
    if counter is not None:
        counter.value = ran
    print(f"tuning worker {os.getpid()}: {ran} trials of {model}", file=sys.stderr, flush=True)


def trial_counter() -> Synchronized:
    """A shared integer a worker started by :func:`start_worker` sets to the finished trials
    it ran; -1 until it reports."""
    return multiprocessing.get_context("spawn").Value("i", -1)


def start_worker(
    settings: Settings,
    model: str,
    trials: int,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    threads: int | None = None,
    counter: Synchronized | None = None,
    **kwargs,
) -> BaseProcess:
    """Start one tuning worker in a fresh (spawned) process; returns the started process.

    It joins the study of ``model`` at ``storage_url`` (default: the settings' Optuna
    storage) and runs trials until the study holds ``trials`` finished ones, with the
    heartbeat timing of ``settings``. ``kwargs`` are the data options of
    :func:`worker_kwargs`; ``counter`` (from :func:`trial_counter`) receives the number of
    finished trials it ran.
    """
    url = shared_storage(settings, storage_url)
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_main,
        args=(settings, model, trials, seed, url, threads, kwargs, counter),
        name=f"omniscore-tune-{model}",
    )
    process.start()
    return process


def _reported(counters: Sequence[Synchronized]) -> list[int | None]:
    return [c.value if c.value >= 0 else None for c in counters]


def stop_workers(processes: Sequence[BaseProcess], timeout: float = 10.0) -> None:
    """Terminate workers still running (their trials are re-queued after the grace period)."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()


def run_workers(
    settings: Settings,
    model: str,
    trials: int,
    workers: int,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    threads: int | None = None,
    **kwargs,
) -> WorkerReport:
    """Run ``workers`` tuning processes on one study until it has ``trials`` finished trials.

    Tuning only: no MLflow run, nothing registered. This is how further machines join a
    study that ``omniscore train MODEL --workers N`` runs elsewhere (``omniscore
    tune-worker``); ``kwargs`` are the data options that job was given
    (:data:`~training.train.DATA_OPTIONS`). Blocks until every worker has exited.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    url = shared_storage(settings, storage_url)
    prepare_storage(url)
    threads = threads or threads_per_worker(workers, configured=settings.lgbm_threads)
    counters = [trial_counter() for _ in range(workers)]
    processes = [
        start_worker(settings, model, trials, seed, url, threads=threads, counter=c, **kwargs)
        for c in counters
    ]
    try:
        for process in processes:
            process.join()
    finally:
        stop_workers(processes)
    return WorkerReport(workers, [p.exitcode for p in processes], _reported(counters))


def train_with_workers(
    settings: Settings,
    model: str,
    trials: int = 20,
    workers: int = 2,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    threads: int | None = None,
    **train_kwargs,
) -> TrainResult:
    """Train ``model`` with ``workers`` processes tuning one study (``--workers N``).

    This process runs :func:`~training.train.train_model` (tuning, then refit, evaluation,
    MLflow logging and registration); ``workers - 1`` spawned processes run
    :func:`~training.train.run_tuning_worker` on the same study. ``train_kwargs`` go to
    ``train_model`` (``experiment``, ``register``, ``progress``, data options). The parent
    run gets every finished trial of the study as a nested run, the tag
    ``omniscore.tuning_workers`` and the metrics ``trials_in_study`` and
    ``worker_trials_run`` (finished trials the extra processes ran; with the result's
    ``trials_run`` they add up to the study's finished trials); the result's metrics hold
    those and ``tuning_workers`` and ``worker_failures``. With ``workers=1`` this is
    ``train_model`` on the shared storage.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    url = shared_storage(settings, storage_url)
    extra = worker_kwargs(train_kwargs) if workers > 1 else {}
    prepare_storage(url)
    threads = threads or threads_per_worker(workers, configured=settings.lgbm_threads)
    counters = [trial_counter() for _ in range(workers - 1)]
    processes: list[BaseProcess] = []
    try:
        for counter in counters:
            processes.append(
                start_worker(
                    settings, model, trials, seed, url, threads=threads, counter=counter, **extra
                )
            )
        result = train_model(
            with_threads(settings, threads), model, trials, seed, storage_url=url, **train_kwargs
        )
        for process in processes:
            process.join(STOP_TIMEOUT_SECONDS)
    finally:
        stop_workers(processes)
    report = WorkerReport(workers - 1, [p.exitcode for p in processes], _reported(counters))
    logged = log_missing_trials(settings, result, url)
    client = registry_client(settings)
    in_study = _finished_trials(result.study_name, url)
    client.set_tag(result.run_id, "omniscore.tuning_workers", str(workers))
    client.log_metric(result.run_id, "trials_in_study", float(in_study))
    client.log_metric(result.run_id, "worker_trials_run", float(report.total_trials_run))
    if report.failed:
        client.set_tag(result.run_id, "omniscore.worker_exit_codes", str(report.exit_codes))
    result.metrics.update(
        tuning_workers=float(workers),
        worker_failures=float(report.failed),
        worker_trials_run=float(report.total_trials_run),
        trials_in_study=float(in_study),
        trials_logged_after_workers=float(logged),
    )
    return result


# --- MLflow: every trial under the parent run ---------------------------------------------------
@dataclass(frozen=True)
class _TrialSubset:
    """The two members of a study that :func:`~training.runs.log_trials` reads."""

    study_name: str
    trials: list

    def get_trials(self, deepcopy: bool = False) -> list:
        return self.trials


def _finished_trials(study_name: str, storage_url: str) -> int:
    import optuna

    storage = tune.storage_for(storage_url, heartbeat=None)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
        return tune.finished_trials(study)
    finally:
        storage.remove_session()


def logged_trial_numbers(client, experiment_id: str, parent_run_id: str) -> set[int]:
    """Optuna trial numbers already logged as nested runs of ``parent_run_id``."""
    numbers: set[int] = set()
    token = None
    while True:
        page = client.search_runs(
            [experiment_id],
            f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        numbers |= {int(r.data.tags["optuna.trial"]) for r in page if "optuna.trial" in r.data.tags}
        token = page.token
        if not token:
            return numbers


def log_missing_trials(settings: Settings, result: TrainResult, storage_url: str) -> int:
    """Log as nested runs the finished trials of the study that the parent run lacks.

    ``train_model`` logs the study once tuning is over; a worker's trial still in flight at
    that moment finishes later. Returns how many trials were added.
    """
    import optuna

    client = registry_client(settings)
    done = logged_trial_numbers(client, result.experiment_id, result.run_id)
    storage = tune.storage_for(storage_url, heartbeat=None)
    try:
        study = optuna.load_study(study_name=result.study_name, storage=storage)
        missing = [
            t
            for t in study.get_trials(deepcopy=False, states=tune.FINISHED)
            if t.number not in done
        ]
    finally:
        storage.remove_session()
    if missing:
        subset = _TrialSubset(result.study_name, missing)
        log_trials(client, result.experiment_id, result.run_id, subset, result.model)
    return len(missing)
