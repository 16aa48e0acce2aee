"""The notebooks run top to bottom on one small trained home and show what they promise.

They are executed with nbclient on the ``python3`` kernel, which jupyter_client resolves to
this interpreter (the venv's). The home is a copy of the session's serving home
(``tests/conftest.py``), which the same ``ensure_home`` the notebooks call finds complete, so
each notebook does only its own work. The experiment
notebook's new run is checked in MLflow, not only in the notebook's text.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from mlflow import MlflowClient
from nbclient import NotebookClient
from training_home import copy_home

from data_layer.schema import CHANNELS
from data_layer.settings import Settings
from data_layer.synthetic import ARCHETYPE_NAMES
from omniscore.workspace import WorkspaceSize, ensure_home, workspace_settings
from training.contract import MODEL_NAMES
from training.experiments import latest_per
from training.model_io import load_champion

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = (
    "01-explore-signals.ipynb",
    "02-experiment.ipynb",
    "03-segments.ipynb",
    "04-journey.ipynb",
)
SIZE = WorkspaceSize(trials=1, min_class=20, cutoffs=4)
"""What the kernels read from ``OMNISCORE_NB_*``: the experiment notebook trains its second
horizon as the serving home's models were trained (one trial, four cutoffs)."""


# --- fast checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_stored_valid_and_without_outputs(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{name} has no code"
    assert all(c.outputs == [] and c.execution_count is None for c in code), (
        f"{name} is stored with outputs: clear them before committing"
    )
    assert "ensure_home(" in code[0].source, f"{name} must build its home when it is empty"


def test_workspace_size_from_env() -> None:
    assert WorkspaceSize.from_env({}) == WorkspaceSize()
    size = WorkspaceSize.from_env({"OMNISCORE_NB_CUSTOMERS": "350", "OMNISCORE_NB_TRIALS": " 2 "})
    assert (size.customers, size.trials, size.days) == (350, 2, WorkspaceSize().days)
    with pytest.raises(ValueError, match="OMNISCORE_NB_DAYS"):
        WorkspaceSize.from_env({"OMNISCORE_NB_DAYS": "many"})
    with pytest.raises(ValueError, match="at least 1"):
        WorkspaceSize.from_env({"OMNISCORE_NB_TRIALS": "0"})


def test_workspace_settings_default_to_the_checkout_data(tmp_path: Path) -> None:
    assert workspace_settings({}).home == ROOT / "data"
    assert workspace_settings({"OMNISCORE_HOME": str(tmp_path)}).home == tmp_path.resolve()


def test_latest_per_keeps_the_newest_finished_run_of_each_value() -> None:
    t = pd.Timestamp("2026-01-01", tz="UTC")
    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d"],
            "status": ["FINISHED", "FINISHED", "FAILED", "FINISHED"],
            "start_time": [t, t + pd.Timedelta(hours=1), t + pd.Timedelta(hours=2), t],
            "horizon_days": [14, 14, 7, 7],
        }
    )
    assert latest_per(runs, "horizon_days")["run_id"].tolist() == ["d", "b"]


# --- executed notebooks ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def nb_home(serving_home, tmp_path_factory):
    """A copy of the session's serving home (all three champions, materialized): each
    notebook's ``ensure_home`` finds every stage done, as on a home ``make demo`` built, and
    does only its own work. The environment the kernels inherit points at it."""
    home = copy_home(serving_home, tmp_path_factory.mktemp("notebook-home")).home
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMNISCORE_HOME", str(home))
        # The size of a world to build were the home empty; here it is not.
        for f in fields(SIZE):
            if getattr(SIZE, f.name) is not None:  # None: the default, left unset
                mp.setenv(f"OMNISCORE_NB_{f.name.upper()}", str(getattr(SIZE, f.name)))
        # On two busy cores, OpenMP threads wait on each other: one LightGBM thread is faster.
        mp.setenv("OMNISCORE_LGBM_THREADS", "1")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # The notebooks check their own results with assert: their kernels run unoptimized.
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "OMNISCORE_PROFILE",
                    "OMNISCORE_NB_HORIZON", "PYTHONOPTIMIZE"):  # fmt: skip
            mp.delenv(var, raising=False)
        settings = Settings.from_env(home)
        report = ensure_home(settings, SIZE, log=lambda _: None)
        assert report.built == [], report.summary()
        assert report.champions == {m: "1" for m in MODEL_NAMES}, report.summary()
        yield settings


