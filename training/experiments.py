"""Comparing training runs: one row per ``train_model`` job, read back from MLflow.

Each job logs one parent run tagged ``omniscore.model`` (its Optuna trials are nested runs
without that tag), with the label horizon, trials and seed as parameters and the test-cutoff
metrics. :func:`training_runs` turns those into a table a notebook can sort, filter and plot;
:func:`latest_per` keeps the newest finished run of each variant (e.g. each label horizon).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from data_layer.settings import Settings

RUN_PARAMS: tuple[str, ...] = ("horizon_days", "active_lookback_days", "trials", "seed")
RUN_METRICS: tuple[str, ...] = (
    "test_roc_auc",
    "test_pr_auc",
    "test_ece",
    "test_brier",
    "test_top_decile_lift",
    "oracle_auc",
    "rfm_test_roc_auc",
    "gain_over_rfm",
    "gain_over_best_single_channel",
    "train_positive_rate",
    "n_train_rows",
    "n_test_rows",
    "silhouette",
    "n_segments",
)
RUN_TAGS: dict[str, str] = {
    "omniscore.label_definition": "label_definition",
    "omniscore.cutoffs": "cutoffs",
    "omniscore.registered_version": "registered_version",
}


def training_runs(
    settings: Settings, model: str, experiment: str = "omniscore", metrics: Sequence[str] = ()
) -> pd.DataFrame:
    """Every training job of ``model`` in an experiment of this home's tracking store.

    Columns: ``run_id``, ``run_name``, ``status``, ``start_time`` (UTC), the parameters of
    :data:`RUN_PARAMS` (as numbers), the tags of :data:`RUN_TAGS`, and the metrics of
    :data:`RUN_METRICS` plus ``metrics`` that the run logged. Oldest first; empty (with those
    columns) when the experiment or the model has no run yet.
    """
    from mlflow import MlflowClient

    wanted = list(dict.fromkeys([*RUN_METRICS, *metrics]))
    columns = ["run_id", "run_name", "status", "start_time", *RUN_PARAMS, *RUN_TAGS.values()]
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return pd.DataFrame(columns=columns + wanted)
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`omniscore.model` = '{model}'",
        max_results=5000,
    )
    rows = []
    for run in runs:
        row = {
            "run_id": run.info.run_id,
            "run_name": run.info.run_name,
            "status": run.info.status,
            "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
        }
        row.update({p: pd.to_numeric(run.data.params.get(p), errors="coerce") for p in RUN_PARAMS})
        row.update({col: run.data.tags.get(tag) for tag, col in RUN_TAGS.items()})
        row.update({m: run.data.metrics.get(m) for m in wanted})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=columns + wanted)
    present = [m for m in wanted if frame[m].notna().any()] if rows else wanted
    frame = frame[columns + present]
    return frame.sort_values("start_time", kind="stable").reset_index(drop=True)


def latest_per(runs: pd.DataFrame, by: str) -> pd.DataFrame:
    """The newest ``FINISHED`` run for each value of column ``by`` (e.g. ``horizon_days``),
    ordered by that value."""
    done = runs[runs["status"] == "FINISHED"]
    latest = done.sort_values("start_time", kind="stable").groupby(by, dropna=False).tail(1)
    return latest.sort_values(by, kind="stable").reset_index(drop=True)
