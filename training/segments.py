"""Cross-channel customer segments: robust scaling, k-means or a Gaussian mixture, names, ids.

The whole fitted model is plain numbers (:class:`SegmentModel`), saved as JSON and applied with
numpy alone, so serving never unpickles anything. The number of segments and the method are
chosen by Optuna on silhouette plus bootstrap stability (:func:`partition_score`). Segment ids
stay stable across retrains: the new centroids are matched to the champion's with the
Hungarian algorithm (:func:`match_ids`), and each segment is named from the features that
distinguish it from the population (:func:`name_segments`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, silhouette_score
from sklearn.mixture import GaussianMixture

from data_layer.schema import CHANNELS

METHODS: tuple[str, ...] = ("kmeans", "gmm")
STABILITY_WEIGHT = 0.5
"""Weight of bootstrap stability (ARI in [0, 1]) against silhouette in the tuning objective."""

MIN_SEGMENT_SHARE = 0.03
"""Partitions with a segment smaller than this share of customers are rejected."""
CLIP = 3.0
"""Scaled values are clipped to [-CLIP, CLIP] robust units."""
_RECENCY_CAP_DAYS = 365.0
"""Fill for "days since" features of customers who never did the thing: far in the past."""


# --- preprocessing --------------------------------------------------------------------------
def _is_log_feature(name: str) -> bool:
    """Counts, money and tenure are heavy-tailed: log1p before scaling keeps whales in check."""
    return (
        name.endswith("_events_90d")
        or name.startswith(("purchases_", "revenue_", "avg_order_value_", "support_contacts_"))
        or name in ("tenure_days", "days_since_last_purchase")
    )


SHARE_PREFIX = "share:"
TOTAL_INPUT = "total:events_90d"
SHARE_WEIGHT = 4.0
"""Channel shares (in [0, 1]) are multiplied by this instead of being robust-scaled one by one:
a common scale keeps the mix a composition (a rare channel's tiny spread is not blown up),
and a full swing of the mix weighs as much as 4 robust units of value or recency."""
_MIX_VALUE_INPUTS: dict[str, tuple[float | None, bool]] = {
    "revenue_90d": (None, True),
    "avg_order_value_90d": (None, True),
    "days_since_last_purchase": (_RECENCY_CAP_DAYS, True),
    "tenure_days": (365.0, False),
}
"""Value and lifecycle inputs of the channel-mix recipe: feature -> (upper cap, log1p).
Tenure is capped at a year and kept linear: "new" against "established" is what matters."""


@dataclass(frozen=True)
class _DerivePlan:
    """Column positions :meth:`Preprocessor._derive` reads and writes, per input kind."""

    share_src: np.ndarray
    share_pos: np.ndarray
    total_pos: np.ndarray
    plain_src: np.ndarray
    plain_pos: np.ndarray


@lru_cache(maxsize=64)
def _derive_plan(features: tuple[str, ...], inputs: tuple[str, ...]) -> _DerivePlan:
    column = {n: j for j, n in enumerate(features)}
    shares = [j for j, n in enumerate(inputs) if n.startswith(SHARE_PREFIX)]
    plain = [j for j, n in enumerate(inputs) if not n.startswith(SHARE_PREFIX) and n != TOTAL_INPUT]
    as_array = lambda v: np.asarray(v, dtype=np.int64)  # noqa: E731
    return _DerivePlan(
        share_src=as_array([column[inputs[j].removeprefix(SHARE_PREFIX)] for j in shares]),
        share_pos=as_array(shares),
        total_pos=as_array([j for j, n in enumerate(inputs) if n == TOTAL_INPUT]),
        plain_src=as_array([column[inputs[j]] for j in plain]),
        plain_pos=as_array(plain),
    )


@dataclass
class Preprocessor:
    """Derived inputs, imputation, log1p of heavy-tailed inputs and robust (median/IQR) scaling.

    ``features`` are the served raw features the model reads. ``inputs`` are the clustering
    inputs derived from them, aligned with ``fill``, ``log``, ``cap``, ``center``, ``scale``:

    - ``share:<f>``: ``<f>``'s share of the summed ``<channel>_events_90d`` counts (the channel
      mix, independent of activity level), scaled by a common factor, not one by one;
    - ``total:events_90d``: log1p of that sum (the activity level, once);
    - a feature name: the feature, imputed, capped, optionally log1p'd, robust-scaled.

    With fewer than two channel-count features (or for models saved before inputs were
    derived, ``inputs`` empty), the inputs are the features themselves.
    """

    features: list[str]
    fill: list[float]
    log: list[bool]
    center: list[float]
    scale: list[float]
    inputs: list[str] = field(default_factory=list)
    cap: list[float | None] = field(default_factory=list)

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: Sequence[str]) -> Preprocessor:
        """Learn the inputs, fills, centres and scales from a training frame."""
        features = list(features)
        raw = frame[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        channels = [f"{ch}_events_90d" for ch in CHANNELS if f"{ch}_events_90d" in features]
        if len(channels) >= 2:
            inputs = [SHARE_PREFIX + c for c in channels] + [TOTAL_INPUT]
            inputs += [n for n in _MIX_VALUE_INPUTS if n in features]
        else:
            inputs = list(features)
        fill, log, cap = [], [], []
        for name in inputs:
            if name.startswith(SHARE_PREFIX) or name == TOTAL_INPUT:
                fill.append(0.0)
                log.append(name == TOTAL_INPUT)
                cap.append(None)
                continue
            if "days_since" in name:
                value = _RECENCY_CAP_DAYS
            else:
                col = raw[:, features.index(name)]
                finite = col[np.isfinite(col)]
                value = float(np.median(finite)) if finite.size else 0.0
            fill.append(float(value))
            if name in _MIX_VALUE_INPUTS and inputs[0].startswith(SHARE_PREFIX):
                upper, is_log = _MIX_VALUE_INPUTS[name]
            else:
                upper, is_log = None, _is_log_feature(name)
            log.append(is_log)
            cap.append(upper)
        pre = cls(features, fill, log, [], [], inputs, cap)
        x = pre._derive(raw)
        center = np.median(x, axis=0)
        q90, q75, q25, q10 = np.percentile(x, [90, 75, 25, 10], axis=0)
        # A zero-inflated feature has a zero IQR yet still varies: fall back to the 10-90%
        # range (scaled to match the IQR of a normal), then to 1.
        spread = np.maximum(q75 - q25, (q90 - q10) / 2.56)
        scale = np.where(spread > 1e-9, spread, 1.0)
        shares = np.array([n.startswith(SHARE_PREFIX) for n in inputs], dtype=bool)
        center[shares] = 0.0
        scale[shares] = 1.0 / SHARE_WEIGHT
        pre.center = [float(v) for v in center]
        pre.scale = [float(v) for v in scale]
        return pre

    def _derive(self, raw: np.ndarray) -> np.ndarray:
        """Unscaled inputs (n, len(inputs)) from raw features (n, len(features)).

        Per input: its source (a channel share, the summed count, or a feature imputed with
        ``fill``), then the ``cap``, then log1p where ``log`` says so; column by column in
        vectorised form, as serving calls this for every request.
        """
        if not self.inputs:  # a model saved before inputs were derived: inputs = features
            return self._impute_log(raw)
        plan = _derive_plan(tuple(self.features), tuple(self.inputs))
        n = len(raw)
        counts = raw[:, plan.share_src]
        counts = np.clip(np.where(np.isfinite(counts), counts, 0.0), 0, None)
        total = counts.sum(axis=1)
        x = np.empty((n, len(self.inputs)))
        x[:, plan.share_pos] = counts / np.maximum(total, 1e-9)[:, None]
        x[:, plan.total_pos] = total[:, None]
        plain = raw[:, plan.plain_src]
        fill = np.asarray(self.fill, dtype=float)[plan.plain_pos]
        x[:, plan.plain_pos] = np.where(np.isfinite(plain), plain, fill)
        caps = np.array([np.inf if c is None else c for c in self.cap], dtype=float)
        if np.isfinite(caps).any():
            x = np.minimum(x, caps)
        logs = np.asarray(self.log, dtype=bool)
        if logs.any():
            x[:, logs] = np.log1p(np.clip(x[:, logs], 0, None))
        return x

    def _impute_log(self, raw: np.ndarray) -> np.ndarray:
        x = np.where(np.isfinite(raw), raw, np.asarray(self.fill))
        logs = np.asarray(self.log, dtype=bool)
        x[:, logs] = np.log1p(np.clip(x[:, logs], 0, None))
        return x

    def transform_array(self, raw: np.ndarray) -> np.ndarray:
        """Scaled inputs (n, len(inputs)) from a raw float matrix with :attr:`features` columns
        (what serving calls on its arrays)."""
        x = self._derive(np.asarray(raw, dtype=float))
        scaled = (x - np.asarray(self.center)) / np.asarray(self.scale)
        # Clipping at +-CLIP robust units keeps a few extreme customers from owning a cluster
        # (shares are bounded already: they are left whole).
        bounded = np.asarray([n.startswith(SHARE_PREFIX) for n in self.inputs], dtype=bool)
        clipped = np.clip(scaled, -CLIP, CLIP)
        if bounded.any():
            clipped[:, bounded] = scaled[:, bounded]
        return clipped

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """Scaled inputs (n, len(inputs)) for a frame holding :attr:`features`."""
        raw = frame[self.features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
        return self.transform_array(raw)


# --- clustering -----------------------------------------------------------------------------
@dataclass
class Clusterer:
    """Fitted k-means centroids or Gaussian-mixture parameters, in scaled space."""

    method: str
    means: list[list[float]]
    weights: list[float] = field(default_factory=list)
    precisions_cholesky: list = field(default_factory=list)
    covariance_type: str = "full"

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Cluster index (0..k-1) of each row of a scaled matrix."""
        means = np.asarray(self.means)
        if self.method == "kmeans":
            # Squared distances via the expansion ||x||^2 - 2 x.m + ||m||^2: one matrix product.
            d = (x * x).sum(1)[:, None] - 2 * x @ means.T + (means * means).sum(1)[None, :]
            return d.argmin(axis=1)
        return self.log_resp(x).argmax(axis=1)

    def log_resp(self, x: np.ndarray) -> np.ndarray:
        """Unnormalised log posterior of each mixture component (GMM only)."""
        means = np.asarray(self.means)
        n_features = means.shape[1]
        prec = np.asarray(self.precisions_cholesky)
        out = np.empty((x.shape[0], means.shape[0]))
        for k in range(means.shape[0]):
            if self.covariance_type == "full":
                y = x @ prec[k] - means[k] @ prec[k]
                log_det = np.log(np.diag(prec[k])).sum()
            else:  # diag
                y = (x - means[k]) * prec[k]
                log_det = np.log(prec[k]).sum()
            out[:, k] = (
                -0.5 * (n_features * np.log(2 * np.pi) + (y * y).sum(1))
                + log_det
                + np.log(self.weights[k])
            )
        return out


