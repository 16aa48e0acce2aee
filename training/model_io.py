"""Model packages: how a trained model is written, logged, registered and loaded back.

A package is a directory of native, non-executable files:

- classifiers (propensity, churn): ``model.lgb``, the LightGBM Booster in its own text format,
  plus ``omniscore.json`` (input order, categorical vocabularies, Platt calibration, the
  training population's score quantiles, band thresholds, cold-start defaults);
- segments: ``segments.json`` (scaler centres and scales, centroids or mixture parameters,
  stable ids and names).

Each package also carries an ``MLmodel`` file with the signature and an input example. The
SHA-256 of every file is recorded as the tag ``omniscore.sha256`` on the registered version
(and the run) and checked again on load: a tampered or truncated artifact fails loudly.

Serving uses exactly one entry point, :func:`load_champion` (or :func:`load_version`), which
returns a :class:`LoadedModel`. Nothing here unpickles: LightGBM text and JSON only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from data_layer.settings import DEFAULT_LGBM_THREADS, Settings
from training.contract import CLASSIFIER, CLUSTERING, contract, registered_name
from training.segments import SegmentModel

CLASSIFIER_FILE = "model.lgb"
CLASSIFIER_META = "omniscore.json"
SEGMENTS_FILE = "segments.json"
SHA_TAG = "omniscore.sha256"
KIND_TAG = "omniscore.kind"
SERVICE_TAG = "omniscore.feature_service"
BANDS: tuple[str, ...] = ("low", "medium", "high")
BAND_PERCENTILES: tuple[float, float] = (70.0, 90.0)
"""A score is ``medium`` from the 70th training percentile and ``high`` from the 90th."""
CLASSIFIER_PACKAGE = "classifier"
SEGMENTS_PACKAGE = "segments"
PACKAGE_KINDS: dict[str, str] = {CLASSIFIER: CLASSIFIER_PACKAGE, CLUSTERING: SEGMENTS_PACKAGE}
"""The package format (``omniscore.kind`` tag, :attr:`LoadedModel.kind`) of each model kind."""


class IntegrityError(RuntimeError):
    """An artifact's SHA-256 differs from the one recorded when it was registered."""


