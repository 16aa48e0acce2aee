"""Backtests: the scores a classifier issued, checked against what the customers then did.

``omniscore backtest MODEL`` calls :func:`backtest`. It takes the scores issued at least one
label horizon before the end of the observed events:

- from the score log (:mod:`data_layer.score_log`) when it holds any: each score's cutoff is
  the UTC midnight after it was issued (so the outcome window holds no event the score could
  have seen), and a customer scored several times on a day counts once, with the last score;
- otherwise from a batch scoring of past snapshots: the version scores each of the latest
  ``snapshots`` weekly snapshots whose label window is complete and that the version was not
  fitted on (its train and validation cutoffs are skipped: see :func:`fitted_cutoffs`), with
  the features Feast serves as of that snapshot (what ``score-batch --as-of`` would have
  served then). Snapshots whose outcome window overlaps a fitted cutoff's are skipped too
  (:func:`outcomes_seen`).

Each score is joined to its label (:func:`training.labels.label_frame`, with the windows the
version was trained with: its ``omniscore.label_horizon_days`` and
``omniscore.label_lookback_days`` tags), so the customers outside the model's population
(e.g. churn scores of customers no longer active) drop out, exactly as in training.

Per model version, and per segment within it: AUC, PR-AUC, lift by decile, the realized
rate of each band against its mean predicted probability, a calibration curve, and a 0-100
quality score (:func:`quality_score`, defined in docs/monitoring.md). The label-free
estimate of :mod:`training.monitor` is computed on the same scores, so each backtest says how
far it was off. An MLflow run in the ``omniscore-monitoring`` experiment records it all and
is linked to the version (tag ``omniscore.backtest_run`` on the version, tags
``omniscore.model`` / ``omniscore.model_version`` on the run); the HTML report and its PNG
charts are written to ``out`` and logged as artifacts.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from data_layer.score_log import read_scores
from data_layer.settings import Settings
from training.contract import CLASSIFIER, contract, registered_name
from training.datasets import fetch_features, snapshot_cutoffs
from training.evaluate import (
    _pyplot,
    _save,
    calibration_table,
    expected_calibration_error,
    gains_table,
)
from training.labels import label_frame, observed_range, recorded_label_spec

MONITORING_EXPERIMENT = "omniscore-monitoring"
"""MLflow experiment of backtest and monitor runs."""
BACKTEST_TAG = "omniscore.backtest_run"
"""Version tag: the run id of the version's latest backtest."""
MIN_SEGMENT_ROWS = 30
"""Segments with fewer labelled scores are listed but get no metrics."""
BANDS = ("low", "medium", "high")
AUC_FULL_MARKS = 0.9
"""AUC at which the discrimination part of the quality score is full."""
ECE_ZERO_MARKS = 0.10
"""Expected calibration error at which the calibration part of the quality score is zero."""


def quality_score(auc: float, ece: float) -> float:
    """0-100 prediction quality: 80 points of discrimination, 20 of calibration.

    ``80 * clip((AUC - 0.5) / (0.9 - 0.5), 0, 1) + 20 * clip(1 - ECE / 0.10, 0, 1)``: a model
    no better than chance scores at most 20, one ranking at AUC 0.9 or better with an
    expected calibration error of 0 scores 100. NaN when the AUC is undefined (one class).
    """
    if not np.isfinite(auc):
        return float("nan")
    discrimination = float(np.clip((auc - 0.5) / (AUC_FULL_MARKS - 0.5), 0.0, 1.0))
    calibration = float(np.clip(1.0 - ece / ECE_ZERO_MARKS, 0.0, 1.0))
    return round(80.0 * discrimination + 20.0 * calibration, 1)


RECALIBRATION_MIN_CLASS = 10
"""Positives and negatives a labelled reference needs before its recalibration is fitted."""


