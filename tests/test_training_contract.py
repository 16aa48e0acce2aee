"""The model contract is the one place that names models, and what derives from it.

Also: serving imports no Optuna, the LightGBM thread count is a setting, the commit recorded
on every run is the checkout's, and tuning workers have one entry point with the data options
of the training job (that they lead to its study is run on PostgreSQL in test_production.py).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from data_layer.settings import Settings
from feature_repo.catalog import FEATURE_SERVICES, service_features
from omniscore.cli import app
from training import distributed
from training.contract import (
    CLASSIFIER,
    CLASSIFIERS,
    CLUSTERING,
    CONTRACTS,
    MODEL_NAMES,
    contract,
    registered_name,
)
from training.labels import LabelSpec, label_spec, recorded_label_spec
from training.model_io import PACKAGE_KINDS
from training.registry import full_name
from training.runs import git_commit
from training.train import DATA_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "serving", "omniscore", "feature_repo", "data_layer")
DATA_FLAGS = {"horizon_days", "min_class", "churn_lookback_days", "cutoffs"}
"""The command-line names of :data:`~training.train.DATA_OPTIONS` (``n_cutoffs`` is
``--cutoffs``)."""


def _command(name: str):
    return typer.main.get_command(app).commands[name]


def test_every_name_derives_from_the_contract():
    assert MODEL_NAMES == tuple(c.name for c in CONTRACTS) == ("propensity", "churn", "segments")
    for terms in CONTRACTS:
        assert terms.registered_name == f"omniscore-{terms.name}"
        assert contract(terms.name) is contract(terms.registered_name) is terms
        assert registered_name(terms.name) == full_name(terms.name) == terms.registered_name
        # The Feast catalog defines the service the model reads.
        assert terms.feature_service in FEATURE_SERVICES
        assert service_features(terms.feature_service)
        assert terms.kind in PACKAGE_KINDS
        if terms.kind == CLASSIFIER:
            spec = LabelSpec.default(terms.name)
            assert (spec.horizon_days, spec.active_lookback_days) == (
                terms.label.horizon_days,
                terms.label.active_lookback_days,
            )
            assert (spec.population, spec.outcome) == (terms.label.population, terms.label.outcome)
            assert spec.definition().startswith(f"{terms.name}: ")
        else:
            assert terms.kind == CLUSTERING and terms.label is None
    assert CLASSIFIERS == ("propensity", "churn")
    with pytest.raises(ValueError, match="unknown model 'ltv'; choose one of propensity, churn"):
        contract("ltv")
    with pytest.raises(ValueError, match="a classifier, and only one, has a label"):
        type(CONTRACTS[0])("ltv", CLASSIFIER, "ltv_v1", "lifetime value")


def test_commands_and_serving_offer_the_contract_models():
    import serving.scoring
    from omniscore import cli

    assert cli.MODELS == MODEL_NAMES
    assert serving.scoring.MODELS == MODEL_NAMES and serving.scoring.CLASSIFIERS == CLASSIFIERS
    for name in ("train", "promote", "rollback", "tune-worker"):
        (argument,) = [p for p in _command(name).params if p.name == "model"]
        assert argument.help.startswith(", ".join(MODEL_NAMES))
    unknown = CliRunner().invoke(app, ["promote", "ltv", "--home", "/nonexistent/omniscore"])
    assert unknown.exit_code == 2
    assert "choose propensity, churn, segments or all" in unknown.output


def test_no_module_spells_a_registered_model_name_or_its_feature_service():
    # The contract is the one place a model's registered name and service are written; the
    # Feast catalog (feature_repo) defines the services themselves.
    literals = {f'"{c.registered_name}"' for c in CONTRACTS}
    literals |= {f'"{c.feature_service}"' for c in CONTRACTS}
    found = []
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "contract.py" or path.parent.name == "feature_repo":
                continue
            text = path.read_text()
            found += [f"{path.relative_to(ROOT)}: {lit}" for lit in literals if lit in text]
    assert found == []


def test_a_label_is_read_back_from_a_version_or_its_run():
    churn30 = label_spec("churn", horizon_days=30, active_lookback_days=45)
    assert recorded_label_spec("churn", churn30.tags()) == churn30
    # Versions registered before the tags: the run's parameters; neither: the defaults.
    params = {"horizon_days": "30", "active_lookback_days": "45", "trials": "2"}
    assert recorded_label_spec("churn", {}, params) == churn30
    assert recorded_label_spec("churn", {}, {}) == LabelSpec.default("churn")
    assert recorded_label_spec("propensity", {}, {"horizon_days": "21"}).horizon_days == 21


def test_serving_imports_no_optuna():
    code = (
        "import sys, serving.scoring; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'optuna'))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_lightgbm_threads_are_a_setting(tmp_path):
    assert Settings.from_env(tmp_path, env={}).lgbm_thread_count == 2
    one = Settings.from_env(tmp_path, env={"OMNISCORE_LGBM_THREADS": "1"})
    assert one.lgbm_threads == one.lgbm_thread_count == 1
    (tmp_path / "omniscore.toml").write_text("lgbm_threads = 3\n")
    assert Settings.from_env(tmp_path, env={}).lgbm_thread_count == 3
    with pytest.raises(ValueError, match=r"lgbm_threads \(OMNISCORE_LGBM_THREADS\) must be at"):
        Settings.from_env(tmp_path, env={"OMNISCORE_LGBM_THREADS": "0"})
    with pytest.raises(ValueError, match="must be a whole number, got 'two'"):
        Settings.from_env(tmp_path, env={"OMNISCORE_LGBM_THREADS": "two"})
    # A configured count wins over splitting the cores between workers.
    assert distributed.threads_per_worker(2, cpus=8) == 4
    assert distributed.threads_per_worker(2, cpus=8, configured=1) == 1


def _rev_parse_head() -> str:
    out = subprocess.run(
        ["git", "-c", f"safe.directory={ROOT}", "-C", str(ROOT), "rev-parse", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_git_commit_is_the_checkouts_head_even_without_a_git_binary(tmp_path, monkeypatch):
    head = _rev_parse_head()
    assert re.fullmatch(r"[0-9a-f]{40}", head)
    assert git_commit() == head
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run: HEAD is read from .git
    assert git_commit() == head
    assert git_commit(tmp_path) == "unknown"


def test_tuning_workers_have_one_entry_point_with_the_data_options_of_train():
    # `python -m training.distributed worker` lacked --cutoffs and --churn-lookback-days and
    # so joined another study; omniscore tune-worker is the only worker command.
    assert not hasattr(distributed, "main")
    assert {"n_cutoffs", *DATA_FLAGS} - {"cutoffs"} == set(DATA_OPTIONS)
    for name in ("train", "tune-worker"):
        flags = {p.name for p in _command(name).params}
        assert flags >= DATA_FLAGS, name
