"""The monitor: is the current population still the one the champions were trained on?

``omniscore monitor`` calls :func:`monitor`. Every champion stores, as an artifact of its
training run, a reference sample of its training population (:func:`write_reference`:
at most :data:`REFERENCE_ROWS` rows of its features, and its probabilities and labels (the
test rows of a classifier) or segments; no customer id). The monitor takes the customers of
the latest weekly snapshot (at or before ``as_of``), in each model's population, scores them
with the champions and compares:

- **feature drift**: Evidently's per-column drift test (``DataDriftPreset``: Wasserstein
  distance for numbers, Jensen-Shannon for categories, each with its default threshold of
  0.1), grouped by signal family (the feature view) and channel, so the report says
  "transactional / store drifted" rather than listing a hundred numbers; flagged when the
  share of drifted features exceeds ``monitor_feature_drift_share``, or when one such group
  moved as a whole, well beyond what it moves by itself (:func:`drifted_groups`,
  ``monitor_group_drift_ratio``): a channel is a small share of a model's features;
- **score drift**: the population stability index (PSI) of the probabilities over the
  reference's deciles, and the share of customers per band; flagged above
  ``monitor_score_psi``;
- **segment drift**: each segment's share (flagged when one moves more than
  ``monitor_segment_share_shift``), a re-fit of the same method and k on current data
  compared with the served assignment (adjusted Rand index; flagged below
  ``monitor_segment_ari`` times the bootstrap stability the partition had at training),
  the silhouette of the served assignment on current data, and
  whether the names the naming rule gives the served segments on current data are still the
  served names;
- **label-free performance**: the expected AUC and positive rate implied by the calibrated
  probabilities (:func:`training.backtest.expected_auc`, CBPE-style), against the same on the
  reference; flagged when the expected AUC drops more than ``monitor_expected_auc_drop``. As
  in CBPE, the probabilities are first recalibrated on the reference's labels
  (:class:`training.backtest.Recalibration`; raw for a version whose reference holds none,
  and ``expected_auc_from`` says which). The version's latest backtest (if any) says how far
  that estimate was from the realized AUC.

Thresholds are :class:`~data_layer.settings.Settings` fields. An MLflow run in the
``omniscore-monitoring`` experiment records every figure; :attr:`MonitorResult.alarms` lists
what crossed a threshold (the command then exits with :data:`DRIFT_EXIT_CODE`).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from data_layer.settings import Settings
from feature_repo.catalog import VIEWS, features_of_view
from training.backtest import (
    BACKTEST_TAG,
    MONITORING_EXPERIMENT,
    RAW_ESTIMATE,
    expected_auc,
    reference_recalibration,
)
from training.contract import ACTIVE, CLASSIFIERS, CLUSTERINGS, contract

REFERENCE_ROWS = 5000
"""Rows of the training reference stored with each version."""
REFERENCE_FILE = "reference.parquet"
REFERENCE_ARTIFACT = "reference"
DRIFT_EXIT_CODE = 3
"""Exit code of ``omniscore monitor`` when a threshold is crossed (1 and 2 are errors)."""
CURRENT_ROWS = 20000
"""Current customers compared per model at most (a seeded sample beyond that)."""
PSI_FLOOR = 1e-4


# --- the reference --------------------------------------------------------------------------
def write_reference(
    frame: pd.DataFrame, features: list[str], folder: Path, seed: int, **columns
) -> Path:
    """Write a seeded sample of a training frame's ``features`` (plus ``columns``: arrays
    aligned with ``frame``, e.g. ``probability``) to ``folder/reference.parquet``.

    No customer id or timestamp goes in: the reference describes the population, not people.
    """
    rng = np.random.default_rng(seed)
    n = len(frame)
    rows = np.sort(rng.choice(n, size=min(REFERENCE_ROWS, n), replace=False))
    sample = frame.iloc[rows][list(features)].reset_index(drop=True)
    for name, values in columns.items():
        sample[name] = np.asarray(values)[rows]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REFERENCE_FILE
    sample.to_parquet(path, index=False)
    return path


def load_reference(settings: Settings, loaded) -> pd.DataFrame:
    """The reference stored with a loaded version's training run."""
    return reference_of_run(settings, loaded.run_id, f"{loaded.name} v{loaded.version}")


