"""Vectorised scoring shared by the online service and batch scoring.

A :class:`ModelSet` is the three champion models (propensity, churn, segments) plus
everything precomputed to score them from a :class:`~serving.online.FeatureBatch` with numpy
alone: each model's columns in the feature layout, categorical vocabularies as dicts, the
segment scaler as arrays, and each feature's channel for explanations. :func:`score` turns a
batch into :class:`Scores` (columns); :func:`to_records` and :func:`to_table` shape them for
the HTTP response and the Parquet output, so ``/score`` and ``score-batch`` cannot disagree.

Explanations (``explain=True``) are LightGBM's exact TreeSHAP contributions to the raw score
(log-odds): the top features by absolute contribution, and the contributions summed per
channel, which with the base value add up to the raw score.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.catalog import FEATURES_BY_NAME
from serving.online import MISSING_TIMESTAMP, FeatureBatch, FeatureLayout
from training.contract import CLASSIFIERS, CLUSTERINGS, MODEL_NAMES, registered_name
from training.model_io import LoadedModel

MODELS: tuple[str, ...] = MODEL_NAMES
"""Every model a request is scored with: the classifiers and one segmentation."""
(SEGMENTS,) = CLUSTERINGS
TOP_REASONS = 5
PARALLEL_ROWS = 2000
"""Rows from which LightGBM predicts on two threads: waking OpenMP threads costs more than a
small batch's whole prediction (measured ~8 ms vs 0.04 ms for one row on a busy 2-core box)."""


def channel_group(name: str) -> str:
    """Explanation group of a feature: its channel, else ``profile`` or ``cross_channel``."""
    feature = FEATURES_BY_NAME.get(name)
    if feature is None:
        return "other"
    if feature.channel:
        return feature.channel
    return "profile" if feature.view == "profile" else "cross_channel"


@dataclass(frozen=True)
class ClassifierPlan:
    """How to build one classifier's input matrix from the layout's columns."""

    model: LoadedModel
    columns: np.ndarray
    """Layout column of each model input (model input order)."""
    categorical: dict[int, tuple[str, dict[str, float]]]
    """Model input position -> (feature name, vocabulary value -> code)."""
    groups: tuple[str, ...]
    membership: np.ndarray
    """``(n_inputs, n_groups)`` 0/1 matrix: which channel group each input belongs to."""

    @classmethod
    def build(cls, model: LoadedModel, layout: FeatureLayout) -> ClassifierPlan:
        """Plan for ``model``; raises ``KeyError`` if the layout lacks one of its inputs."""
        column = layout.index()
        missing = [n for n in model.feature_names if n not in column]
        if missing:
            raise KeyError(
                f"{model.name} v{model.version} needs features its feature service "
                f"{model.feature_service!r} does not serve, e.g. {missing[:5]}"
            )
        vocabularies = model.classifier.vocabularies
        not_strings = [n for n in vocabularies if n in column and n not in layout.strings]
        if not_strings:
            raise TypeError(f"categorical inputs {not_strings} are not string features")
        categorical = {
            j: (name, {v: float(i) for i, v in enumerate(vocabularies[name])})
            for j, name in enumerate(model.feature_names)
            if name in vocabularies
        }
        per_input = [channel_group(n) for n in model.feature_names]
        groups = tuple(dict.fromkeys(per_input))
        membership = np.zeros((len(per_input), len(groups)))
        membership[np.arange(len(per_input)), [groups.index(g) for g in per_input]] = 1.0
        return cls(
            model=model,
            columns=np.asarray([column[n] for n in model.feature_names], dtype=np.int64),
            categorical=categorical,
            groups=groups,
            membership=membership,
        )

    def matrix(self, batch: FeatureBatch, rows: np.ndarray | None = None) -> np.ndarray:
        """The model input matrix (what ``encode_frame`` builds) of all or some ``rows``.

        C-contiguous: LightGBM copies any other layout first.
        """
        numeric = batch.numeric if rows is None else batch.numeric[rows]
        x = np.ascontiguousarray(numeric.take(self.columns, axis=1))
        for j, (name, codes) in self.categorical.items():
            values = batch.strings[name] if rows is None else batch.strings[name][rows]
            if len(values) > 1000:
                vocabulary = list(codes)
                coded = pd.Categorical(values, categories=vocabulary).codes.astype(np.float64)
                coded[coded < 0] = np.nan
                x[:, j] = coded
            else:
                x[:, j] = [codes.get(v, np.nan) for v in values.tolist()]
        return x


