"""Distributed tuning: several processes, on one machine or many, share one Optuna study.

``omniscore train MODEL --workers N`` calls :func:`train_with_workers`: it starts ``N - 1``
tuning workers (:func:`training.train.run_tuning_worker` in spawned processes) and runs
:func:`training.train.train_model` in this process on the same study. Every process stops once
the study holds the requested number of finished trials; the main process then refits,
evaluates, logs and registers as usual, and after the workers have exited
:func:`log_missing_trials` adds to the parent MLflow run any trial that finished after
``train_model`` had logged the study, so the parent run shows every trial.

Other machines join the same study with ``python -m training.distributed worker MODEL`` (or
the CLI command wired to :func:`run_workers`), pointing at the same PostgreSQL storage. The
storage URL is never put on a command line (it may hold a password): workers read it from
the settings (environment or profile) or receive it pickled through the process pipe.

A worker that dies mid-trial (SIGKILL, a lost machine) leaves its trial RUNNING only until
its heartbeat is older than the grace period: the next trial started by any process marks it
FAIL and ``RetryHeartbeatStaleTrialCallback`` enqueues a copy that the next free worker runs.
"""

from __future__ import annotations

import argparse
import inspect
import multiprocessing
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from feature_repo.config import Settings, redact
from training import tune
from training.train import (
    MEMORY_STORAGE,
    TrainResult,
    log_trials,
    run_tuning_worker,
    train_model,
)

THREADS_ENV = "OMNISCORE_LGBM_THREADS"
STOP_TIMEOUT_SECONDS = 600.0
"""How long :func:`train_with_workers` waits for workers after its own tuning has finished."""


@dataclass(frozen=True)
class Heartbeat:
    """Optuna heartbeat timing: a trial whose heartbeat is older than ``grace`` seconds is
    failed and re-queued by the next process that starts a trial."""

    interval: int = tune.HEARTBEAT_SECONDS
    grace: int = tune.GRACE_SECONDS


@dataclass(frozen=True)
class WorkerReport:
    """How the tuning workers of one job ended."""

    workers: int
    exit_codes: list[int | None]
    """One per extra process: 0 ran to the end, other values failed, None still running."""

    @property
    def failed(self) -> int:
        """Workers that did not exit cleanly."""
        return sum(1 for code in self.exit_codes if code != 0)


# --- settings helpers (pure) --------------------------------------------------------------------
def shared_storage(settings: Settings, storage_url: str | None) -> str:
    """The study storage all workers use; refuses the in-memory study, which no one can share."""
    url = storage_url or settings.optuna_storage_url
    if url == MEMORY_STORAGE:
        raise ValueError("an in-memory study cannot be shared: give an SQLite or PostgreSQL URL")
    return url