def reference_of_run(settings: Settings, run_id: str | None, version: str) -> pd.DataFrame:
    """The reference stored with a training run (``version`` names it in errors)."""
    import mlflow.artifacts

    if not run_id:
        raise ValueError(f"{version} records no training run")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=f"{REFERENCE_ARTIFACT}/{REFERENCE_FILE}",
                dst_path=tmp,
                tracking_uri=settings.tracking_uri,
            )
        except Exception as exc:
            raise ValueError(
                f"{version} has no training reference (trained before references were "
                "stored): retrain it to monitor it"
            ) from exc
        return pd.read_parquet(path)


# --- measures -------------------------------------------------------------------------------
def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference``'s quantile bins."""
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, "right"), minlength=len(edges) + 1)
    cur = np.bincount(np.searchsorted(edges, current, "right"), minlength=len(edges) + 1)
    r = np.maximum(ref / max(ref.sum(), 1), PSI_FLOOR)
    c = np.maximum(cur / max(cur.sum(), 1), PSI_FLOOR)
    return float(((c - r) * np.log(c / r)).sum())


def feature_groups() -> dict[str, tuple[str, str]]:
    """Feature name -> (signal family, channel) from the catalog."""
    groups = {}
    for view in VIEWS:
        for feature in features_of_view(view):
            groups[feature.name] = (view, feature.channel or "all")
    return groups


DRIFT_THRESHOLD = 0.1
"""A feature's distance at or above which it may have drifted (Evidently's default for both)."""
CATEGORY_VALUES = 5
"""Numbers with at most this many distinct values are compared as categories (as Evidently)."""
PERMUTATIONS = 20
"""Shuffles of the pooled reference and current values that give a feature's noise floor."""
DRIFT_ROWS = 5000
"""Rows per side the distances are computed on at most (a seeded sample beyond that)."""


def feature_distance(reference: np.ndarray, current: np.ndarray, categorical: bool) -> float:
    """Evidently's large-sample drift distance, at every sample size: the Wasserstein distance
    normed by the reference's standard deviation for a number (``wasserstein``), the
    Jensen-Shannon distance of the value shares for a category (``jensenshannon``)."""
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import wasserstein_distance

    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    if not categorical:
        norm = max(float(np.std(reference)), 0.001)
        return float(wasserstein_distance(reference, current) / norm)
    values, codes = np.unique(np.concatenate([reference, current]), return_inverse=True)
    ref = np.bincount(codes[: len(reference)], minlength=len(values)) / len(reference)
    cur = np.bincount(codes[len(reference) :], minlength=len(values)) / len(current)
    return float(jensenshannon(ref, cur))


def _values(frame: pd.DataFrame, column: str, categorical: bool) -> np.ndarray:
    series = frame[column]
    if categorical and not pd.api.types.is_numeric_dtype(series):
        return series.astype(str).to_numpy()
    return pd.to_numeric(series, errors="coerce").dropna().to_numpy(dtype=float)