@dataclass(frozen=True)
class SegmentPlan:
    """The segment model's scaler and clusterer as arrays, over the layout's columns."""

    model: LoadedModel
    columns: np.ndarray
    fill: np.ndarray
    log: np.ndarray
    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def build(cls, model: LoadedModel, layout: FeatureLayout) -> SegmentPlan:
        """Plan for the segments model; raises ``KeyError`` on a missing input."""
        column = layout.index()
        missing = [n for n in model.feature_names if n not in column]
        if missing:
            raise KeyError(f"{model.name} needs features not served, e.g. {missing[:5]}")
        pre = model.segments.preprocessor
        return cls(
            model=model,
            columns=np.asarray([column[n] for n in model.feature_names], dtype=np.int64),
            fill=np.asarray(pre.fill, dtype=float),
            log=np.asarray(pre.log, dtype=bool),
            center=np.asarray(pre.center, dtype=float),
            scale=np.asarray(pre.scale, dtype=float),
        )

    def scaled(self, batch: FeatureBatch) -> np.ndarray:
        """Derived, imputed, robust-scaled inputs (``Preprocessor.transform`` on arrays)."""
        # The package owns its input derivation (channel shares, caps, logs, scaling).
        return self.model.segments.preprocessor.transform_array(batch.numeric[:, self.columns])

    def assign(self, batch: FeatureBatch) -> tuple[np.ndarray, np.ndarray]:
        """Segment ids and names per row."""
        seg = self.model.segments
        cluster = seg.clusterer.predict(self.scaled(batch))
        return (
            np.asarray(seg.ids, dtype=np.int64)[cluster],
            np.asarray(seg.names, dtype=object)[cluster],
        )


@dataclass(frozen=True)
class ModelSet:
    """The models one request is scored with; swapped as a whole on reload."""

    layout: FeatureLayout
    classifiers: dict[str, ClassifierPlan]
    segments: SegmentPlan
    loaded_at: float = field(default_factory=time.time)

    @property
    def versions(self) -> dict[str, str]:
        """Registered version of each model (``propensity``, ``churn``, ``segments``)."""
        out = {m: p.model.version for m, p in self.classifiers.items()}
        out[SEGMENTS] = self.segments.model.version
        return out

    def models(self) -> dict[str, LoadedModel]:
        """The loaded models by short name."""
        out = {m: p.model for m, p in self.classifiers.items()}
        out[SEGMENTS] = self.segments.model
        return out

    @property
    def feature_services(self) -> dict[str, str]:
        """Feast feature service each model was trained on (from its version tags)."""
        out = {m: p.model.feature_service for m, p in self.classifiers.items()}
        out[SEGMENTS] = self.segments.model.feature_service
        return out

    @classmethod
    def build(cls, models: Mapping[str, LoadedModel], layout: FeatureLayout) -> ModelSet:
        """Precompute the scoring plans of ``models`` (keys: propensity, churn, segments)."""
        missing = [m for m in MODELS if m not in models]
        if missing:
            raise KeyError(f"model set lacks {missing}")
        return cls(
            layout=layout,
            classifiers={m: ClassifierPlan.build(models[m], layout) for m in CLASSIFIERS},
            segments=SegmentPlan.build(models[SEGMENTS], layout),
        )


def load_model_set(
    settings, store, versions: Mapping[str, str] | None = None, reuse: ModelSet | None = None
) -> ModelSet:
    """Load the champions (or the pinned ``versions``) from the configured registry.

    Each model's Feast feature service comes from its version's tags; the feature layout is
    the union of those services as the Feast registry defines them. Models whose version is
    unchanged from ``reuse`` are not downloaded again.
    """
    from training.model_io import load_champion, load_version

    current = reuse.models() if reuse else {}
    loaded: dict[str, LoadedModel] = {}
    for short in MODELS:
        name = registered_name(short)
        wanted = (versions or {}).get(short)
        version = str(wanted) if wanted is not None else _alias_version(settings, name)
        if short in current and current[short].version == version:
            loaded[short] = current[short]
        elif wanted is None:
            loaded[short] = load_champion(settings, name)
        else:
            loaded[short] = load_version(settings, name, version)
        if not loaded[short].feature_service:
            raise ValueError(f"{name} v{loaded[short].version} has no feature service tag")
    services = list(dict.fromkeys(m.feature_service for m in loaded.values()))
    layout = FeatureLayout.for_services(store, services)
    return ModelSet.build(loaded, layout)