# --- encoding -------------------------------------------------------------------------------
def encode_frame(
    frame: pd.DataFrame, feature_names: Sequence[str], vocabularies: dict[str, list[str]]
) -> np.ndarray:
    """Float matrix in model input order; strings become codes of a fixed vocabulary.

    A category outside the stored vocabulary (or a null) becomes NaN, which LightGBM treats
    as missing. Missing numeric columns are an error: the feature service must supply them.
    """
    missing = [n for n in feature_names if n not in frame.columns]
    if missing:
        raise KeyError(f"input lacks {len(missing)} model features, e.g. {missing[:5]}")
    out = np.empty((len(frame), len(feature_names)), dtype=np.float64)
    for j, name in enumerate(feature_names):
        col = frame[name]
        if name in vocabularies:
            codes = pd.Categorical(col, categories=vocabularies[name]).codes.astype(np.float64)
            codes[codes < 0] = np.nan
            out[:, j] = codes
        else:
            out[:, j] = pd.to_numeric(col, errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    return out


def vocabulary(values: pd.Series) -> list[str]:
    """Sorted distinct non-null strings of a training column (the stored vocabulary)."""
    return sorted(str(v) for v in pd.Series(values).dropna().unique())


# --- classifier package ---------------------------------------------------------------------
@lru_cache(maxsize=8)
def _percentile_grid(n: int) -> np.ndarray:
    """``n`` evenly spaced percentiles from 0 to 100 (read-only; shared between calls)."""
    grid = np.linspace(0, 100, n)
    grid.flags.writeable = False
    return grid


@dataclass
class ClassifierPackage:
    """A calibrated LightGBM classifier plus everything needed to score and explain with it."""

    booster: lgb.Booster
    feature_names: list[str]
    vocabularies: dict[str, list[str]]
    calibration: dict[str, float]
    score_quantiles: list[float]
    band_thresholds: list[float]
    cold_start: dict[str, float | str]
    info: dict[str, object] = field(default_factory=dict)
    threads: int = field(default=DEFAULT_LGBM_THREADS, compare=False)
    """LightGBM threads of this process's predictions (not saved: the settings decide)."""

    def encode(self, frame: pd.DataFrame) -> np.ndarray:
        """The model input matrix of a frame (see :func:`encode_frame`)."""
        return encode_frame(frame, self.feature_names, self.vocabularies)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Uncalibrated log-odds of the booster."""
        return self.booster.predict(self.encode(frame), raw_score=True, num_threads=self.threads)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Platt calibration of raw scores: ``sigmoid(a * raw + b)``."""
        z = self.calibration["a"] * np.asarray(raw, dtype=float) + self.calibration["b"]
        return 1.0 / (1.0 + np.exp(-z))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probability of the positive class per row."""
        return self.calibrate(self.raw_score(frame))

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """Per-feature SHAP contributions to the raw score, ``(n, n_features + 1)``.

        The last column is the base value; each row sums to :meth:`raw_score`.
        """
        return self.booster.predict(self.encode(frame), pred_contrib=True, num_threads=self.threads)

    def score_percentile(self, p: np.ndarray | float) -> np.ndarray:
        """Percentile (0-100) of calibrated probabilities in the training population."""
        q = np.asarray(self.score_quantiles)
        grid = _percentile_grid(len(q))
        # Interpolating on the percentile grid handles flat runs of tied quantiles.
        return np.interp(np.asarray(p, dtype=float), q, grid)

    def band(self, p: np.ndarray | float) -> np.ndarray:
        """``low`` / ``medium`` / ``high`` from the stored probability thresholds."""
        idx = np.searchsorted(np.asarray(self.band_thresholds), np.asarray(p, dtype=float), "right")
        return np.asarray(BANDS, dtype=object)[idx]

    def meta(self) -> dict:
        """Everything but the booster, as JSON-ready data."""
        return {
            "format": "omniscore-classifier/1",
            "feature_names": self.feature_names,
            "vocabularies": self.vocabularies,
            "calibration": self.calibration,
            "score_quantiles": self.score_quantiles,
            "band_thresholds": self.band_thresholds,
            "band_percentiles": list(BAND_PERCENTILES),
            "cold_start": self.cold_start,
            "info": self.info,
        }

    def save(self, directory: Path) -> list[Path]:
        """Write ``model.lgb`` (text) and ``omniscore.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        model_path = directory / CLASSIFIER_FILE
        self.booster.save_model(str(model_path), num_iteration=-1)
        meta_path = directory / CLASSIFIER_META
        meta_path.write_text(json.dumps(self.meta(), indent=1, sort_keys=True))
        return [model_path, meta_path]

    @classmethod
    def load(cls, directory: Path, threads: int = DEFAULT_LGBM_THREADS) -> ClassifierPackage:
        """Read a package written by :meth:`save` (the booster from its text file); it
        predicts with ``threads`` LightGBM threads."""
        directory = Path(directory)
        meta = json.loads((directory / CLASSIFIER_META).read_text())
        if meta.get("format") != "omniscore-classifier/1":
            raise ValueError(f"not an OmniScore classifier: format={meta.get('format')!r}")
        booster = lgb.Booster(model_file=str(directory / CLASSIFIER_FILE))
        return cls(
            booster=booster,
            feature_names=list(meta["feature_names"]),
            vocabularies={k: list(v) for k, v in meta["vocabularies"].items()},
            calibration=meta["calibration"],
            score_quantiles=meta["score_quantiles"],
            band_thresholds=meta["band_thresholds"],
            cold_start=meta["cold_start"],
            info=meta.get("info", {}),
            threads=threads,
        )


def fit_platt(raw: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Platt scaling: the logistic regression of labels on raw scores (nearly unregularised)."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e6, max_iter=1000).fit(np.asarray(raw).reshape(-1, 1), y)
    return {"method": "platt", "a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}


def population_stats(p: np.ndarray) -> tuple[list[float], list[float], dict[str, float | str]]:
    """Score quantiles (0..100), band thresholds and cold-start defaults of a population."""
    p = np.asarray(p, dtype=float)
    quantiles = np.percentile(p, np.arange(0, 101)).tolist()
    thresholds = [float(np.percentile(p, q)) for q in BAND_PERCENTILES]
    median = float(np.median(p))
    bands = np.asarray(BANDS, dtype=object)
    cold = {
        "probability": median,
        "percentile": 50.0,
        "band": str(bands[np.searchsorted(thresholds, median, "right")]),
    }
    return quantiles, thresholds, cold


# --- hashing --------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_hashes(directory: Path, files: Sequence[str]) -> dict[str, str]:
    """SHA-256 of each named model file of a package directory."""
    return {name: sha256_file(Path(directory) / name) for name in files}


def verify_hashes(directory: Path, recorded: dict[str, str]) -> None:
    """Raise :class:`IntegrityError` unless every recorded file hashes to its recorded value."""
    if not recorded:
        raise IntegrityError("the model version records no SHA-256: refusing to load it")
    for name, expected in recorded.items():
        path = Path(directory) / name
        if not path.exists():
            raise IntegrityError(f"artifact {name} is missing from the downloaded model")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"artifact {name} has SHA-256 {actual[:16]}…, but {expected[:16]}… was recorded"
            )


# --- writing packages with an MLmodel file --------------------------------------------------
def write_classifier_dir(
    package: ClassifierPackage, directory: Path, input_example: pd.DataFrame
) -> dict[str, str]:
    """A complete MLflow model directory for a classifier; returns the files' SHA-256.

    ``mlflow.lightgbm.save_model`` writes the Booster with ``Booster.save_model`` (text) and an
    ``MLmodel`` with signature and input example; the OmniScore metadata rides along.
    """
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / CLASSIFIER_META
        meta_path.write_text(json.dumps(package.meta(), indent=1, sort_keys=True))
        example = input_example[package.feature_names].head(5)
        signature = infer_signature(example, package.predict_proba(example))
        mlflow.lightgbm.save_model(
            package.booster,
            str(directory),
            signature=signature,
            input_example=example,
            pip_requirements=[f"lightgbm=={lgb.__version__}", "pandas", "numpy"],
            extra_files=[str(meta_path)],
        )
    # extra_files land under extra_files/; keep our copy beside the booster too.
    shutil.copy(Path(directory) / "extra_files" / CLASSIFIER_META, directory / CLASSIFIER_META)
    return package_hashes(directory, [CLASSIFIER_FILE, CLASSIFIER_META])


def write_segments_dir(
    model: SegmentModel, directory: Path, input_example: pd.DataFrame
) -> dict[str, str]:
    """A model directory for segments (JSON + MLmodel with signature); returns SHA-256s."""
    from mlflow.models import Model, infer_signature

    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    model.save(directory / SEGMENTS_FILE)
    example = input_example[model.features].head(5)
    ids, _ = model.assign(example)
    mlmodel = Model(signature=infer_signature(example, ids))
    mlmodel.metadata = {"omniscore_format": "omniscore-segments/1", "data": SEGMENTS_FILE}
    (directory / "input_example.json").write_text(example.to_json(orient="split", index=False))
    mlmodel.saved_input_example_info = {"artifact_path": "input_example.json", "type": "dataframe"}
    mlmodel.save(str(directory / "MLmodel"))
    return package_hashes(directory, [SEGMENTS_FILE])


# --- loading from the registry --------------------------------------------------------------
@dataclass
class LoadedModel:
    """A registered model version, ready to score: the serving side's only model object.

    Attributes: ``name`` (registered name), ``version``, ``kind`` (``classifier`` or
    ``segments``), ``feature_service`` (from the version's tags: fetch exactly these features),
    ``feature_names`` (model input order), ``cold_start`` (defaults for unknown customers:
    ``probability``/``percentile``/``band`` for classifiers, ``segment_id``/``segment_name``
    for segments), ``tags`` (all version tags), ``run_id`` (the run that trained it).
    """

    name: str
    version: str
    kind: str
    feature_service: str
    feature_names: list[str]
    cold_start: dict
    tags: dict[str, str]
    classifier: ClassifierPackage | None = None
    segments: SegmentModel | None = None
    run_id: str | None = None

    def _clf(self) -> ClassifierPackage:
        if self.classifier is None:
            raise TypeError(f"{self.name} is a {self.kind} model, not a classifier")
        return self.classifier

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities (classifiers)."""
        return self._clf().predict_proba(frame)

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw log-odds (classifiers)."""
        return self._clf().raw_score(frame)

    def contributions(self, frame: pd.DataFrame) -> np.ndarray:
        """``(n, n_features + 1)`` SHAP contributions; last column = base value (classifiers)."""
        return self._clf().contributions(frame)

    def score_percentile(self, p: np.ndarray | float) -> np.ndarray:
        """Percentile 0-100 of probabilities in the training population (classifiers)."""
        return self._clf().score_percentile(p)

    def band(self, p: np.ndarray | float) -> np.ndarray:
        """``low`` / ``medium`` / ``high`` per probability (classifiers)."""
        return self._clf().band(p)

    def assign(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Segment ids and names per row (segments)."""
        if self.segments is None:
            raise TypeError(f"{self.name} is a {self.kind} model, not a segmentation")
        return self.segments.assign(frame)


def _uri(target: Settings | str) -> str:
    return target.tracking_uri if isinstance(target, Settings) else str(target)


def registry_client(target: Settings | str):
    """An ``MlflowClient`` bound to a home's tracking and registry URI (no global state)."""
    from mlflow import MlflowClient

    uri = _uri(target)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def load_version(
    target: Settings | str, model_name: str, version: str | int, dst: Path | None = None
) -> LoadedModel:
    """Download one registered version, verify its SHA-256 tag and load it (see
    :func:`load_champion`)."""
    client = registry_client(target)
    mv = client.get_model_version(model_name, str(version))
    return _load(target, client, mv, dst)


def load_champion(
    target: Settings | str, model_name: str, alias: str = "champion", dst: Path | None = None
) -> LoadedModel:
    """Load the version an alias points to (``champion`` by default) from the registry.

    ``target`` is a :class:`Settings` (its ``tracking_uri``) or a tracking URI. The artifacts
    are downloaded (to ``dst`` or a temporary folder), every file's SHA-256 is checked against
    the version's ``omniscore.sha256`` tag (:class:`IntegrityError` otherwise), and the
    LightGBM text model or the segments JSON is read. ``model_name`` may also be a short name
    (``propensity``, ``churn``, ``segments``). A classifier predicts with the settings'
    ``lgbm_thread_count`` threads (the default, 2, when ``target`` is a URI).
    """
    client = registry_client(target)
    model_name = registered_name(model_name)
    mv = client.get_model_version_by_alias(model_name, alias)
    return _load(target, client, mv, dst)


def _load(target, client, mv, dst: Path | None) -> LoadedModel:
    import mlflow.artifacts

    uri = _uri(target)
    tags = dict(mv.tags or {})
    if SHA_TAG not in tags:
        run_tags = client.get_run(mv.run_id).data.tags if mv.run_id else {}
        tags.setdefault(SHA_TAG, run_tags.get(SHA_TAG, ""))
    recorded = json.loads(tags[SHA_TAG]) if tags.get(SHA_TAG) else {}
    own_tmp = dst is None
    folder = Path(tempfile.mkdtemp(prefix="omniscore-model-")) if own_tmp else Path(dst)
    try:
        # Resolve the storage location with our own client: a models:/ URI would be resolved
        # with the process-global registry URI, which need not be this home's.
        location = client.get_model_version_download_uri(mv.name, str(mv.version))
        path = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=location, dst_path=str(folder), tracking_uri=uri
            )
        )
        verify_hashes(path, recorded)
        kind = tags.get(KIND_TAG, CLASSIFIER_PACKAGE)
        if kind == SEGMENTS_PACKAGE:
            seg = SegmentModel.load(path / SEGMENTS_FILE)
            return LoadedModel(
                name=mv.name,
                version=str(mv.version),
                kind=kind,
                feature_service=tags.get(SERVICE_TAG) or contract(mv.name).feature_service,
                feature_names=seg.features,
                cold_start={
                    "segment_id": seg.default_segment,
                    "segment_name": seg.name_by_id[seg.default_segment],
                },
                tags=tags,
                segments=seg,
                run_id=mv.run_id,
            )
        threads = target.lgbm_thread_count if isinstance(target, Settings) else DEFAULT_LGBM_THREADS
        pkg = ClassifierPackage.load(path, threads)
        return LoadedModel(
            name=mv.name,
            version=str(mv.version),
            kind=CLASSIFIER_PACKAGE,
            feature_service=tags.get(SERVICE_TAG, ""),
            feature_names=pkg.feature_names,
            cold_start=dict(pkg.cold_start),
            tags=tags,
            classifier=pkg,
            run_id=mv.run_id,
        )
    finally:
        if own_tmp:
            shutil.rmtree(folder, ignore_errors=True)