def threads_per_worker(workers: int, cpus: int | None = None) -> int:
    """LightGBM threads for each of ``workers`` processes on one machine (at least 1).

    ``$OMNISCORE_LGBM_THREADS`` wins; otherwise the cores are split between the workers, as
    OpenMP threads of several processes on the same cores wait on each other.
    """
    if os.environ.get(THREADS_ENV):
        return max(1, int(os.environ[THREADS_ENV]))
    cpus = cpus or os.cpu_count() or 1
    return max(1, cpus // max(1, workers))


def worker_kwargs(train_kwargs: dict) -> dict:
    """The data options a worker must share with ``train_model`` to join the same study.

    A value left at its default is not passed. Raises ``ValueError`` when an option that
    changes the training data is set but :func:`run_tuning_worker` cannot take it (the
    workers would tune another study, or fail the eligibility check).
    """
    from training.datasets import DEFAULT_CUTOFFS, DEFAULT_MIN_CLASS

    defaults = {
        "horizon_days": None,
        "churn_lookback_days": None,
        "n_cutoffs": DEFAULT_CUTOFFS,
        "min_class": DEFAULT_MIN_CLASS,
    }
    accepted = inspect.signature(run_tuning_worker).parameters
    out = {}
    for key, default in defaults.items():
        value = train_kwargs.get(key, default)
        if value == default:
            continue
        if key not in accepted:
            raise ValueError(
                f"{key}={value} cannot be passed to tuning workers (run_tuning_worker does not "
                "take it yet): use --workers 1, or the default"
            )
        out[key] = value
    return out


# --- process-local configuration ----------------------------------------------------------------
@contextmanager
def heartbeat_timing(heartbeat: Heartbeat | None) -> Iterator[None]:
    """Use ``heartbeat`` for the studies this process opens (``None``: tune's defaults)."""
    if heartbeat is None:
        yield
        return
    if heartbeat.interval <= 0 or heartbeat.grace <= heartbeat.interval:
        raise ValueError("heartbeat needs interval > 0 and grace > interval")
    # training.tune reads these module constants when it opens a storage; they are set only
    # for the duration of this process's tuning and restored afterwards.
    saved = tune.HEARTBEAT_SECONDS, tune.GRACE_SECONDS
    tune.HEARTBEAT_SECONDS, tune.GRACE_SECONDS = heartbeat.interval, heartbeat.grace
    try:
        yield
    finally:
        tune.HEARTBEAT_SECONDS, tune.GRACE_SECONDS = saved


@contextmanager
def lgbm_threads(threads: int | None) -> Iterator[None]:
    """Set ``$OMNISCORE_LGBM_THREADS`` for this process while the block runs."""
    if threads is None:
        yield
        return
    saved = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = saved


def prepare_storage(storage_url: str) -> None:
    """Create the Optuna tables once, before several processes open an empty database.

    Processes that create the schema of an empty PostgreSQL database at the same moment can
    collide on its catalog; one creator first makes every later open a plain read.
    """
    tune.storage_for(storage_url, heartbeat=False).remove_session()


# --- processes ----------------------------------------------------------------------------------
def _worker_main(
    settings: Settings,
    model: str,
    trials: int,
    seed: int,
    storage_url: str,
    heartbeat: Heartbeat | None,
    threads: int | None,
    kwargs: dict,
) -> None:
    with lgbm_threads(threads), heartbeat_timing(heartbeat):
        ran = run_tuning_worker(settings, model, trials, seed, storage_url, **kwargs)
    print(f"tuning worker {os.getpid()}: {ran} trials of {model}", file=sys.stderr, flush=True)


def start_worker(
    settings: Settings,
    model: str,
    trials: int,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    heartbeat: Heartbeat | None = None,
    threads: int | None = None,
    **kwargs,
) -> BaseProcess:
    """Start one tuning worker in a fresh (spawned) process; returns the started process.

    It joins the study of ``model`` at ``storage_url`` (default: the settings' Optuna
    storage) and runs trials until the study holds ``trials`` finished ones. ``kwargs`` are
    the data options of :func:`worker_kwargs`.
    """
    url = shared_storage(settings, storage_url)
    process = multiprocessing.get_context("spawn").Process(
        target=_worker_main,
        args=(settings, model, trials, seed, url, heartbeat, threads, kwargs),
        name=f"omniscore-tune-{model}",
    )
    process.start()
    return process


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
    heartbeat: Heartbeat | None = None,
    threads: int | None = None,
    **kwargs,
) -> WorkerReport:
    """Run ``workers`` tuning processes on one study until it has ``trials`` finished trials.

    Tuning only: no MLflow run, nothing registered. This is how further machines join a
    study that ``omniscore train MODEL --workers N`` runs elsewhere. Blocks until every
    worker has exited.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    url = shared_storage(settings, storage_url)
    prepare_storage(url)
    threads = threads or threads_per_worker(workers)
    processes = [
        start_worker(
            settings, model, trials, seed, url, heartbeat=heartbeat, threads=threads, **kwargs
        )  # fmt: skip
        for _ in range(workers)
    ]
    try:
        for process in processes:
            process.join()
    finally:
        stop_workers(processes)
    return WorkerReport(workers, [p.exitcode for p in processes])


def train_with_workers(
    settings: Settings,
    model: str,
    trials: int = 20,
    workers: int = 2,
    seed: int = 42,
    storage_url: str | None = None,
    *,
    heartbeat: Heartbeat | None = None,
    threads: int | None = None,
    **train_kwargs,
) -> TrainResult:
    """Train ``model`` with ``workers`` processes tuning one study (``--workers N``).

    This process runs :func:`~training.train.train_model` (tuning, then refit, evaluation,
    MLflow logging and registration); ``workers - 1`` spawned processes run
    :func:`~training.train.run_tuning_worker` on the same study. ``train_kwargs`` go to
    ``train_model`` (``experiment``, ``register``, ``progress``, data options). The parent
    run gets every finished trial of the study as a nested run, the tag
    ``omniscore.tuning_workers`` and the metric ``trials_in_study``; the result's metrics
    hold ``tuning_workers`` and ``worker_failures``. With ``workers=1`` this is
    ``train_model`` on the shared storage.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    url = shared_storage(settings, storage_url)
    extra = worker_kwargs(train_kwargs) if workers > 1 else {}
    prepare_storage(url)
    threads = threads or threads_per_worker(workers)
    processes: list[BaseProcess] = []
    try:
        for _ in range(workers - 1):
            processes.append(
                start_worker(
                    settings,
                    model,
                    trials,
                    seed,
                    url,
                    heartbeat=heartbeat,
                    threads=threads,
                    **extra,
                )  # fmt: skip
            )
        with lgbm_threads(threads), heartbeat_timing(heartbeat):
            result = train_model(settings, model, trials, seed, storage_url=url, **train_kwargs)
        for process in processes:
            process.join(STOP_TIMEOUT_SECONDS)
    finally:
        stop_workers(processes)
    report = WorkerReport(workers, [p.exitcode for p in processes])
    logged = log_missing_trials(settings, result, url)
    client = _client(settings)
    in_study = _finished_trials(result.study_name, url)
    client.set_tag(result.run_id, "omniscore.tuning_workers", str(workers))
    client.log_metric(result.run_id, "trials_in_study", float(in_study))
    if report.failed:
        client.set_tag(result.run_id, "omniscore.worker_exit_codes", str(report.exit_codes))
    result.metrics.update(
        tuning_workers=float(workers),
        worker_failures=float(report.failed),
        trials_in_study=float(in_study),
        trials_logged_after_workers=float(logged),
    )
    return result