def fit_clusterer(
    x: np.ndarray, method: str, k: int, seed: int, init: np.ndarray | None = None
) -> Clusterer:
    """Fit k-means or a diagonal-covariance Gaussian mixture with ``k`` components.

    Diagonal covariances: full ones cost ~30x more to fit on this data for no better
    recovery of segments after robust scaling.
    """
    if method == "kmeans":
        if init is not None:
            km = KMeans(n_clusters=k, init=init, n_init=1, random_state=seed).fit(x)
        else:
            km = KMeans(n_clusters=k, n_init=8, random_state=seed).fit(x)
        return Clusterer("kmeans", km.cluster_centers_.tolist())
    if method == "gmm":
        gm = GaussianMixture(
            n_components=k,
            covariance_type="diag",
            reg_covar=1e-3,
            n_init=1,
            init_params="k-means++",
            means_init=init,
            max_iter=200,
            random_state=seed,
        ).fit(x)
        return Clusterer(
            "gmm",
            gm.means_.tolist(),
            gm.weights_.tolist(),
            gm.precisions_cholesky_.tolist(),
            "diag",
        )
    raise ValueError(f"unknown clustering method {method!r}; known: {METHODS}")


def partition_score(
    x: np.ndarray,
    method: str,
    k: int,
    seed: int,
    n_bootstrap: int = 3,
    silhouette_sample: int = 3000,
    fit_sample: int = 20000,
) -> dict[str, float]:
    """Silhouette and bootstrap stability of one (method, k); ``score`` combines them.

    Stability is the mean adjusted Rand index between the partition of a reference sample by
    the model fitted on all of it and by the same solution re-fitted on bootstrap resamples
    (started from the reference centres, so it measures how well this partition survives
    resampling rather than how often a random restart finds it).
    """
    rng = np.random.default_rng(seed)
    ref = x[rng.choice(len(x), size=min(fit_sample, len(x)), replace=False)]
    model = fit_clusterer(ref, method, k, seed)
    labels = model.predict(ref)
    shares = np.bincount(labels, minlength=k) / len(labels)
    if shares.min() < MIN_SEGMENT_SHARE:
        # A "segment" of a handful of outliers is no segment: such a partition is rejected
        # (a mixture fits them readily, and they make it look stable).
        return {"silhouette": -1.0, "stability": 0.0, "score": -1.0, "min_share": shares.min()}
    sil = float(
        silhouette_score(
            ref, labels, sample_size=min(silhouette_sample, len(ref)), random_state=seed
        )
    )
    aris = []
    for b in range(n_bootstrap):
        boot = ref[rng.integers(0, len(ref), size=len(ref))]
        other = fit_clusterer(boot, method, k, seed + 1 + b, init=np.asarray(model.means))
        aris.append(adjusted_rand_score(labels, other.predict(ref)))
    stability = float(np.mean(aris)) if aris else 1.0
    return {
        "silhouette": sil,
        "stability": stability,
        "score": (1 - STABILITY_WEIGHT) * sil + STABILITY_WEIGHT * stability,
        "min_share": float(shares.min()),
    }