def noise_floor(reference: np.ndarray, current: np.ndarray, categorical: bool, seed: int) -> float:
    """The largest distance between two random halves of the pooled values, over
    :data:`PERMUTATIONS` shuffles: what sampling alone gives at these sample sizes."""
    rng = np.random.default_rng(seed)
    pool = np.concatenate([reference, current])
    n = len(reference)
    floor = 0.0
    for _ in range(PERMUTATIONS):
        rng.shuffle(pool)
        floor = max(floor, feature_distance(pool[:n], pool[n:], categorical))
    return floor


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    features: list[str],
    history: list[pd.DataFrame] | None = None,
    seed: int = 0,
) -> dict:
    """Which ``features`` drifted from ``reference`` to ``current``, and the summary per signal
    family and channel.

    A feature drifted when its distance (:func:`feature_distance`) is at least
    :data:`DRIFT_THRESHOLD`, above its noise floor (:func:`noise_floor`: a small sample moves
    by chance), and above its **seasonal range**: the largest distance between the reference
    and each of the ``history`` frames (the same population at snapshots before the
    reference's, :func:`history_cutoffs`). A feature that moves that much from week to week
    before any drift (the weekly count of a channel the business pushes campaigns on), or over
    as many weeks as separate the reference from the current population (a count that grows
    as customers age), is not flagged for moving as much after.
    """
    history = history or []
    rng = np.random.default_rng(seed)

    def sample(frame: pd.DataFrame) -> pd.DataFrame:
        if len(frame) <= DRIFT_ROWS:
            return frame
        return frame.iloc[np.sort(rng.choice(len(frame), DRIFT_ROWS, replace=False))]

    reference, current = sample(reference), sample(current)
    history = [sample(h) for h in history]
    rows = []
    for i, column in enumerate(f for f in features if f in reference and f in current):
        numeric = pd.api.types.is_numeric_dtype(reference[column])
        pooled = pd.concat([reference[column], current[column]]).nunique()
        if pooled <= 1:
            continue  # constant in both: nothing can drift
        categorical = not numeric or pooled <= CATEGORY_VALUES
        ref, cur = _values(reference, column, categorical), _values(current, column, categorical)
        distance = feature_distance(ref, cur, categorical)
        seasonal = max(
            (feature_distance(ref, _values(h, column, categorical), categorical)
             for h in history if column in h),
            default=0.0,
        )  # fmt: skip
        floor = float("nan")
        drifted = bool(distance >= DRIFT_THRESHOLD and distance > seasonal)
        if drifted:  # only then is the noise floor worth its shuffles
            floor = noise_floor(ref, cur, categorical, seed + i)
            drifted = distance > floor
        rows.append(
            {"feature": column, "method": "jensenshannon" if categorical else "wasserstein",
             "distance": distance, "seasonal_range": seasonal, "noise_floor": floor,
             "threshold": DRIFT_THRESHOLD, "drifted": drifted}
        )  # fmt: skip
    columns = ["feature", "method", "distance", "seasonal_range", "noise_floor", "threshold",
               "drifted"]  # fmt: skip
    table = pd.DataFrame(rows, columns=columns)
    groups = feature_groups()
    table["family"] = [groups.get(f, ("profile", "all"))[0] for f in table["feature"]]
    table["channel"] = [groups.get(f, ("profile", "all"))[1] for f in table["feature"]]
    by_group = (
        table.groupby(["family", "channel"])
        .agg(features=("feature", "size"), drifted=("drifted", "sum"),
             mean_distance=("distance", "mean"), mean_seasonal_range=("seasonal_range", "mean"))
        .reset_index()
        .sort_values(["drifted", "mean_distance"], ascending=False)
    )  # fmt: skip
    by_group["drifted_share"] = by_group["drifted"] / by_group["features"]
    # How many times what it moved by itself before the reference the group moved now
    # (undefined without history: nothing to compare with).
    seasonal = by_group["mean_seasonal_range"].where(by_group["mean_seasonal_range"] > 0)
    by_group["seasonal_ratio"] = by_group["mean_distance"] / seasonal if history else np.nan
    share = float(table["drifted"].mean()) if len(table) else 0.0
    return {"share": share, "features": table, "groups": by_group}


# --- the current population -----------------------------------------------------------------
def current_cutoff(settings: Settings, as_of: pd.Timestamp | None = None) -> pd.Timestamp:
    """The latest weekly snapshot at or before ``as_of`` (default: the latest)."""
    from training.datasets import snapshot_cutoffs

    cutoffs = snapshot_cutoffs(settings)
    if as_of is not None:
        as_of = pd.Timestamp(as_of)
        as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
        cutoffs = [t for t in cutoffs if t <= as_of]
    if not cutoffs:
        raise ValueError(f"no feature snapshot at or before {as_of}: build features first")
    return cutoffs[-1]