@dataclass(frozen=True)
class Recalibration:
    """A monotone map from a version's probabilities to the outcome rate at them, which the
    label-free estimate applies first: CBPE's own calibration step (NannyML fits one on its
    labelled reference period too), here the logistic regression of the labels of the
    reference stored with the version (its test rows, held out from the final model) on the
    logit of their probabilities: a Platt scaling of the final model's own held-out scores.

    Why: the expected AUC hangs on how dispersed the probabilities are, and the served Platt
    scaling is fitted on a holdout model's validation scores, then applied to the final refit
    (more rows, up to 1.5 times the rounds), whose raw scores spread wider: on 10 steady
    1,000-customer worlds the raw estimate ran 0.019 above the realized AUC on average
    (0.029 RMS, 3 beyond 0.03); recalibrated, 0.002 (0.021 RMS, 1 beyond: docs/monitoring.md).

    Two numbers, refitted from the reference parquet whenever it is loaded: nothing is
    unpickled.
    """

    slope: float
    intercept: float
    rows: int

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """The recalibrated probabilities of ``p``."""
        z = _logit(np.asarray(p, dtype=float))
        return 1.0 / (1.0 + np.exp(-(self.slope * z + self.intercept)))

    def describe(self) -> str:
        """How the label-free estimate was computed (what reports and runs say)."""
        return f"reference-recalibrated ({self.rows} labelled rows)"


RAW_ESTIMATE = "raw probabilities (no labelled reference)"
"""What the label-free estimate says it used when the version has no labelled reference."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1.0 - p))


def fit_recalibration(p: np.ndarray, y: np.ndarray) -> Recalibration | None:
    """The :class:`Recalibration` of labels ``y`` on probabilities ``p`` (a labelled
    reference), or None when either class has fewer than :data:`RECALIBRATION_MIN_CLASS`
    rows or the outcomes do not rise with the probability."""
    from sklearn.linear_model import LogisticRegression

    p = np.asarray(p, dtype=float)
    y = np.asarray(y, dtype=int)
    keep = np.isfinite(p)
    p, y = p[keep], y[keep]
    positives = int(y.sum())
    if min(positives, len(y) - positives) < RECALIBRATION_MIN_CLASS:
        return None
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(p).reshape(-1, 1), y)
    slope = float(lr.coef_[0, 0])
    if slope <= 0:  # the reference's outcomes do not rise with the score: nothing to correct
        return None
    return Recalibration(slope, float(lr.intercept_[0]), len(y))


def expected_auc(p: np.ndarray) -> float:
    """The AUC the scores would reach if the calibrated probabilities were true (CBPE).

    Each row counts as a positive with weight p and as a negative with weight 1 - p; the
    expected AUC is the weighted share of (positive, negative) pairs ranked correctly (ties
    half), computed in O(n log n) over the sorted scores.
    """
    p = np.asarray(p, dtype=float)
    if len(p) < 2:
        return float("nan")
    order = np.argsort(p, kind="stable")
    ps = p[order]
    pos, neg = ps, 1.0 - ps
    # Group ties: within a group pairs count one half.
    uniq, start = np.unique(ps, return_index=True)
    pos_g = np.add.reduceat(pos, start)
    neg_g = np.add.reduceat(neg, start)
    neg_below = np.cumsum(neg_g) - neg_g
    correct = float((pos_g * neg_below).sum() + 0.5 * (pos_g * neg_g).sum())
    # Remove each row's pairing with itself (p * (1 - p), counted as a tie).
    correct -= 0.5 * float((pos * neg).sum())
    total = float(pos.sum() * neg.sum() - (pos * neg).sum())
    return correct / total if total > 0 else float("nan")


@dataclass
class VersionBacktest:
    """A version's backtest: overall metrics, per segment, per band, decile lift, calibration."""

    version: str
    metrics: dict[str, float]
    segments: pd.DataFrame
    bands: pd.DataFrame
    deciles: pd.DataFrame
    calibration: pd.DataFrame
    cutoffs: list[str]
    by_cutoff: pd.DataFrame
    """Per cutoff: n, AUC, expected (label-free) AUC, realized and predicted rate."""
    estimate_from: str = RAW_ESTIMATE
    """What the label-free estimate applied to the probabilities (:class:`Recalibration`)."""
    recalibration: Recalibration | None = None