# --- ids and names --------------------------------------------------------------------------
def match_ids(
    new_centroids_raw: np.ndarray,
    champion_centroids_raw: np.ndarray | None,
    champion_ids: Sequence[int] | None,
    pre: Preprocessor,
    sizes: np.ndarray,
) -> list[int]:
    """Segment id of each new cluster: the champion's id it matches, or a fresh one.

    Both centroid sets are compared in the new model's scaled space (champion centroids are
    stored raw, so a change of scaler between versions does not matter). The Hungarian
    algorithm finds the one-to-one matching of least total distance. Without a champion, ids
    go by size: 0 is the largest segment.
    """
    k = len(new_centroids_raw)
    if champion_centroids_raw is None or champion_ids is None or len(champion_ids) == 0:
        order = np.argsort(-np.asarray(sizes), kind="stable")
        ids = [0] * k
        for new_id, cluster in enumerate(order):
            ids[int(cluster)] = new_id
        return ids
    frame_new = pd.DataFrame(new_centroids_raw, columns=pre.features)
    frame_old = pd.DataFrame(champion_centroids_raw, columns=pre.features)
    a, b = pre.transform(frame_new), pre.transform(frame_old)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    rows, cols = linear_sum_assignment(cost)
    ids: list[int | None] = [None] * k
    for r, c in zip(rows, cols, strict=True):
        ids[int(r)] = int(champion_ids[c])
    next_id = max(int(i) for i in champion_ids) + 1
    for cluster in np.argsort(-np.asarray(sizes), kind="stable"):
        if ids[int(cluster)] is None:
            ids[int(cluster)] = next_id
            next_id += 1
    return [int(i) for i in ids]