def snapshot_frames(
    settings: Settings, model: str, cutoffs: list[pd.Timestamp], limits: list[int], seed: int = 0
) -> list[pd.DataFrame]:
    """Features of the model's population at each of ``cutoffs`` (each sampled to its
    ``limits`` rows), fetched from Feast in one call. A cutoff with nobody in the population
    gives an empty frame."""
    from training.datasets import fetch_features
    from training.labels import population_frame

    terms = contract(model)
    if terms.label is not None:
        lookback = terms.label.active_lookback_days if terms.label.population == ACTIVE else None
    else:
        lookback = terms.population_lookback_days
    rows = population_frame(settings, list(cutoffs), lookback)
    stamps = pd.to_datetime(rows["event_timestamp"], utc=True)
    parts = []
    for cutoff, limit in zip(cutoffs, limits, strict=True):
        part = rows[stamps == cutoff]
        if len(part) > limit:
            part = part.sample(limit, random_state=seed)
        parts.append(part)
    picked = pd.concat(parts).sort_values(["event_timestamp", "customer_id"])
    if picked.empty:
        return [picked.iloc[0:0] for _ in cutoffs]
    features = fetch_features(settings, terms.feature_service, picked.reset_index(drop=True))
    when = pd.to_datetime(features["event_timestamp"], utc=True)
    return [features[when == c].reset_index(drop=True) for c in cutoffs]


def current_frame(
    settings: Settings, model: str, cutoff: pd.Timestamp, seed: int = 0, limit: int = 0
) -> pd.DataFrame:
    """Features of the model's population at ``cutoff`` (sampled to ``limit`` rows, by
    default CURRENT_ROWS)."""
    (frame,) = snapshot_frames(settings, model, [cutoff], [limit or CURRENT_ROWS], seed)
    if frame.empty:
        raise ValueError(f"no customer of {model}'s population at {cutoff}")
    return frame


HISTORY_SNAPSHOTS = 3
"""Weekly snapshots just before the reference's that give each feature its seasonal range."""


def history_cutoffs(
    cutoffs: list[pd.Timestamp], anchor: pd.Timestamp, current: pd.Timestamp
) -> list[pd.Timestamp]:
    """The snapshots before the reference's (``anchor``) that each feature's seasonal range is
    measured against: the :data:`HISTORY_SNAPSHOTS` just before it (week-to-week movement), and
    those as many snapshots before it as ``current`` is after it, give or take one (movement
    over the same span: customers age and windows roll over the weeks between the reference
    and the current population, drift or none)."""
    before = [t for t in cutoffs if t < anchor]
    span = sum(1 for t in cutoffs if anchor < t <= current)
    picked = set(before[-HISTORY_SNAPSHOTS:])
    for back in (span - 1, span, span + 1):
        if 1 <= back <= len(before):
            picked.add(before[-back])
    return sorted(picked)


def reference_cutoff(loaded) -> pd.Timestamp | None:
    """The snapshot the version's reference was drawn from: its ``omniscore.cutoffs`` tag's
    test cutoff (a classifier) or fit cutoff (the segments)."""
    for part in (loaded.tags or {}).get("omniscore.cutoffs", "").split(";"):
        key, _, value = part.partition("=")
        if key.strip() in ("test", "fit") and value.strip():
            return pd.Timestamp(value.strip().split(",")[-1], tz="UTC")
    return None


def population_now_and_before(
    settings: Settings, model: str, loaded, cutoff: pd.Timestamp
) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """The model's population at ``cutoff`` (the current one, at most CURRENT_ROWS) and at
    the snapshots before the reference's that :func:`history_cutoffs` picks (each sampled to
    REFERENCE_ROWS): how much each feature moves with no drift, from week to week and over
    as many weeks as separate the reference from ``cutoff``. No history when the version
    records no cutoff or its snapshots are gone."""
    from training.datasets import snapshot_cutoffs

    anchor = reference_cutoff(loaded)
    before = []
    if anchor is not None:
        before = history_cutoffs(snapshot_cutoffs(settings), anchor, cutoff)
    frames = snapshot_frames(
        settings, model, [*before, cutoff], [REFERENCE_ROWS] * len(before) + [CURRENT_ROWS]
    )
    if frames[-1].empty:
        raise ValueError(f"no customer of {model}'s population at {cutoff}")
    return frames[-1], [f for f in frames[:-1] if not f.empty]


REFIT_SEEDS = 8
"""Re-fits (each from its own random start) whose median ARI the segment check uses."""


