"""Model evaluation: the metrics and charts every training run logs, and SHAP summaries.

Pure functions: arrays and frames in, numbers, tables and PNG files out. Charts use
matplotlib's Agg backend (selected inside each plotting call, never at import) so they render
on a headless machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from feature_repo.catalog import FEATURES_BY_NAME

NO_CHANNEL = "cross_channel"
"""Group for features that describe no single channel (RFM overall, cross-channel, profile)."""


def expected_calibration_error(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: sample-weighted mean |observed rate - mean score|.

    Bins are equal-width on [0, 1]; empty bins do not count.
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if len(y) == 0:
        return float("nan")
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    sum_y = np.bincount(bins, weights=y, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    filled = counts > 0
    gap = np.abs(sum_y[filled] - sum_p[filled])
    return float(gap.sum() / len(y))


def top_decile_lift(y: np.ndarray, p: np.ndarray, fraction: float = 0.1) -> float:
    """Positive rate among the top ``fraction`` of scores divided by the overall positive rate."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    base = y.mean() if len(y) else 0.0
    if base == 0:
        return float("nan")
    n_top = max(1, int(np.ceil(fraction * len(y))))
    # A stable sort on -p makes ties resolve by row order, hence deterministic.
    top = np.argsort(-p, kind="stable")[:n_top]
    return float(y[top].mean() / base)