@dataclass
class BacktestResult:
    """What :func:`backtest` found and wrote."""

    model: str
    source: str
    """``score_log`` or ``snapshots``."""
    horizon_days: int
    versions: dict[str, VersionBacktest] = field(default_factory=dict)
    report: Path | None = None
    run_id: str | None = None
    skipped_cutoffs: list[str] = field(default_factory=list)
    """Snapshots in the backtested range left out because the version learned their outcomes
    (:func:`outcomes_seen`)."""
    rows: pd.DataFrame | None = None
    """The labelled scores: customer_id, cutoff, version, probability, band, segment, label."""

    def summary(self) -> dict:
        """JSON-ready summary (what the command prints)."""
        return {
            "model": self.model,
            "source": self.source,
            "horizon_days": self.horizon_days,
            "report": str(self.report) if self.report else None,
            "run_id": self.run_id,
            "skipped_cutoffs": self.skipped_cutoffs,
            "versions": {
                v: {
                    "cutoffs": b.cutoffs,
                    "expected_auc_from": b.estimate_from,
                    **{k: _round(x) for k, x in b.metrics.items()},
                }
                for v, b in self.versions.items()
            },
        }


def _round(value: float) -> float | None:
    value = float(value)
    return None if not np.isfinite(value) else round(value, 4)


# --- scores to check ------------------------------------------------------------------------
def logged_scores(settings: Settings, model: str, horizon_days: int) -> pd.DataFrame:
    """Scores of the score log whose label window had ended by the last observed day.

    Columns: customer_id, cutoff (the UTC midnight after the score), version, probability,
    band, segment_name. One row per customer, version and cutoff (the day's last score).
    """
    _, end = observed_range(settings)
    latest = end - pd.Timedelta(days=horizon_days)
    frame = read_scores(settings, registered_name(model), end=latest.to_pydatetime())
    if frame.empty:
        return frame
    frame["cutoff"] = frame["scored_at"].dt.ceil("D")
    frame = frame[frame["cutoff"] <= latest]
    frame = frame.sort_values("scored_at", kind="stable")
    frame = frame.drop_duplicates(["customer_id", "version", "cutoff"], keep="last")
    columns = ["customer_id", "cutoff", "version", "probability", "band", "segment_name"]
    return frame[columns].reset_index(drop=True)


def snapshot_scores(
    settings: Settings, model: str, version: str | None, snapshots: int, horizon_days: int
) -> pd.DataFrame:
    """A batch scoring of the latest ``snapshots`` past snapshots with a complete label window.

    The version (default: champion) and the segments champion score the population of each
    cutoff from the features Feast serves as of it. Same columns as :func:`logged_scores`.
    """
    from training.labels import population_frame
    from training.model_io import load_champion, load_version

    _, end = observed_range(settings)
    loaded = (
        load_version(settings, registered_name(model), version)
        if version
        else load_champion(settings, model)
    )
    complete = [t for t in snapshot_cutoffs(settings) if t + pd.Timedelta(days=horizon_days) <= end]
    # A snapshot the version learned from (a train or validation cutoff) would flatter it: its
    # outcomes are the labels it was fitted to. So would one whose outcome window overlaps a
    # fitted cutoff's: the same customers' purchases in the shared days were labels (a weekly
    # snapshot between two fitted ones scored AUC 0.85 where the held-out ones scored 0.70-0.75
    # on steady 1,000-customer worlds). Only the held-out ones are backtested.
    learned = fitted_cutoffs(loaded.tags)
    seen = {t for t in complete if outcomes_seen(t, learned, horizon_days)}
    cutoffs = [t for t in complete if t not in seen][-snapshots:]
    if not cutoffs:
        raise ValueError(
            f"no snapshot is at least {horizon_days} days before the last event ({end.date()})"
            + (
                f" and outside the outcome windows of its {len(learned)} training cutoffs"
                if learned
                else ""
            )
            + ": nothing can be backtested yet"
        )
    segments = load_champion(settings, "segments")
    skipped = [t for t in complete if t in seen and t >= cutoffs[0]]
    rows = population_frame(settings, cutoffs)
    features = fetch_features(settings, loaded.feature_service, rows)
    seg_features = fetch_features(settings, segments.feature_service, rows)
    p = loaded.predict_proba(features)
    _, seg_names = segments.assign(seg_features)
    frame = pd.DataFrame(
        {
            "customer_id": features["customer_id"].astype(str).to_numpy(),
            "cutoff": pd.to_datetime(features["event_timestamp"], utc=True).to_numpy(),
            "version": str(loaded.version),
            "probability": p,
            "band": loaded.band(p),
            "segment_name": np.asarray(seg_names, dtype=object),
        }
    )
    frame.attrs["skipped_cutoffs"] = [t.date().isoformat() for t in skipped]
    return frame