def _alias_version(settings, name: str, alias: str = "champion") -> str:
    from training.model_io import registry_client

    return str(registry_client(settings).get_model_version_by_alias(name, alias).version)


def champion_versions(settings) -> dict[str, str]:
    """The registry's current ``champion`` version of each model (short name -> version)."""
    from training.model_io import registry_client

    client = registry_client(settings)
    return {
        short: str(client.get_model_version_by_alias(registered_name(short), "champion").version)
        for short in MODELS
    }


# --- scoring ------------------------------------------------------------------------------
@dataclass
class Scores:
    """Scores of a batch of customers, column by column.

    Per classifier (``propensity``, ``churn``): calibrated ``probability``, ``score`` (its
    percentile 0-100 in the training population) and ``band``. Unknown customers carry the
    models' cold-start values. ``feature_timestamp`` is the oldest snapshot time served for
    the customer, in epoch seconds (:data:`~serving.online.MISSING_TIMESTAMP` if unknown).
    """

    customer_ids: list[str]
    known: np.ndarray
    probability: dict[str, np.ndarray]
    score: dict[str, np.ndarray]
    band: dict[str, np.ndarray]
    segment_id: np.ndarray
    segment_name: np.ndarray
    feature_timestamp: np.ndarray
    versions: dict[str, str]
    explanations: list[dict | None] | None = None

    def __len__(self) -> int:
        return len(self.customer_ids)


def score(models: ModelSet, batch: FeatureBatch, explain: bool = False) -> Scores:
    """Score every customer of ``batch`` with ``models``; explain known customers if asked."""
    n = len(batch)
    known = np.asarray(batch.known, dtype=bool)
    threads = 2 if n >= PARALLEL_ROWS else 1
    probability, percentile, band = {}, {}, {}
    inputs: dict[str, np.ndarray] = {}
    for m, plan in models.classifiers.items():
        clf = plan.model.classifier
        cold = plan.model.cold_start
        p = np.full(n, float(cold["probability"]))
        s = np.full(n, float(cold["percentile"]))
        b = np.full(n, str(cold["band"]), dtype=object)
        if known.any():
            x = plan.matrix(batch, None if known.all() else np.flatnonzero(known))
            inputs[m] = x
            raw = clf.booster.predict(x, raw_score=True, num_threads=threads)
            pk = clf.calibrate(raw)
            p[known] = pk
            s[known] = clf.score_percentile(pk)
            b[known] = clf.band(pk)
        probability[m], percentile[m], band[m] = p, s, b
    seg = models.segments.model
    seg_id = np.full(n, int(seg.cold_start["segment_id"]), dtype=np.int64)
    seg_name = np.full(n, str(seg.cold_start["segment_name"]), dtype=object)
    if known.any():
        ids, names = models.segments.assign(_rows(batch, known))
        seg_id[known], seg_name[known] = ids, names
    never = np.iinfo(np.int64).max
    stamps = np.where(batch.timestamps == MISSING_TIMESTAMP, never, batch.timestamps)
    oldest = stamps.min(axis=1) if stamps.shape[1] else np.full(n, never)
    oldest = np.where(oldest == never, MISSING_TIMESTAMP, oldest)
    explanations = None
    if explain:
        explanations = explain_rows(models, batch, known, inputs, threads)
    return Scores(
        customer_ids=list(batch.customer_ids),
        known=known,
        probability=probability,
        score=percentile,
        band=band,
        segment_id=seg_id,
        segment_name=seg_name,
        feature_timestamp=oldest,
        versions=models.versions,
        explanations=explanations,
    )


def _rows(batch: FeatureBatch, mask: np.ndarray) -> FeatureBatch:
    if mask.all():
        return batch
    return FeatureBatch(
        customer_ids=[c for c, k in zip(batch.customer_ids, mask.tolist(), strict=True) if k],
        numeric=batch.numeric[mask],
        strings={k: v[mask] for k, v in batch.strings.items()},
        timestamps=batch.timestamps[mask],
        known=batch.known[mask],
    )