def refit_ari(seg, frame: pd.DataFrame, rows: int, seed: int = 0) -> float:
    """Median adjusted Rand index, over :data:`REFIT_SEEDS` re-fits, between the served
    assignment of ``rows`` sampled customers of ``frame`` and a re-fit of the same method and
    k on them (from a random start, in the served model's feature space)."""
    from sklearn.metrics import adjusted_rand_score

    from training.segments import fit_clusterer

    x = seg.preprocessor.transform(frame)
    served = seg.clusterer.predict(x)
    rng = np.random.default_rng(seed)
    aris = []
    for s in range(REFIT_SEEDS):
        pick = rng.choice(len(x), size=min(rows, len(x)), replace=False)
        refit = fit_clusterer(x[pick], seg.clusterer.method, len(seg.ids), seed + s)
        aris.append(adjusted_rand_score(served[pick], refit.predict(x[pick])))
    return float(np.median(aris))


# --- results --------------------------------------------------------------------------------
@dataclass
class MonitorResult:
    """Everything the monitor measured, and what crossed a threshold."""

    cutoff: str
    models: dict[str, dict] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    alarms: list[str] = field(default_factory=list)
    run_id: str | None = None

    @property
    def drifted(self) -> bool:
        """Whether any threshold was crossed."""
        return bool(self.alarms)

    def summary(self) -> dict:
        """JSON-ready summary (what the command prints)."""
        return {"cutoff": self.cutoff, "drifted": self.drifted, "alarms": self.alarms,
                "models": self.models, "run_id": self.run_id}  # fmt: skip


def _backtest_error(client, loaded) -> float | None:
    """How far the label-free AUC estimate was from the realized AUC in the version's
    latest backtest (estimate - realized), if it was backtested."""
    run_id = (loaded.tags or {}).get(BACKTEST_TAG)
    if not run_id:
        return None
    try:
        metrics = client.get_run(run_id).data.metrics
    except Exception:
        return None
    value = metrics.get(f"v{loaded.version}.expected_auc_error")
    return None if value is None else float(value)


def monitor_classifier(settings: Settings, model: str, cutoff, client, result) -> None:
    """Feature, score and label-free checks of one classifier champion."""
    from training.model_io import load_champion

    loaded = load_champion(settings, model)
    reference = load_reference(settings, loaded)
    current, history = population_now_and_before(settings, model, loaded, cutoff)
    drift = feature_drift(reference, current, loaded.feature_names, history)
    p_ref = reference["probability"].to_numpy(dtype=float)
    p_cur = loaded.predict_proba(current)
    bands_ref = pd.Series(loaded.band(p_ref)).value_counts(normalize=True)
    bands_cur = pd.Series(loaded.band(p_cur)).value_counts(normalize=True)
    bands = pd.DataFrame({"reference": bands_ref, "current": bands_cur}).fillna(0.0)
    bands = bands.reindex([b for b in ("low", "medium", "high") if b in bands.index])
    # CBPE's own calibration step: the probabilities mapped to the outcome rate the labelled
    # reference observed at them (training.backtest.Recalibration); raw without labels.
    recalibration = reference_recalibration(reference)
    if recalibration is not None:
        q_ref, q_cur = recalibration(p_ref), recalibration(p_cur)
    else:
        q_ref, q_cur = p_ref, p_cur
    auc_ref, auc_cur = expected_auc(q_ref), expected_auc(q_cur)
    figures = {
        "version": loaded.version,
        "rows_reference": len(reference),
        "rows_current": len(current),
        "history_snapshots": len(history),
        "feature_drift_share": drift["share"],
        "drifted_groups": [
            f"{r.family}/{r.channel}" for r in drift["groups"].itertuples() if r.drifted > 0
        ],
        "group_alarms": drifted_groups(drift["groups"], settings.monitor_group_drift_ratio),
        "score_psi": psi(p_ref, p_cur),
        "band_share_reference": bands["reference"].round(4).to_dict(),
        "band_share_current": bands["current"].round(4).to_dict(),
        "expected_auc_reference": auc_ref,
        "expected_auc_current": auc_cur,
        "expected_auc_drop": auc_ref - auc_cur,
        "expected_auc_from": (
            recalibration.describe() if recalibration is not None else RAW_ESTIMATE
        ),
        "expected_positive_rate_reference": float(q_ref.mean()),
        "expected_positive_rate_current": float(q_cur.mean()),
        "backtest_expected_auc_error": _backtest_error(client, loaded),
    }
    result.models[model] = figures
    result.tables[f"{model}_features"] = drift["features"]
    result.tables[f"{model}_groups"] = drift["groups"]
    s = settings
    checks = (
        ("feature drift share", drift["share"], s.monitor_feature_drift_share, ">"),
        ("score PSI", figures["score_psi"], s.monitor_score_psi, ">"),
        ("expected AUC drop", figures["expected_auc_drop"], s.monitor_expected_auc_drop, ">"),
    )
    _check(result, model, checks, figures["drifted_groups"])
    _group_alarms(result, model, figures["group_alarms"])