def fitted_cutoffs(tags: dict[str, str]) -> set[pd.Timestamp]:
    """The days a version was fitted on: its ``omniscore.cutoffs`` tag's train and valid
    cutoffs (``train=d1,d2;valid=d3;test=d4``). The test cutoff is held out, so it stays
    eligible for a backtest. Empty when the version records none."""
    days: set[pd.Timestamp] = set()
    for part in (tags.get("omniscore.cutoffs") or "").split(";"):
        key, _, values = part.partition("=")
        if key.strip() in ("train", "valid"):
            days |= {pd.Timestamp(v.strip(), tz="UTC") for v in values.split(",") if v.strip()}
    return days


def outcomes_seen(cutoff: pd.Timestamp, fitted: set[pd.Timestamp], horizon_days: int) -> bool:
    """Whether the outcome window of ``cutoff`` (``horizon_days`` from it) overlaps that of a
    ``fitted`` cutoff (:func:`fitted_cutoffs`): then the version learned part of its labels."""
    day = pd.Timestamp(cutoff).normalize()
    return any(abs(day - f) < pd.Timedelta(days=horizon_days) for f in fitted)


def label_scores(settings: Settings, model: str, scores: pd.DataFrame, spec) -> pd.DataFrame:
    """Join scores to their outcomes (inner join: customers outside the population drop)."""
    scores = scores.copy()
    scores["cutoff"] = pd.to_datetime(scores["cutoff"], utc=True)
    cutoffs = sorted(scores["cutoff"].unique())
    labels = label_frame(settings, spec, [pd.Timestamp(t) for t in cutoffs])
    labels = labels.rename(columns={"event_timestamp": "cutoff"})
    return scores.merge(labels, on=["customer_id", "cutoff"], how="inner")