_DESCRIPTORS: dict[str, tuple[str, str]] = {
    "email_open_rate_90d": ("email-engaged", "email-ignoring"),
    "cart_abandonment_rate_90d": ("cart abandoners", "cart finishers"),
    "support_contacts_90d": ("support-heavy", "self-serve"),
    "avg_rating_90d": ("satisfied", "dissatisfied"),
    "events_trend_30d": ("growing", "cooling"),
    "tenure_days": ("long-standing", "new"),
    "avg_order_value_90d": ("big baskets", "small baskets"),
    "return_rate_90d": ("frequent returners", "rare returners"),
}


def name_segments(profile: pd.DataFrame, population: pd.DataFrame) -> list[str]:
    """A human-readable, unique name per segment from the features that distinguish it.

    ``profile`` has one row per segment with per-feature medians; ``population`` is the
    training frame (compared through its medians, so a few whales do not set the bar).
    A name joins: "new" when the segment's tenure is far below the population's; a channel
    part (the channel, among those holding at least 15% of the segment's activity, whose
    share is highest relative to the population, or "omnichannel" for a clearly broader mix,
    or "dormant" for little activity); a value part (revenue against the population); and,
    where two segments would still share a name, the most distinguishing other trait.
    Example: "store-first, high value".
    """
    event_cols = [f"{ch}_events_90d" for ch in CHANNELS if f"{ch}_events_90d" in profile]
    pop = population[list(profile.columns)].apply(pd.to_numeric, errors="coerce")
    pop_mean = pop.median()
    pop_std = pop.std().replace(0, np.nan)
    pop_events = float(pop[event_cols].sum(axis=1).median()) if event_cols else 0.0
    channel_totals = pop[event_cols].sum() if event_cols else None
    pop_share = (
        channel_totals / channel_totals.sum()
        if channel_totals is not None and channel_totals.sum() > 0
        else None
    )
    pop_entropy = float(pop_mean.get("channel_entropy_90d", np.nan))
    pop_tenure = float(pop["tenure_days"].median()) if "tenure_days" in pop else np.nan
    names: list[list[str]] = []
    for _, seg in profile.iterrows():
        parts: list[str] = []
        if np.isfinite(pop_tenure) and float(seg.get("tenure_days", np.inf)) < 0.25 * pop_tenure:
            parts.append("new")
        total = float(seg[event_cols].sum()) if event_cols else 0.0
        if event_cols and total < 0.25 * pop_events:
            parts.append("dormant")
        elif event_cols and pop_share is not None and total > 0:
            share = seg[event_cols] / total
            lift = (share / pop_share.replace(0, np.nan)).where(share >= 0.15).dropna()
            entropy = float(seg.get("channel_entropy_90d", np.nan))
            if np.isfinite(entropy) and entropy > 1.15 * pop_entropy:
                parts.append("omnichannel")
            elif not lift.empty:
                top = str(lift.idxmax()).removesuffix("_events_90d")
                parts.append(f"{top.replace('_', '-')}-first")
            else:
                parts.append("mixed-channel")
        if "revenue_90d" in seg and pop_mean.get("revenue_90d", 0) > 0:
            ratio = float(seg["revenue_90d"]) / float(pop_mean["revenue_90d"])
            parts.append(
                "high value" if ratio >= 1.5 else "low value" if ratio <= 0.5 else "mid value"
            )
        names.append(parts)
    joined = [", ".join(p) for p in names]
    if len(set(joined)) < len(joined):
        z = (profile - pop_mean) / pop_std
        for i, name in enumerate(joined):
            if joined.count(name) == 1:
                continue
            trait = _best_trait(z.iloc[i])
            if trait:
                names[i].append(trait)
        joined = [", ".join(p) for p in names]
    seen: dict[str, int] = {}
    unique = []
    for name in joined:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