def monitor_segments(settings: Settings, model: str, cutoff, client, result) -> None:
    """Feature drift, shares, re-fit ARI, silhouette and names of the segments champion."""
    from sklearn.metrics import silhouette_score

    from training.model_io import load_champion
    from training.segments import name_segments

    loaded = load_champion(settings, model)
    seg = loaded.segments
    reference = load_reference(settings, loaded)
    current, history = population_now_and_before(settings, model, loaded, cutoff)
    drift = feature_drift(reference, current, seg.features, history)
    ids, names = seg.assign(current)
    shares_cur = pd.Series(ids).value_counts(normalize=True)
    if "segment_id" in reference:
        shares_ref = reference["segment_id"].value_counts(normalize=True)
    else:
        shares_ref = pd.Series(seg.sizes, index=seg.ids)
    shares = pd.DataFrame({"reference": shares_ref, "current": shares_cur}).fillna(0.0)
    shares["name"] = [seg.name_by_id.get(int(i), "?") for i in shares.index]
    # A re-fit from a random start finds a different local optimum now and then even on the
    # training data itself, and more often on a small sample: the current re-fit is judged
    # against the same re-fits on the reference, at the same number of customers.
    rows = min(len(current), len(reference), REFERENCE_ROWS)
    ari = refit_ari(seg, current, rows)
    ari_reference = refit_ari(seg, reference, rows)
    x = seg.preprocessor.transform(current)
    clusters = seg.clusterer.predict(x)
    silhouette = (
        float(silhouette_score(x, clusters, sample_size=min(3000, len(x)), random_state=0))
        if len(np.unique(clusters)) > 1
        else -1.0
    )
    raw = current[seg.features].apply(pd.to_numeric, errors="coerce")
    medians = raw.groupby(clusters).median().reindex(range(len(seg.ids)))
    present = medians.dropna(how="all").index
    renamed = name_segments(medians.loc[present], current)
    kept = [seg.names[i] == n for i, n in zip(present, renamed, strict=True)]
    figures = {
        "version": loaded.version,
        "rows_current": len(current),
        "feature_drift_share": drift["share"],
        "drifted_groups": [
            f"{r.family}/{r.channel}" for r in drift["groups"].itertuples() if r.drifted > 0
        ],
        "group_alarms": drifted_groups(drift["groups"], settings.monitor_group_drift_ratio),
        "segment_share_shift": float((shares["current"] - shares["reference"]).abs().max()),
        "refit_ari": ari,
        "refit_ari_reference": ari_reference,
        "refit_rows": rows,
        "training_stability": float(seg.metrics.get("stability", float("nan"))),
        "silhouette_current": silhouette,
        "silhouette_training": float(seg.metrics.get("silhouette", float("nan"))),
        "names_still_fit": float(np.mean(kept)) if kept else float("nan"),
        "renamed": {
            seg.names[i]: n for i, n in zip(present, renamed, strict=True) if seg.names[i] != n
        },  # fmt: skip
    }
    result.models[model] = figures
    result.tables[f"{model}_shares"] = shares.reset_index(names="segment_id")
    result.tables[f"{model}_features"] = drift["features"]
    result.tables[f"{model}_groups"] = drift["groups"]
    s = settings
    checks = (
        ("feature drift share", drift["share"], s.monitor_feature_drift_share, ">"),
        ("segment share shift", figures["segment_share_shift"], s.monitor_segment_share_shift, ">"),
        ("re-fit ARI", ari, s.monitor_segment_ari * ari_reference, "<"),
    )
    _check(result, model, checks, figures["drifted_groups"])
    _group_alarms(result, model, figures["group_alarms"])