# --- metrics --------------------------------------------------------------------------------
def score_metrics(
    y: np.ndarray, p: np.ndarray, recalibration: Recalibration | None = None
) -> dict[str, float]:
    """AUC, PR-AUC, ECE, top-decile lift, positive rate (realized and predicted), the
    label-free expected AUC and its error, and the quality score.

    The expected AUC is of ``recalibration(p)`` when the version has one (its labelled
    reference's, :func:`fit_recalibration`); ``expected_auc_raw`` and its error are of ``p``
    as served, so that a report shows what the recalibration changed."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    both = len(np.unique(y)) == 2
    auc = float(roc_auc_score(y, p)) if both else float("nan")
    ece = expected_calibration_error(y, p) if len(y) else float("nan")
    deciles = gains_table(y, p) if len(y) >= 10 else None
    raw = expected_auc(p)
    estimated = expected_auc(recalibration(p)) if recalibration is not None else raw
    return {
        "n": float(len(y)),
        "auc": auc,
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "ece": ece,
        "top_decile_lift": float(deciles["lift"].iloc[0]) if deciles is not None else np.nan,
        "positive_rate": float(y.mean()) if len(y) else float("nan"),
        "predicted_rate": float(p.mean()) if len(p) else float("nan"),
        "expected_auc": estimated,
        "expected_auc_error": estimated - auc if both else float("nan"),
        "expected_auc_raw": raw,
        "expected_auc_raw_error": raw - auc if both else float("nan"),
        "quality": quality_score(auc, ece),
    }


def version_backtest(
    version: str, rows: pd.DataFrame, recalibration: Recalibration | None = None
) -> VersionBacktest:
    """Every table of one version's backtest from its labelled rows (``recalibration``: the
    version's, for the label-free estimate)."""
    y = rows["label"].to_numpy(dtype=int)
    p = rows["probability"].to_numpy(dtype=float)
    per_segment = []
    for name, part in rows.groupby("segment_name", sort=True, dropna=False):
        entry = {"segment": str(name), "n": len(part), "positives": int(part["label"].sum())}
        if len(part) >= MIN_SEGMENT_ROWS:
            m = score_metrics(part["label"].to_numpy(), part["probability"].to_numpy())
            entry.update({k: m[k] for k in ("auc", "pr_auc", "positive_rate", "predicted_rate",
                                            "quality")})  # fmt: skip
        per_segment.append(entry)
    bands = (
        rows.groupby("band")
        .agg(n=("label", "size"), realized=("label", "mean"), predicted=("probability", "mean"))
        .reindex([b for b in BANDS if b in set(rows["band"])])
        .reset_index()
    )
    per_cutoff = []
    for cutoff, part in rows.groupby("cutoff", sort=True):
        m = score_metrics(part["label"].to_numpy(), part["probability"].to_numpy(),
                          recalibration)  # fmt: skip
        per_cutoff.append({"cutoff": pd.Timestamp(cutoff), "n": len(part), "auc": m["auc"],
                           "expected_auc": m["expected_auc"], "realized": m["positive_rate"],
                           "predicted": m["predicted_rate"]})  # fmt: skip
    return VersionBacktest(
        version=version,
        by_cutoff=pd.DataFrame(per_cutoff),
        metrics=score_metrics(y, p, recalibration),
        segments=pd.DataFrame(per_segment),
        bands=bands,
        deciles=gains_table(y, p),
        calibration=calibration_table(y, p),
        cutoffs=sorted({pd.Timestamp(t).date().isoformat() for t in rows["cutoff"]}),
        estimate_from=recalibration.describe() if recalibration is not None else RAW_ESTIMATE,
        recalibration=recalibration,
    )


def version_recalibration(settings: Settings, client, name: str, version: str):
    """The :class:`Recalibration` fitted on the labelled reference stored with the version's
    training run, or None (no reference, or one stored before references held labels)."""
    from training.monitor import reference_of_run

    run_id = client.get_model_version(name, version).run_id
    try:
        reference = reference_of_run(settings, run_id, f"{name} v{version}")
    except ValueError:
        return None
    return reference_recalibration(reference)


def reference_recalibration(reference: pd.DataFrame) -> Recalibration | None:
    """:func:`fit_recalibration` of a reference's ``label`` on its ``probability`` (None
    without either column)."""
    if "label" not in reference or "probability" not in reference:
        return None
    return fit_recalibration(reference["probability"], reference["label"])