def _best_trait(z: pd.Series) -> str | None:
    candidates = {k: v for k, v in z.items() if k in _DESCRIPTORS and np.isfinite(v)}
    if not candidates:
        return None
    feature = max(candidates, key=lambda k: abs(candidates[k]))
    high, low = _DESCRIPTORS[feature]
    return high if candidates[feature] > 0 else low


# --- the model ------------------------------------------------------------------------------
@dataclass
class SegmentModel:
    """A fitted segmentation: preprocessing, clusterer, stable ids and names, as plain data."""

    preprocessor: Preprocessor
    clusterer: Clusterer
    ids: list[int]
    names: list[str]
    centroids_raw: list[list[float]]
    sizes: list[float]
    default_segment: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """Model input features, in order."""
        return self.preprocessor.features

    @property
    def name_by_id(self) -> dict[int, str]:
        """Segment id -> human-readable name."""
        return dict(zip(self.ids, self.names, strict=True))

    def assign(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Segment ids and names of each row of a frame holding :attr:`features`."""
        cluster = self.clusterer.predict(self.preprocessor.transform(frame))
        ids = np.asarray(self.ids)[cluster]
        names = np.asarray(self.names, dtype=object)[cluster]
        return ids, names

    def to_dict(self) -> dict:
        """JSON-ready dictionary (what :meth:`save` writes)."""
        return {
            "format": "omniscore-segments/1",
            "preprocessor": asdict(self.preprocessor),
            "clusterer": asdict(self.clusterer),
            "ids": self.ids,
            "names": self.names,
            "centroids_raw": self.centroids_raw,
            "sizes": self.sizes,
            "default_segment": self.default_segment,
            "metrics": self.metrics,
        }

    @classmethod
    def from_dict(cls, data: dict) -> SegmentModel:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != "omniscore-segments/1":
            raise ValueError(f"not an OmniScore segment model: format={data.get('format')!r}")
        return cls(
            preprocessor=Preprocessor(**data["preprocessor"]),
            clusterer=Clusterer(**data["clusterer"]),
            ids=[int(i) for i in data["ids"]],
            names=list(data["names"]),
            centroids_raw=data["centroids_raw"],
            sizes=data["sizes"],
            default_segment=int(data["default_segment"]),
            metrics=data.get("metrics", {}),
        )

    def save(self, path: Path) -> Path:
        """Write the model as JSON."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, sort_keys=True))
        return path

    @classmethod
    def load(cls, path: Path) -> SegmentModel:
        """Read a model written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def fit_segment_model(
    frame: pd.DataFrame,
    features: Sequence[str],
    method: str,
    k: int,
    seed: int,
    champion: SegmentModel | None = None,
    fit_sample: int = 50000,
) -> SegmentModel:
    """Fit the final segmentation with a chosen method and k, ids matched to ``champion``."""
    pre = Preprocessor.fit(frame, features)
    x = pre.transform(frame)
    rng = np.random.default_rng(seed)
    fit_rows = x if len(x) <= fit_sample else x[rng.choice(len(x), fit_sample, replace=False)]
    clusterer = fit_clusterer(fit_rows, method, k, seed)
    cluster = clusterer.predict(x)
    sizes = np.bincount(cluster, minlength=k).astype(float)
    raw = frame[list(features)].apply(pd.to_numeric, errors="coerce")
    profile_medians = raw.groupby(cluster).median().reindex(range(k))
    # Raw "centroids" for matching ids across retrains: per-segment medians of the features
    # (derived inputs such as shares cannot be inverted to raw features).
    centroids_raw = profile_medians.fillna(raw.median()).fillna(0.0).to_numpy(dtype=float)
    ids = match_ids(
        centroids_raw,
        np.asarray(champion.centroids_raw) if champion else None,
        champion.ids if champion else None,
        pre,
        sizes,
    )
    names = name_segments(profile_medians, frame)
    largest = int(np.argmax(sizes))
    return SegmentModel(
        preprocessor=pre,
        clusterer=clusterer,
        ids=ids,
        names=names,
        centroids_raw=centroids_raw.tolist(),
        sizes=(sizes / sizes.sum()).tolist(),
        default_segment=int(ids[largest]),
    )


def segment_profile(model: SegmentModel, frame: pd.DataFrame) -> pd.DataFrame:
    """Per-segment medians of the model's features plus each segment's population share."""
    ids, names = model.assign(frame)
    raw = frame[model.features].apply(pd.to_numeric, errors="coerce")
    profile = raw.groupby(names).median()
    share = pd.Series(names).value_counts(normalize=True)
    profile["share"] = share.reindex(profile.index).to_numpy()
    profile["segment_id"] = (
        pd.Series(ids, index=names).groupby(level=0).first().reindex(profile.index)
    )
    return profile.sort_values("share", ascending=False)


def evaluate_segments(model: SegmentModel, frame: pd.DataFrame, seed: int) -> dict[str, float]:
    """Silhouette of a model's partition of ``frame`` (sampled) and its number of segments."""
    x = model.preprocessor.transform(frame)
    labels = model.clusterer.predict(x)
    if len(np.unique(labels)) < 2:
        return {"silhouette": -1.0, "n_segments": float(len(model.ids))}
    sil = silhouette_score(x, labels, sample_size=min(3000, len(x)), random_state=seed)
    return {"silhouette": float(sil), "n_segments": float(len(model.ids))}