GROUP_MIN_FEATURES = 3
"""A signal family and channel needs this many features for the group alarm."""


def drifted_groups(groups: pd.DataFrame, ratio: float) -> list[str]:
    """The (family, channel) groups that moved as a whole: at least
    :data:`GROUP_MIN_FEATURES` features, at least half of them drifted, and a mean distance at
    least ``ratio`` times their mean seasonal range (``monitor_group_drift_ratio``). A channel
    a campaign moves every few weeks has a wide seasonal range and needs a larger move; one
    that never moves by itself (the store's weekly visits) is flagged when it does."""
    hit = groups[
        (groups["features"] >= GROUP_MIN_FEATURES)
        & (groups["drifted_share"] >= 0.5)
        & (groups["seasonal_ratio"] >= ratio)
    ]
    return [
        f"{r.family}/{r.channel} ({r.drifted} of {r.features} features, "
        f"{r.seasonal_ratio:.1f}x its seasonal range)"
        for r in hit.itertuples()
    ]


def _group_alarms(result: MonitorResult, model: str, groups: list[str]) -> None:
    for group in groups:
        result.alarms.append(f"{model}: feature group drifted: {group}")


def _check(result: MonitorResult, model: str, checks, groups: list[str]) -> None:
    for label, value, threshold, side in checks:
        crossed = value > threshold if side == ">" else value < threshold
        if crossed:
            where = f" (drifted: {', '.join(groups[:6])})" if "feature" in label and groups else ""
            result.alarms.append(
                f"{model}: {label} {value:.3f} {side} threshold {threshold:g}{where}"
            )


def monitor(
    settings: Settings,
    as_of: pd.Timestamp | str | None = None,
    models: tuple[str, ...] | None = None,
    out: Path | None = None,
    log_run: bool = True,
) -> MonitorResult:
    """Compare the population of the latest snapshot at or before ``as_of`` with every
    champion's training reference (see the module docstring)."""
    from training.model_io import registry_client

    client = registry_client(settings)
    cutoff = current_cutoff(settings, as_of)
    result = MonitorResult(cutoff=cutoff.isoformat())
    for model in models or (*CLASSIFIERS, *CLUSTERINGS):
        if contract(model).label is not None:
            monitor_classifier(settings, model, cutoff, client, result)
        else:
            monitor_segments(settings, model, cutoff, client, result)
    out = Path(out or settings.home / "reports" / "monitor")
    out.mkdir(parents=True, exist_ok=True)
    for name, table in result.tables.items():
        table.to_csv(out / f"{name}.csv", index=False)
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=1, default=str))
    if log_run:
        result.run_id = _log_run(settings, client, result, out)
        (out / "summary.json").write_text(json.dumps(result.summary(), indent=1, default=str))
    return result


def _log_run(settings: Settings, client, result: MonitorResult, out: Path) -> str:
    from training.runs import experiment_id

    exp = experiment_id(client, settings, MONITORING_EXPERIMENT)
    versions = {m: str(f["version"]) for m, f in result.models.items()}
    run = client.create_run(
        exp,
        run_name="monitor",
        tags={
            "omniscore.kind": "monitor",
            "omniscore.cutoff": result.cutoff,
            "omniscore.drifted": str(result.drifted).lower(),
            "omniscore.model_versions": json.dumps(versions),
            "omniscore.alarms": "; ".join(result.alarms)[:4900],
        },
    )
    for model, figures in result.models.items():
        for key, value in figures.items():
            if isinstance(value, (int, float)) and value is not None and np.isfinite(value):
                client.log_metric(run.info.run_id, f"{model}.{key}", float(value))
    client.log_artifacts(run.info.run_id, str(out), "monitor")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id
