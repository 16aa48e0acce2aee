"""The classifier training job (propensity, churn): tune, refit, calibrate, evaluate, register.

One job, for any model whose contract kind is ``classifier``:

1. the training set (:class:`ClassifierData`): time-split rows labelled by the model's
   label definition, features from its Feast service, encoded once;
2. Optuna tunes LightGBM on a stratified sample of the training cutoffs, stopping early on the
   validation cutoff (:mod:`training.tune`);
3. a holdout refit on the training cutoffs gives the Platt calibration on validation; the final
   model is refit on training and validation;
4. the test cutoff's metrics, the baselines (:mod:`training.baselines`), the simulator's oracle
   where there is one, SHAP by channel and the charts;
5. lineage, the package and its registration (:mod:`training.runs`), the version recording
   its label windows so that the promotion gate evaluates it on the same label.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np

from data_layer.event_store import event_data_hash
from data_layer.settings import Settings
from training import evaluate as ev
from training.baselines import baseline_metrics, bgnbd_scores, single_channel_note
from training.contract import contract
from training.datasets import TrainingSet, build_training_set
from training.labels import LabelSpec, oracle_for_rows
from training.model_io import (
    ClassifierPackage,
    encode_frame,
    fit_platt,
    population_stats,
    vocabulary,
    write_classifier_dir,
)
from training.runs import JobOptions, Lineage, TrainResult, training_run, trial_progress
from training.tune import (
    make_datasets,
    make_objective,
    study_name_for,
    trial_heartbeat,
    tune_lightgbm,
)

SHAP_SAMPLE = 3000
"""Test rows whose SHAP values are computed for the charts (mean |SHAP| is stable by then;
LightGBM's pred_contrib costs about 30 plain predictions per row)."""
TUNING_ROWS = 120_000
"""Training rows the Optuna trials and the single-channel baselines fit on, at most: a
stratified sample when the training cutoffs hold more (the final model is refit on every
row). At 100k customers the training cutoffs hold about 375k rows; hyperparameters chosen on
120k of them, with 18k positives, carry over, and each trial costs a third."""
TUNING_SAMPLE_SEED = 20_261_123
"""Fixed, so that every tuning worker of a study fits on the same rows."""
MAX_ROUND_STRETCH = 1.5
"""The final refit on training plus validation rows runs proportionally more boosting rounds
than the early-stopped best, at most this many times as many."""


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
    """One LightGBM fit with fixed rounds (refits); threads from ``params["num_threads"]``."""
    data = lgb.Dataset(
        x,
        label=y,
        feature_name=list(names),
        categorical_feature=list(categorical),
        params={
            "verbosity": -1,
            "feature_pre_filter": False,
            "num_threads": params["num_threads"],
        },
    )
    return lgb.train(params, data, num_boost_round=max(1, int(rounds)))


@dataclass
class ClassifierData:
    """A classifier's training set, encoded, with the Dataset pair every trial reuses."""

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
    def categorical_index(self) -> list[int]:
        """Input positions of the categorical features."""
        return [self.ts.feature_names.index(n) for n in self.ts.categorical]

    @classmethod
    def build(
        cls, settings: Settings, model: str, spec: LabelSpec, n_cutoffs: int, min_class: int
    ) -> ClassifierData:
        """Plan, label, fetch and encode the rows; build the tuning Datasets."""
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
            cat_idx, settings.lgbm_thread_count,
        )  # fmt: skip
        return cls(ts, vocab, x, y, train_ds, valid_ds, event_data_hash(settings),
                   time.perf_counter() - started, sample)  # fmt: skip

    def study_name(self, seed: int) -> str:
        """The study of these rows: same data, cutoffs, label, service and seed, same name."""
        return study_name_for(
            self.ts.model,
            [self.data_hash, self.ts.plan.describe(), self.ts.spec.definition(),
             self.ts.feature_service],
            seed,
        )  # fmt: skip


def tuning(
    settings: Settings, model: str, seed: int, spec: LabelSpec, n_cutoffs: int, min_class: int
) -> tuple[str, Callable, str]:
    """What a tuning worker runs: (study name, objective, direction) of the job's study."""
    data = ClassifierData.build(settings, model, spec, n_cutoffs, min_class)
    objective = make_objective(
        data.train_ds, data.valid_ds, data.y["valid"], seed, settings.lgbm_thread_count
    )
    return data.study_name(seed), objective, "minimize"