# --- the report -----------------------------------------------------------------------------
def _charts(result: BacktestResult, out: Path) -> dict[str, list[Path]]:
    plt = _pyplot()
    charts: dict[str, list[Path]] = {}
    for version, bt in result.versions.items():
        paths = []
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1)
        ax.plot(bt.calibration["mean_score"], bt.calibration["observed"], marker="o")
        ax.set(xlabel="predicted probability", ylabel="realized rate",
               title=f"v{version}: calibration")  # fmt: skip
        paths.append(_save(fig, out / f"v{version}-calibration.png"))
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        ax.bar(bt.deciles["decile"], bt.deciles["lift"], color="#4C72B0")
        ax.axhline(1.0, color="0.4", linewidth=1)
        ax.set(xlabel="score decile (1 = highest)", ylabel="lift", title=f"v{version}: lift")
        ax.set_xticks(list(bt.deciles["decile"]))
        paths.append(_save(fig, out / f"v{version}-lift.png"))
        fig, ax = plt.subplots(figsize=(4.6, 3.6))
        x = np.arange(len(bt.bands))
        ax.bar(x - 0.2, bt.bands["predicted"], 0.4, label="predicted")
        ax.bar(x + 0.2, bt.bands["realized"], 0.4, label="realized")
        ax.set_xticks(x, bt.bands["band"])
        ax.set(ylabel="rate", title=f"v{version}: rate per band")
        ax.legend()
        paths.append(_save(fig, out / f"v{version}-bands.png"))
        if len(bt.by_cutoff) > 1:
            fig, ax = plt.subplots(figsize=(4.6, 3.6))
            days = bt.by_cutoff["cutoff"].dt.strftime("%m-%d")
            ax.plot(days, bt.by_cutoff["auc"], marker="o", label="realized AUC")
            ax.plot(days, bt.by_cutoff["expected_auc"], marker="x", linestyle="--",
                    label="label-free estimate")  # fmt: skip
            ax.set(xlabel="cutoff", ylabel="AUC", title=f"v{version}: AUC over time")
            ax.tick_params(axis="x", labelrotation=45)
            ax.legend()
            paths.append(_save(fig, out / f"v{version}-auc-over-time.png"))
        segments = bt.segments.dropna(subset=["auc"]) if "auc" in bt.segments else None
        if segments is not None and len(segments):
            fig, ax = plt.subplots(figsize=(4.6, 3.6))
            ax.barh(segments["segment"], segments["auc"], color="#55A868")
            ax.axvline(0.5, color="0.4", linewidth=1)
            ax.set(xlabel="AUC", xlim=(0.4, 1.0), title=f"v{version}: AUC per segment")
            paths.append(_save(fig, out / f"v{version}-segments.png"))
        charts[version] = paths
    return charts


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0,
                         classes="t", na_rep="–")  # fmt: skip


def write_report(result: BacktestResult, out: Path) -> Path:
    """An HTML page (with its PNG charts beside it) a person can open."""
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(result, out)
    e = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Backtest {e(result.model)}</title><style>"
        "body{font-family:sans-serif;margin:24px;max-width:1150px;color:#222}"
        "table.t{border-collapse:collapse;margin:8px 0 16px}"
        "table.t td,table.t th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:right}"
        ".kpi{display:inline-block;margin:0 18px 8px 0}.kpi b{font-size:1.6em;display:block}"
        "img{width:360px;margin:4px}</style></head><body>",
        f"<h1>Backtest of {e(registered_name(result.model))}</h1>",
        f"<p>Scores from the <b>{e(result.source.replace('_', ' '))}</b>, each joined to what "
        f"the customer did in the {result.horizon_days} days after it. Quality is 0-100 "
        "(docs/monitoring.md): 80 points for ranking (AUC 0.5 to 0.9), 20 for calibration.</p>",
    ]
    if result.skipped_cutoffs:
        parts.append(f"<p>Left out, as the version learned their outcomes (fitted on them or "
                     f"on a cutoff whose outcome window overlaps theirs): "
                     f"{e(', '.join(result.skipped_cutoffs))}.</p>")  # fmt: skip
    for version, bt in result.versions.items():
        m = bt.metrics
        parts.append(f"<h2>Version {e(version)}</h2><p>cutoffs: {e(', '.join(bt.cutoffs))}; "
                     f"label-free estimate from {e(bt.estimate_from)}</p>")  # fmt: skip
        for label, key, fmt in (
            ("quality", "quality", "{:.0f}"), ("AUC", "auc", "{:.3f}"),
            ("PR-AUC", "pr_auc", "{:.3f}"), ("top-decile lift", "top_decile_lift", "{:.2f}"),
            ("realized rate", "positive_rate", "{:.3f}"),
            ("predicted rate", "predicted_rate", "{:.3f}"),
            ("label-free AUC estimate", "expected_auc", "{:.3f}"),
            ("scores", "n", "{:.0f}"),
        ):  # fmt: skip
            value = m[key]
            shown = fmt.format(value) if np.isfinite(value) else "–"
            parts.append(f"<span class='kpi'><b>{shown}</b>{e(label)}</span>")
        parts.append("<div>")
        parts += [f"<img src='{p.name}' alt='{e(p.stem)}'>" for p in charts[version]]
        parts.append("</div><h3>Realized against predicted rate per band</h3>")
        parts.append(_table(bt.bands))
        parts.append("<h3>Per segment</h3>" + _table(bt.segments))
        by_cutoff = bt.by_cutoff.assign(cutoff=bt.by_cutoff["cutoff"].dt.date.astype(str))
        parts.append("<h3>Per cutoff</h3>" + _table(by_cutoff))
        parts.append("<h3>Lift by decile</h3>" + _table(bt.deciles))
    parts.append("</body></html>")
    page = out / "index.html"
    page.write_text("\n".join(parts))
    return page