def run_notebook(name: str) -> nbformat.NotebookNode:
    """Execute a notebook in a fresh kernel (cwd ``notebooks/``); a failing cell raises."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=600,
        startup_timeout=180,
        resources={"metadata": {"path": str(NOTEBOOKS)}},
    )
    client.execute()
    return nb


def tagged_text(nb: nbformat.NotebookNode, tag: str) -> str:
    """Printed and displayed text of the cell carrying ``tag``."""
    (cell,) = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "\n".join(parts)


def images(nb: nbformat.NotebookNode) -> int:
    """Number of plots the executed notebook displayed."""
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
    )


@pytest.mark.slow
def test_explore_signals_notebook(nb_home: Settings) -> None:
    nb = run_notebook("01-explore-signals.ipynb")
    counts = tagged_text(nb, "channel-family-counts")
    assert all(channel in counts for channel in CHANNELS)
    assert "behavioral" in counts and "contextual" in counts
    medians = tagged_text(nb, "archetype-medians")
    assert all(archetype in medians for archetype in ARCHETYPE_NAMES)
    # The point-in-time cells assert hand counts against stored and Feast-served features.
    assert "wait for the next snapshot" in tagged_text(nb, "point-in-time-check")
    assert "snapshot used" in tagged_text(nb, "feast-as-of")
    assert images(nb) >= 4


@pytest.mark.slow
def test_experiment_notebook_logs_a_second_horizon(nb_home: Settings) -> None:
    nb = run_notebook("02-experiment.ipynb")
    client = MlflowClient(tracking_uri=nb_home.tracking_uri, registry_uri=nb_home.tracking_uri)
    experiment = client.get_experiment_by_name("omniscore")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`omniscore.model` = 'propensity' and attributes.status = 'FINISHED'",
    )
    by_horizon = {int(r.data.params["horizon_days"]): r for r in runs}
    assert len(runs) == 2 and sorted(by_horizon) == [7, 14]
    seven = by_horizon[7]
    assert "T+7d" in seven.data.tags["omniscore.label_definition"]
    assert 0.5 < seven.data.metrics["test_roc_auc"] <= 1.0
    assert "omniscore.registered_version" not in seven.data.tags
    # The experiment leaves the registry alone: v1 (14 days) is still the only version.
    versions = client.search_model_versions("name='omniscore-propensity'")
    assert [str(v.version) for v in versions] == ["1"]
    comparison = tagged_text(nb, "comparison")
    assert seven.info.run_id in comparison and by_horizon[14].info.run_id in comparison
    assert images(nb) >= 1


@pytest.mark.slow
def test_segments_notebook(nb_home: Settings) -> None:
    nb = run_notebook("03-segments.ipynb")
    champion = load_champion(nb_home, "segments")
    catalogue = tagged_text(nb, "segment-catalogue")
    profile = tagged_text(nb, "profile-table")
    for name in champion.segments.names:
        assert name in catalogue and name in profile
    assert "population" in profile
    agreement = tagged_text(nb, "archetype-agreement")
    assert "adjusted Rand index" in agreement
    assert all(archetype in agreement for archetype in ARCHETYPE_NAMES)
    assert images(nb) >= 3


@pytest.mark.slow
def test_journey_notebook(nb_home: Settings, services) -> None:
    """The journey runs against a real service: five steps, the triggers read back from Redis
    equal to the band changes of its table (the notebook asserts it), and the page at each
    step when a browser is installed."""
    nb = run_notebook("04-journey.ipynb")
    table = tagged_text(nb, "journey-table")
    for step in ("email click", "app browsing", "abandoned cart", "store visit", "purchase"):
        assert step in table
    assert "exactly the band and segment changes" in tagged_text(nb, "triggers")
    pages = tagged_text(nb, "pages")
    assert "step 5: purchase" in pages or "no browser here" in pages
    assert images(nb) >= 1