def classification_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, log loss, Brier score, ECE, top-decile lift and base rate."""
    y = np.asarray(y, dtype=int)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    both = len(np.unique(y)) == 2
    return {
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "top_decile_lift": top_decile_lift(y, p),
        "base_rate": float(y.mean()) if len(y) else float("nan"),
        "n_rows": float(len(y)),
    }


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present."""
    y = np.asarray(y, dtype=int)
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def calibration_table(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Per-bin mean score, observed rate and count (equal-width bins, empty ones dropped)."""
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    frame = pd.DataFrame({"bin": bins, "p": p, "y": y})
    table = frame.groupby("bin").agg(
        mean_score=("p", "mean"), observed=("y", "mean"), n=("y", "size")
    )
    return table.reset_index()


def gains_table(y: np.ndarray, p: np.ndarray, n_groups: int = 10) -> pd.DataFrame:
    """Cumulative gains and lift by score decile (decile 1 = highest scores)."""
    y = np.asarray(y, dtype=float)
    order = np.argsort(-np.asarray(p, dtype=float), kind="stable")
    ys = y[order]
    edges = np.linspace(0, len(ys), n_groups + 1).round().astype(int)
    total = max(ys.sum(), 1e-12)
    base = ys.mean() if len(ys) else 0.0
    rows = []
    for i in range(n_groups):
        upto = edges[i + 1]
        captured = ys[:upto].sum()
        rate = ys[edges[i] : upto].mean() if upto > edges[i] else float("nan")
        rows.append(
            {
                "decile": i + 1,
                "population_share": upto / max(len(ys), 1),
                "cumulative_gain": captured / total,
                "lift": rate / base if base else float("nan"),
            }
        )
    return pd.DataFrame(rows)


# --- explanations ---------------------------------------------------------------------------
def channel_of(feature: str) -> str:
    """The channel a feature describes, or :data:`NO_CHANNEL` for cross-channel ones.

    Names outside the catalog (none in practice) also map to :data:`NO_CHANNEL`.
    """
    spec = FEATURES_BY_NAME.get(feature)
    return (spec.channel if spec is not None else None) or NO_CHANNEL


def mean_abs_shap(contributions: np.ndarray, feature_names: Sequence[str]) -> pd.Series:
    """Mean |SHAP| per feature from LightGBM ``pred_contrib`` output, sorted descending.

    ``contributions`` is ``(n, n_features + 1)``; the last column (the base value) is dropped.
    """
    contributions = np.asarray(contributions, dtype=float)
    if contributions.shape[1] != len(feature_names) + 1:
        raise ValueError(
            f"expected {len(feature_names) + 1} contribution columns, got {contributions.shape[1]}"
        )
    values = np.abs(contributions[:, :-1]).mean(axis=0)
    return pd.Series(values, index=list(feature_names), name="mean_abs_shap").sort_values(
        ascending=False
    )


def shap_by_channel(per_feature: pd.Series) -> pd.Series:
    """Mean |SHAP| summed over the features of each channel, sorted descending."""
    groups = per_feature.groupby([channel_of(n) for n in per_feature.index]).sum()
    return groups.rename("mean_abs_shap").sort_values(ascending=False)


# --- charts ---------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _pyplot().close(fig)
    return path


def plot_roc(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    """ROC curves of one or more score vectors on the same labels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        ax.plot(fpr, tpr, label=f"{label} (AUC {auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_pr(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    """Precision-recall curves of one or more score vectors on the same labels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, p in scores.items():
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, label=f"{label} (AP {average_precision_score(y, p):.3f})")
    ax.axhline(np.mean(y), linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_calibration(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    """Reliability diagram: observed positive rate against mean score per bin."""
    plt = _pyplot()
    table = calibration_table(y, p)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.plot(table["mean_score"], table["observed"], "o-")
    ax.set(
        xlabel="mean predicted probability",
        ylabel="observed rate",
        title=f"Calibration (ECE {expected_calibration_error(y, p):.3f})",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    return _save(fig, path)


def plot_gains(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    """Cumulative gains curve and lift per decile."""
    plt = _pyplot()
    table = gains_table(y, p)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.plot([0, *table["population_share"]], [0, *table["cumulative_gain"]], "o-")
    left.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    left.set(xlabel="share of customers (by score)", ylabel="share of positives", title="Gains")
    right.bar(table["decile"], table["lift"])
    right.axhline(1.0, linestyle="--", color="grey", linewidth=0.8)
    right.set(xlabel="score decile (1 = highest)", ylabel="lift", title="Lift by decile")
    return _save(fig, path)


def plot_bars(values: pd.Series, title: str, xlabel: str, path: Path, top: int = 25) -> Path:
    """Horizontal bar chart of the ``top`` largest values (importance, |SHAP| ...)."""
    plt = _pyplot()
    shown = values.sort_values(ascending=False).head(top)[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.28 * len(shown) + 1)))
    ax.barh([str(i) for i in shown.index], shown.to_numpy())
    ax.set(title=title, xlabel=xlabel)
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def classifier_report(
    y: np.ndarray,
    p: np.ndarray,
    contributions: np.ndarray,
    feature_names: Sequence[str],
    importance_gain: np.ndarray,
    out_dir: Path,
    baselines: dict[str, np.ndarray] | None = None,
) -> dict[str, Path]:
    """Write every classifier chart and table under ``out_dir``; returns name -> path.

    Charts: ROC and PR curves (with baselines when given), calibration, gains/lift, global
    importance (gain), mean |SHAP| per feature and grouped by channel. Tables: the same
    numbers as CSV so they can be read back without the images.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores = {"omnichannel": p, **(baselines or {})}
    per_feature = mean_abs_shap(contributions, feature_names)
    per_channel = shap_by_channel(per_feature)
    importance = pd.Series(importance_gain, index=list(feature_names), name="gain")
    paths = {
        "roc_curve": plot_roc(y, scores, out_dir / "roc_curve.png"),
        "pr_curve": plot_pr(y, scores, out_dir / "pr_curve.png"),
        "calibration_curve": plot_calibration(y, p, out_dir / "calibration_curve.png"),
        "gains_lift": plot_gains(y, p, out_dir / "gains_lift.png"),
        "feature_importance": plot_bars(
            importance, "Global importance (total gain)", "gain", out_dir / "importance.png"
        ),
        "shap_per_feature": plot_bars(
            per_feature, "Mean |SHAP| per feature", "mean |SHAP|", out_dir / "shap_features.png"
        ),
        "shap_by_channel": plot_bars(
            per_channel, "Mean |SHAP| by channel", "mean |SHAP|", out_dir / "shap_channels.png"
        ),
    }
    tables = {
        "shap_per_feature_csv": (per_feature.to_frame(), "shap_features.csv"),
        "shap_by_channel_csv": (per_channel.to_frame(), "shap_channels.csv"),
        "importance_csv": (importance.sort_values(ascending=False).to_frame(), "importance.csv"),
        "gains_csv": (gains_table(y, p), "gains.csv"),
        "calibration_csv": (calibration_table(y, p), "calibration.csv"),
    }
    for key, (frame, name) in tables.items():
        frame.to_csv(out_dir / name)
        paths[key] = out_dir / name
    return paths


def segment_report(
    profile: pd.DataFrame, population: pd.Series, out_dir: Path, features: Sequence[str]
) -> dict[str, Path]:
    """Write the segment profile table (CSV) and a chart of each segment against the population.

    ``profile`` has one row per segment (index = segment name) with per-feature medians and a
    ``share`` column; ``population`` holds the population medians of the same features. The
    chart shows each segment's median relative to the population's, on a log2 scale.
    """
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table_path = out_dir / "segment_profiles.csv"
    profile.to_csv(table_path)
    feats = [f for f in features if f in profile.columns]
    ratio = np.log2(
        (profile[feats].astype(float) + 1.0) / (population[feats].astype(float).to_numpy() + 1.0)
    )
    fig, ax = plt.subplots(figsize=(max(7, 0.45 * len(feats) + 2), 1.0 + 0.5 * len(profile)))
    limit = float(np.nanmax(np.abs(ratio.to_numpy()))) or 1.0
    image = ax.imshow(ratio.to_numpy(), cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(feats)), feats, rotation=60, ha="right", fontsize=7)
    labels = [
        f"{name} ({share:.0%})" for name, share in zip(profile.index, profile["share"], strict=True)
    ]
    ax.set_yticks(range(len(profile)), labels, fontsize=8)
    ax.set_title("Segment median vs population median (log2 of (x+1) ratio)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    chart_path = _save(fig, out_dir / "segments_vs_population.png")
    return {"segment_profiles": table_path, "segments_vs_population": chart_path}