def train_classifier(
    settings: Settings,
    model: str,
    trials: int,
    seed: int,
    *,
    spec: LabelSpec,
    n_cutoffs: int,
    min_class: int,
    job: JobOptions,
) -> TrainResult:
    """Train, evaluate, log and register one classifier (see the module docstring)."""
    say = job.say
    threads = settings.lgbm_thread_count
    say("features", 0, 1)
    data = ClassifierData.build(settings, model, spec, n_cutoffs, min_class)
    say("features", 1, 1)
    ts, x, y = data.ts, data.x, data.y
    names, cat_idx = ts.feature_names, data.categorical_index
    study_name = data.study_name(seed)
    with training_run(settings, model, job.experiment) as run:
        run.timings["time_dataset"] = data.seconds
        with run.timed("time_tuning"):
            study, tuned = tune_lightgbm(
                data.train_ds, data.valid_ds, y["valid"], trials, seed, job.storage, study_name,
                callbacks=[trial_progress(job.progress, trials)],
                heartbeat=trial_heartbeat(settings), threads=threads,
            )  # fmt: skip
        run.timings["time_trial_training"] = tuned.train_seconds

        say("refit", 0, 2)
        with run.timed("time_refit"):
            params = tuned.best_params
            rounds = tuned.best_iteration
            holdout = train_booster(params, x["train"], y["train"], names, cat_idx, rounds)
            raw_valid = holdout.predict(x["valid"], raw_score=True, num_threads=threads)
            calibration = fit_platt(raw_valid, y["valid"])
            x_fit = np.vstack([x["train"], x["valid"]])
            y_fit = np.concatenate([y["train"], y["valid"]])
            stretch = min(MAX_ROUND_STRETCH, len(y_fit) / max(len(y["train"]), 1))
            fit_rounds = int(round(rounds * stretch))
            final = train_booster(params, x_fit, y_fit, names, cat_idx, fit_rounds)
        say("refit", 2, 2)

        say("evaluate", 0, 1)
        with run.timed("time_evaluate"):
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
                threads=threads,
            )
            valid_p = pkg.calibrate(final.predict(x["valid"], raw_score=True, num_threads=threads))
            pkg.score_quantiles, pkg.band_thresholds, pkg.cold_start = population_stats(valid_p)
            p_test = pkg.calibrate(final.predict(x["test"], raw_score=True, num_threads=threads))
            metrics = {
                f"test_{k}": v for k, v in ev.classification_metrics(y["test"], p_test).items()
            }
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
                # The omnichannel holdout model (training cutoffs only), on equal footing with
                # the single-channel baselines.
                holdout_test_roc_auc=ev.auc(
                    y["test"], holdout.predict(x["test"], num_threads=threads)
                ),
            )
            test_rows = ts.part("test")
            compared, baselines, p_rfm = baseline_metrics(
                params, names, x, y, data.sample, ts.part("fit"), y_fit, test_rows
            )
            metrics.update(compared)
            metrics["gain_over_rfm"] = metrics["test_roc_auc"] - metrics["rfm_test_roc_auc"]
            metrics.update(_bgnbd_metrics(settings, ts, spec, y["test"], metrics))
            p_bgnbd = metrics.pop("_p_bgnbd", None)
            oracle = oracle_for_rows(settings, spec, ts.plan.test, test_rows["customer_id"])
            if oracle is not None:
                metrics["oracle_auc"] = ev.auc(y["test"], oracle)
                metrics["auc_gap_to_oracle"] = metrics["oracle_auc"] - metrics["test_roc_auc"]
        say("evaluate", 1, 1)

        say("logging", 0, 1)
        started = time.perf_counter()
        run.log_trials(study)
        rng = np.random.default_rng(seed)
        sample = rng.choice(len(y["test"]), size=min(SHAP_SAMPLE, len(y["test"])), replace=False)
        sample.sort()
        contrib = final.predict(x["test"][sample], pred_contrib=True, num_threads=threads)
        with tempfile.TemporaryDirectory() as tmp:
            charts = Path(tmp) / "evaluation"
            ev.classifier_report(
                y["test"], p_test, contrib, names,
                final.feature_importance(importance_type="gain"), charts,
                baselines={"RFM logistic": p_rfm,
                           **({"BG/NBD": p_bgnbd} if p_bgnbd is not None else {})},
            )  # fmt: skip
            baselines.to_csv(charts / "single_channel_baselines.csv", index=False)
            per_channel = ev.shap_by_channel(ev.mean_abs_shap(contrib, names))
            run.log_artifacts(charts, "evaluation")
            # The monitor's reference: a sample of the test population, without ids. Its
            # labels let the monitor and the backtest recalibrate the probabilities before
            # estimating the AUC without labels (training.backtest.reference_recalibration).
            from training.monitor import write_reference

            reference = Path(tmp) / "reference"
            write_reference(test_rows, names, reference, seed, probability=p_test, label=y["test"])
            run.log_artifacts(reference, "reference")
            package_dir = Path(tmp) / "package"
            hashes = write_classifier_dir(pkg, package_dir, test_rows.head(50))
            metrics.update({f"shap_channel_{k}": float(v) for k, v in per_channel.items()})
            metrics["tuning_overhead_ratio"] = tuned.overhead_ratio
            metrics["trials_run"] = tuned.trials_run
            run.timings["time_logging"] = time.perf_counter() - started
            version = run.publish(
                package_dir,
                hashes,
                lineage=Lineage(ts.feature_service, spec.definition(), ts.plan.describe(), seed,
                                data.data_hash, study_name),
                metrics=metrics,
                params={**{f"lgb_{k}": v for k, v in params.items()},
                        "trials": trials, "seed": seed, "horizon_days": spec.horizon_days,
                        "active_lookback_days": spec.active_lookback_days,
                        "n_cutoffs": len(ts.plan.all), "min_class": min_class},
                description=_description(model, ts, spec, data.data_hash, metrics),
                register=job.register,
                version_tags={"omniscore.cutoffs": ts.plan.describe(),
                              "omniscore.label_definition": spec.definition(),
                              **spec.tags(),
                              "test_roc_auc": f"{metrics['test_roc_auc']:.4f}",
                              "test_ece": f"{metrics['test_ece']:.4f}"},
            )  # fmt: skip
        say("logging", 1, 1)
    return TrainResult(
        model=model,
        registered_name=contract(model).registered_name,
        version=version,
        run_id=run.run_id,
        experiment_id=run.experiment_id,
        metrics=metrics,
        cutoffs=ts.plan.describe(),
        feature_service=ts.feature_service,
        study_name=study_name,
        trials_run=tuned.trials_run,
        timings=run.timings,
    )


