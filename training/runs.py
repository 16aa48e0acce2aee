"""The lifecycle of one training run in MLflow, shared by every training job.

:func:`training_run` opens a run in the ``omniscore`` experiment (nested under a launching
``mlflow run`` if any), hands the job a :class:`TrainingRun` to log trials, charts, metrics
and lineage and to register the model package, and closes the run ``FINISHED``, or
``FAILED`` when the job raises. A job module (:mod:`training.classifier_job`,
:mod:`training.segments_job`) holds only what is particular to its kind of model.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_layer.settings import Settings, redact
from training.model_io import SERVICE_TAG, SHA_TAG, registry_client
from training.registry import register_package

EXPERIMENT = "omniscore"
MODEL_TAG = "omniscore.model"
VERSION_TAG = "omniscore.registered_version"
REPO_ROOT = Path(__file__).resolve().parents[1]
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


@dataclass(frozen=True)
class JobOptions:
    """How a training job runs, whatever its model: where it logs, whether it registers, where
    its Optuna study lives and whom it tells of its progress."""

    experiment: str = EXPERIMENT
    register: bool = True
    storage: str | None = None
    """Optuna storage URL; ``None`` keeps the study in memory."""
    progress: ProgressFn | None = None

    def say(self, stage: str, done: int, total: int) -> None:
        """Report progress of a stage (``features``, ``tuning``, ``refit``, ...), if asked."""
        if self.progress:
            self.progress(stage, done, total)


@dataclass(frozen=True)
class Lineage:
    """Where a model came from, logged as tags of its run: data, features, label, split, seed
    and study, plus the code's commit (:func:`git_commit`)."""

    feature_service: str
    label_definition: str
    cutoffs: str
    seed: int
    data_hash: str
    study_name: str

    def tags(self, settings: Settings) -> dict[str, str]:
        """The lineage as MLflow run tags (the Optuna storage URL redacted)."""
        commit = git_commit()
        return {
            "omniscore.feature_service": self.feature_service,
            "omniscore.label_definition": self.label_definition,
            "omniscore.cutoffs": self.cutoffs,
            "omniscore.event_data_hash": self.data_hash,
            "omniscore.git_commit": commit,
            "mlflow.source.git.commit": commit,
            "omniscore.seed": str(self.seed),
            "omniscore.optuna_study": self.study_name,
            "omniscore.optuna_storage": redact(settings.optuna_storage_url),
        }


# --- pure helpers ---------------------------------------------------------------------------
def git_commit(root: Path = REPO_ROOT) -> str:
    """Commit checked out in the repository at ``root`` (``unknown`` outside a checkout).

    Asks git, allowing this one directory explicitly: git refuses to read a checkout owned by
    another user ("dubious ownership"), as in a container or CI job, and would otherwise make
    every run's commit ``unknown``. Without a usable git binary, ``HEAD`` is read from the
    ``.git`` folder itself.
    """
    try:
        out = subprocess.run(
            ["git", "-c", f"safe.directory={root}", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return _head_from_git_dir(root) or "unknown"


def _head_from_git_dir(root: Path) -> str | None:
    """The commit ``HEAD`` names, read from ``root/.git`` (a folder, or a worktree's file)."""
    git = root / ".git"
    if git.is_file():  # a worktree or submodule: "gitdir: <path>"
        text = git.read_text().strip()
        if not text.startswith("gitdir:"):
            return None
        git = (root / text.removeprefix("gitdir:").strip()).resolve()
    head = git / "HEAD"
    if not head.is_file():
        return None
    ref = head.read_text().strip()
    if not ref.startswith("ref:"):
        return ref or None  # a detached HEAD holds the commit itself
    name = ref.removeprefix("ref:").strip()
    common = git
    if (git / "commondir").is_file():
        common = (git / (git / "commondir").read_text().strip()).resolve()
    for folder in (git, common):
        loose = folder / name
        if loose.is_file():
            return loose.read_text().strip()
        packed = folder / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[1] == name:
                    return parts[0]
    return None


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


def trial_progress(progress: ProgressFn | None, total: int) -> Callable:
    """An Optuna callback reporting ``("tuning", done, total)`` after each trial."""
    done = {"n": 0}

    def callback(study, trial) -> None:
        done["n"] += 1
        if progress:
            progress("tuning", done["n"], total)

    return callback


# --- the run --------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """An open MLflow run of one training job (see :func:`training_run`)."""

    settings: Settings
    client: object
    experiment_id: str
    run_id: str
    model: str
    timings: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Add the block's wall time to ``timings[name]`` (logged as a metric)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - started

    def log_trials(self, study) -> None:
        """Every finished trial of ``study`` as a nested run (``time_logging_trials``)."""
        self.timings["time_logging_trials"] = log_trials(
            self.client, self.experiment_id, self.run_id, study, self.model
        )

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        """Upload a folder of charts or tables under ``artifact_path``."""
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def publish(
        self,
        package_dir: Path,
        hashes: dict[str, str],
        *,
        lineage: Lineage,
        metrics: dict[str, float],
        params: dict[str, object],
        description: str,
        register: bool,
        run_tags: Mapping[str, str] | None = None,
        version_tags: Mapping[str, str] | None = None,
    ) -> str:
        """Log metrics (with the timings), params and lineage, then register the package.

        The run gets the lineage tags, the package's SHA-256 and ``run_tags``; the version
        (alias ``challenger``) gets its feature service, model name and ``version_tags``.
        Returns the registered version, or ``""`` when ``register`` is false.
        """
        tags = {**lineage.tags(self.settings), SHA_TAG: json.dumps(hashes, sort_keys=True)}
        tags.update(run_tags or {})
        metrics.update(self.timings)
        log_batch(self.client, self.run_id, metrics=metrics, params=params, tags=tags)
        if not register:
            return ""
        mv = register_package(
            self.settings,
            self.model,
            package_dir,
            experiment_id=self.experiment_id,
            run_id=self.run_id,
            hashes=hashes,
            description=description,
            tags={SERVICE_TAG: lineage.feature_service, MODEL_TAG: self.model,
                  **(version_tags or {})},
        )  # fmt: skip
        version = str(mv.version)
        self.client.set_tag(self.run_id, VERSION_TAG, version)
        return version


@contextmanager
def training_run(
    settings: Settings, model: str, experiment: str = EXPERIMENT
) -> Iterator[TrainingRun]:
    """Open the MLflow run of a training job; it ends ``FINISHED``, or ``FAILED`` (and the
    error propagates) when the block raises, including on Ctrl-C."""
    client = registry_client(settings)
    exp_id = experiment_id(client, settings, experiment)
    run = client.create_run(
        exp_id, run_name=f"{model}-train", tags={MODEL_TAG: model, **launcher_tags()}
    )
    handle = TrainingRun(settings, client, exp_id, run.info.run_id, model)
    try:
        yield handle
    except BaseException:
        client.set_terminated(handle.run_id, "FAILED")
        raise
    client.set_terminated(handle.run_id, "FINISHED")