# --- the command ----------------------------------------------------------------------------
def backtest(
    settings: Settings,
    model: str,
    out: Path | None = None,
    version: str | None = None,
    snapshots: int = 4,
    source: str = "auto",
    log_run: bool = True,
) -> BacktestResult:
    """Backtest a classifier (see the module docstring) and write its report.

    ``source``: ``auto`` (the score log when it holds scores old enough, else snapshots),
    ``score_log`` or ``snapshots``. ``version`` restricts the score log to one version and
    picks the version that scores the snapshots (default: the champion). ``out`` defaults to
    ``<home>/reports/backtest-<model>``.
    """
    from training.model_io import registry_client

    terms = contract(model)
    if terms.kind != CLASSIFIER:
        raise ValueError(f"{model} is a {terms.kind}: only classifiers can be backtested")
    client = registry_client(settings)
    name = terms.registered_name
    reference = (
        client.get_model_version(name, version)
        if version
        else client.get_model_version_by_alias(name, "champion")
    )
    spec = recorded_label_spec(terms.name, dict(reference.tags or {}))
    scores = pd.DataFrame()
    used = source
    if source in ("auto", "score_log"):
        scores = logged_scores(settings, terms.name, spec.horizon_days)
        if version:
            scores = scores[scores["version"] == str(version)]
        used = "score_log"
    if scores.empty:
        if source == "score_log":
            raise ValueError(
                f"the score log holds no {name} score issued {spec.horizon_days} days or more "
                "before the last event: run with --source snapshots"
            )
        scores = snapshot_scores(settings, terms.name, version, snapshots, spec.horizon_days)
        used = "snapshots"
    rows = label_scores(settings, terms.name, scores, spec)
    if rows.empty:
        raise ValueError("none of the scores falls in the model's population: nothing to check")
    skipped = list(scores.attrs.get("skipped_cutoffs", []))
    result = BacktestResult(
        model=terms.name, source=used, horizon_days=spec.horizon_days, skipped_cutoffs=skipped
    )
    for v, part in rows.groupby("version", sort=True):
        recalibration = version_recalibration(settings, client, name, str(v))
        result.versions[str(v)] = version_backtest(str(v), part, recalibration)
    result.rows = rows
    out = Path(out or settings.home / "reports" / f"backtest-{terms.name}")
    result.report = write_report(result, out)
    if log_run:
        result.run_id = _log_run(settings, client, result, out)
    return result


def _log_run(settings: Settings, client, result: BacktestResult, out: Path) -> str:
    """One MLflow run per backtested version set, tagged with the model and its versions;
    each version is tagged with the run (:data:`BACKTEST_TAG`)."""
    from training.runs import experiment_id

    name = registered_name(result.model)
    exp = experiment_id(client, settings, MONITORING_EXPERIMENT)
    versions = sorted(result.versions)
    run = client.create_run(
        exp,
        run_name=f"{result.model}-backtest",
        tags={
            "omniscore.model": result.model,
            "omniscore.kind": "backtest",
            "omniscore.model_version": ",".join(versions),
            "omniscore.backtest_source": result.source,
        },
    )
    run_id = run.info.run_id
    client.log_param(run_id, "horizon_days", result.horizon_days)
    for version, bt in result.versions.items():
        for key, value in bt.metrics.items():
            if np.isfinite(value):
                client.log_metric(run_id, f"v{version}.{key}", float(value))
        client.set_tag(run_id, f"v{version}.expected_auc_from", bt.estimate_from)
        client.set_model_version_tag(name, version, BACKTEST_TAG, run_id)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=1))
    client.log_artifacts(run_id, str(out), "backtest")
    client.set_terminated(run_id, "FINISHED")
    return run_id