def _bgnbd_metrics(settings: Settings, ts: TrainingSet, spec: LabelSpec, y_test, metrics):
    """BG/NBD on the test cutoff (fitted on the purchases before it) and the comparison with
    every classical baseline: ``bgnbd_test_roc_auc``, ``gain_over_bgnbd``,
    ``best_baseline_test_roc_auc``, ``gain_over_best_baseline`` and ``beats_baselines`` (1 when
    the model's test AUC is above both RFM-logistic and BG/NBD). ``_p_bgnbd`` carries the
    scores for the charts (popped by the caller)."""
    out: dict = {}
    p = bgnbd_scores(
        settings, ts.plan.test, ts.part("test")["customer_id"], spec.horizon_days, spec.outcome
    )
    baselines = [metrics["rfm_test_roc_auc"]]
    if p is not None:
        out["_p_bgnbd"] = p
        out["bgnbd_test_roc_auc"] = ev.auc(y_test, p)
        out["gain_over_bgnbd"] = metrics["test_roc_auc"] - out["bgnbd_test_roc_auc"]
        baselines.append(out["bgnbd_test_roc_auc"])
    best = float(np.nanmax(baselines))
    out["best_baseline_test_roc_auc"] = best
    out["gain_over_best_baseline"] = metrics["test_roc_auc"] - best
    out["beats_baselines"] = float(out["gain_over_best_baseline"] > 0)
    return out


def _description(model, ts: TrainingSet, spec: LabelSpec, data_hash: str, metrics) -> str:
    fit = ts.part("fit")
    bgnbd = metrics.get("bgnbd_test_roc_auc")
    against = f"RFM-logistic {metrics['rfm_test_roc_auc']:.3f}" + (
        f", BG/NBD {bgnbd:.3f}" if bgnbd is not None else ", BG/NBD not fitted (no purchases)"
    )
    note = single_channel_note(metrics)
    return (
        f"OmniScore {model}: LightGBM on Feast service {ts.feature_service} "
        f"({len(ts.feature_names)} features), trained on {len(fit)} rows "
        f"({fit['customer_id'].nunique()} customers) at cutoffs {ts.plan.describe()}; "
        f"label: {spec.definition()}; events {data_hash}. "
        f"Test AUC {metrics['test_roc_auc']:.3f} against {against} on the same cutoff "
        f"({'beats' if metrics['beats_baselines'] else 'does not beat'} both), "
        f"ECE {metrics['test_ece']:.3f}." + (f" Note: {note}." if note else "")
    )