def explain_rows(
    models: ModelSet,
    batch: FeatureBatch,
    known: np.ndarray,
    inputs: dict[str, np.ndarray],
    threads: int = 1,
) -> list[dict | None]:
    """Per customer: for each classifier its raw score, base value, top reasons and channel
    sums (``None`` for unknown customers, who get cold-start scores, not a model's)."""
    out: list[dict | None] = [None] * len(batch)
    rows = np.flatnonzero(known)
    if rows.size == 0:
        return out
    per_model = {}
    for m, plan in models.classifiers.items():
        x = inputs[m]
        contrib = plan.model.classifier.booster.predict(x, pred_contrib=True, num_threads=threads)
        features = contrib[:, :-1]
        channels = features @ plan.membership
        order = np.argsort(-np.abs(features), axis=1, kind="stable")[:, :TOP_REASONS]
        per_model[m] = (plan, contrib, channels, order)
    for i, row in enumerate(rows.tolist()):
        item = {}
        for m, (plan, contrib, channels, order) in per_model.items():
            names = plan.model.feature_names
            reasons = []
            for j in order[i].tolist():
                name = names[j]
                reasons.append(
                    {
                        "feature": name,
                        "value": _feature_value(batch, plan, row, j),
                        "contribution": float(contrib[i, j]),
                        "channel": channel_group(name),
                    }
                )
            item[m] = {
                "raw_score": float(contrib[i].sum()),
                "base_value": float(contrib[i, -1]),
                "top_reasons": reasons,
                "channels": {
                    g: float(v) for g, v in zip(plan.groups, channels[i].tolist(), strict=True)
                },
            }
        out[row] = item
    return out


def _feature_value(batch: FeatureBatch, plan: ClassifierPlan, row: int, j: int):
    if j in plan.categorical:
        return batch.strings[plan.categorical[j][0]][row]
    value = float(batch.numeric[row, plan.columns[j]])
    return None if np.isnan(value) else value


# --- shaping ------------------------------------------------------------------------------
def iso_timestamp(seconds: int) -> str | None:
    """ISO 8601 UTC text of epoch seconds (None for a missing timestamp)."""
    if seconds == MISSING_TIMESTAMP:
        return None
    return datetime.fromtimestamp(int(seconds), UTC).isoformat().replace("+00:00", "Z")


def to_records(scores: Scores) -> list[dict]:
    """One JSON-ready dict per customer: what ``POST /score`` returns for each id."""
    out = []
    versions = dict(scores.versions)
    explanations = scores.explanations
    cols = {
        m: (
            scores.probability[m].tolist(),
            scores.score[m].tolist(),
            scores.band[m].tolist(),
        )
        for m in CLASSIFIERS
    }
    seg_id, seg_name = scores.segment_id.tolist(), scores.segment_name.tolist()
    known = scores.known.tolist()
    stamps = scores.feature_timestamp.tolist()
    for i, cid in enumerate(scores.customer_ids):
        record = {"customer_id": cid, "known": known[i]}
        for m, (p, s, b) in cols.items():
            record[m] = {"probability": p[i], "score": s[i], "band": b[i]}
        record["segment"] = {"id": seg_id[i], "name": seg_name[i]}
        record["feature_timestamp"] = iso_timestamp(stamps[i])
        record["model_versions"] = versions
        if explanations is not None:
            record["explanation"] = explanations[i]
        out.append(record)
    return out


def to_table(scores: Scores) -> pa.Table:
    """Flat Arrow table of scores (what ``score-batch`` writes as Parquet)."""
    stamps = scores.feature_timestamp
    valid = stamps != MISSING_TIMESTAMP
    ts = pa.array(
        np.where(valid, stamps, 0).astype("int64") * 1_000_000,
        type=pa.int64(),
        mask=~valid,
    ).cast(pa.timestamp("us", tz="UTC"))
    columns: dict[str, pa.Array] = {
        "customer_id": pa.array(scores.customer_ids, type=pa.string()),
        "known": pa.array(scores.known, type=pa.bool_()),
    }
    for m in CLASSIFIERS:
        columns[f"{m}_probability"] = pa.array(scores.probability[m], type=pa.float64())
        columns[f"{m}_score"] = pa.array(scores.score[m], type=pa.float64())
        columns[f"{m}_band"] = pa.array(scores.band[m].tolist(), type=pa.string())
    columns["segment_id"] = pa.array(scores.segment_id, type=pa.int64())
    columns["segment_name"] = pa.array(scores.segment_name.tolist(), type=pa.string())
    columns["feature_timestamp"] = ts
    for m in MODELS:
        columns[f"{m}_version"] = pa.array([scores.versions[m]] * len(scores), type=pa.string())
    return pa.table(columns)