# --- MLflow: every trial under the parent run ---------------------------------------------------
@dataclass(frozen=True)
class _TrialSubset:
    """The two members of a study that :func:`~training.train.log_trials` reads."""

    study_name: str
    trials: list

    def get_trials(self, deepcopy: bool = False) -> list:
        return self.trials


def _client(settings: Settings):
    from training.model_io import registry_client

    return registry_client(settings)


def _finished_trials(study_name: str, storage_url: str) -> int:
    import optuna

    storage = tune.storage_for(storage_url, heartbeat=False)
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

    client = _client(settings)
    done = logged_trial_numbers(client, result.experiment_id, result.run_id)
    storage = tune.storage_for(storage_url, heartbeat=False)
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


# --- command line -------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.distributed worker MODEL --trials N [--workers K]``.

    Joins the study of ``MODEL`` in the configured Optuna storage
    (``OMNISCORE_OPTUNA_STORAGE`` or the profile; never a command-line argument, as the URL
    may hold a password) with ``K`` local processes, tuning only.
    """
    parser = argparse.ArgumentParser(prog="python -m training.distributed")
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", help="join a shared study with local tuning processes")
    worker.add_argument("model", choices=["propensity", "churn", "segments"])
    worker.add_argument("--trials", type=int, default=20, help="finished trials the study needs")
    worker.add_argument("--workers", type=int, default=1, help="local processes")
    worker.add_argument("--seed", type=int, default=42, help="the seed train was started with")
    worker.add_argument("--home", default=None, help="OmniScore home (default $OMNISCORE_HOME)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(args.home)
    url = shared_storage(settings, None)
    print(f"joining {args.model} study at {redact(url)} with {args.workers} process(es)")
    report = run_workers(settings, args.model, args.trials, args.workers, args.seed)
    print(f"workers exited with {report.exit_codes}")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
