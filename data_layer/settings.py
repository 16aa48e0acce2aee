"""Paths and backend settings for one OmniScore home.

All state lives under ``$OMNISCORE_HOME`` (default ``./data``). Importing this module does
nothing: callers build a :class:`Settings` explicitly (``Settings.from_env()``) and create
folders only when they write.

Which backend each component uses is said in one place, with this precedence:

1. environment variables (:data:`ENV_VARS`);
2. the profile file ``$OMNISCORE_HOME/omniscore.toml`` (or ``$OMNISCORE_PROFILE``), whose
   keys are the :class:`Settings` field names and whose values may use ``${VAR}`` so that
   passwords stay in the environment, never in the file;
3. the embedded defaults (SQLite, Parquet and files under the home).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

DEFAULT_HOME = "data"
FEATURE_REPO_DIR = Path(__file__).resolve().parents[1] / "feature_repo"
PROFILE_NAME = "omniscore.toml"
"""The profile file read from the home (``$OMNISCORE_PROFILE`` names another file)."""
ENV_VARS: dict[str, str] = {
    "mlflow_tracking_uri": "MLFLOW_TRACKING_URI",
    "mlflow_artifacts": "OMNISCORE_MLFLOW_ARTIFACTS",
    "optuna_storage": "OMNISCORE_OPTUNA_STORAGE",
    "online_store": "OMNISCORE_ONLINE_STORE",
    "offline_store": "OMNISCORE_OFFLINE_STORE",
    "feast_registry": "OMNISCORE_FEAST_REGISTRY",
    "feast_project": "OMNISCORE_FEAST_PROJECT",
    "serving_url": "OMNISCORE_SERVING_URL",
    "optuna_heartbeat_seconds": "OMNISCORE_OPTUNA_HEARTBEAT_SECONDS",
    "optuna_grace_seconds": "OMNISCORE_OPTUNA_GRACE_SECONDS",
    "lgbm_threads": "OMNISCORE_LGBM_THREADS",
    "future_tolerance_seconds": "OMNISCORE_FUTURE_TOLERANCE_SECONDS",
    "stream_name": "OMNISCORE_STREAM",
    "stream_redis": "OMNISCORE_STREAM_REDIS",
    "build_memory_mb": "OMNISCORE_BUILD_MEMORY_MB",
    "spark_master": "OMNISCORE_SPARK_MASTER",
    "score_log": "OMNISCORE_SCORE_LOG",
    "score_log_retention_days": "OMNISCORE_SCORE_LOG_RETENTION_DAYS",
    "monitor_feature_drift_share": "OMNISCORE_MONITOR_FEATURE_DRIFT_SHARE",
    "monitor_group_drift_ratio": "OMNISCORE_MONITOR_GROUP_DRIFT_RATIO",
    "monitor_score_psi": "OMNISCORE_MONITOR_SCORE_PSI",
    "monitor_segment_share_shift": "OMNISCORE_MONITOR_SEGMENT_SHARE_SHIFT",
    "monitor_segment_ari": "OMNISCORE_MONITOR_SEGMENT_ARI",
    "monitor_expected_auc_drop": "OMNISCORE_MONITOR_EXPECTED_AUC_DROP",
    "triggers": "OMNISCORE_TRIGGERS",
    "trigger_stream": "OMNISCORE_TRIGGER_STREAM",
    "trigger_redis": "OMNISCORE_TRIGGER_REDIS",
    "trigger_thresholds": "OMNISCORE_TRIGGER_THRESHOLDS",
    "trigger_webhooks": "OMNISCORE_TRIGGER_WEBHOOKS",
}
"""Environment variable of each backend setting; a set variable wins over the profile."""
OPTUNA_HEARTBEAT_SECONDS = 30
OPTUNA_GRACE_SECONDS = 90
DEFAULT_LGBM_THREADS = 2
"""LightGBM threads per process when ``lgbm_threads`` is not set (the benchmark machine's
cores)."""
FUTURE_TOLERANCE_SECONDS = 300
STREAM_NAME = "omniscore:events"
TRIGGER_STREAM = "omniscore:score-changes"
TRIGGERS = "propensity,churn,segments"
SCORE_LOG_RETENTION_DAYS = 400
_INT_SETTINGS = frozenset(
    {
        "optuna_heartbeat_seconds",
        "optuna_grace_seconds",
        "future_tolerance_seconds",
        "lgbm_threads",
        "build_memory_mb",
        "score_log_retention_days",
    }
)
"""Settings that are whole numbers; the profile may write them as TOML integers."""
_FLOAT_SETTINGS = frozenset(
    {
        "monitor_feature_drift_share",
        "monitor_group_drift_ratio",
        "monitor_score_psi",
        "monitor_segment_share_shift",
        "monitor_segment_ari",
        "monitor_expected_auc_drop",
    }
)
"""Settings that are decimal numbers (the monitor's thresholds)."""
BUILD_MEMORY_MB = 3072
"""Default memory budget of a feature build (MB): under the 4 GB the issue allows at 100k."""
SPARK_MASTER = "local[2]"
"""Default Spark master: local mode on this machine's two cores."""
_DEFAULTS = {"online_store": "sqlite", "offline_store": "duckdb", "feast_project": "omniscore"}
OFFLINE_STORES = ("duckdb", "file")
"""Feast offline stores over the Parquet snapshots: ``duckdb`` (Feast's DuckDB store, SQL
point-in-time joins) or ``file`` (Feast's Dask store, about 15 times slower at 100k
customers)."""
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The password runs to the last "@" of the token, as urlparse reads an unencoded "@" in it.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)\S*(?=@)")
_OPTION_SECRET = re.compile(
    r"(?P<head>\b(?:password|passwd|pwd|secret|token|api_key|access_key)=)[^,&;\s]*", re.I
)


def redact(text: str) -> str:
    """``text`` with every credential replaced by ``***``, safe to print or log.

    Covers passwords in URLs (``postgresql://user:secret@host/db``, ``redis://:secret@host``)
    and ``password=...``-style options (Feast's Redis connection string, query strings).
    """
    text = _URL_PASSWORD.sub(r"\g<head>***", text)
    return _OPTION_SECRET.sub(r"\g<head>***", text)


def url_secrets(value: str | None) -> list[str]:
    """The secret strings inside one configured URL (its password, raw and decoded)."""
    if not value:
        return []
    found: list[str] = []
    if "://" in value:
        try:
            password = urlparse(value).password
        except ValueError:
            password = None
        if password:
            found += [password, unquote(password)]
    found += [m.group(0).split("=", 1)[1] for m in _OPTION_SECRET.finditer(value)]
    return [s for s in dict.fromkeys(found) if s]


def load_profile(path: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Backend settings from a TOML profile: keys are :class:`Settings` field names.

    ``${VAR}`` in a value is replaced by the environment variable ``VAR``, so the file can be
    committed without its passwords. Unknown keys and unset variables raise ``ValueError``.
    """
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"profile {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(data) - set(ENV_VARS))
    if unknown:
        raise ValueError(f"profile {path}: unknown keys {unknown}; known: {sorted(ENV_VARS)}")
    out = {}
    for key, value in data.items():
        if key in _INT_SETTINGS and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            kind = "a whole number" if key in _INT_SETTINGS else "a string"
            raise ValueError(f"profile {path}: {key} must be {kind}")

        def expand(match: re.Match, key: str = key) -> str:
            name = match.group(1)
            if name not in env:
                raise ValueError(f"profile {path}: {key} uses ${{{name}}}, which is not set")
            return env[name]

        out[key] = _VAR.sub(expand, value)
    return out


def _whole_number(key: str, text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        unit = "" if key == "lgbm_threads" else " of seconds"
        raise ValueError(
            f"{key} ({ENV_VARS[key]}) must be a whole number{unit}, got {text!r}"
        ) from None


@dataclass(frozen=True)
class Settings:
    """Where one OmniScore home keeps its state, and which backend each component uses."""

    home: Path
    mlflow_tracking_uri: str | None = None
    optuna_storage: str | None = None
    online_store: str = "sqlite"
    offline_store: str = "duckdb"
    """Feast offline store reading the Parquet snapshots (one of :data:`OFFLINE_STORES`)."""
    feast_registry: str | None = None
    feast_project: str = "omniscore"
    mlflow_artifacts: str | None = None
    """Artifact root for new MLflow experiments: a local (shared) folder or an object-store
    URI such as ``s3://bucket/omniscore``; default ``<home>/mlartifacts``."""
    serving_url: str | None = None
    """Base URL of a running scoring service, checked by ``omniscore doctor`` when set."""
    optuna_heartbeat_seconds: int = OPTUNA_HEARTBEAT_SECONDS
    """Seconds between the heartbeats a running Optuna trial records in the study storage."""
    optuna_grace_seconds: int = OPTUNA_GRACE_SECONDS
    """A running trial whose last heartbeat is older than this is failed and re-queued (its
    worker is taken for dead); must exceed the heartbeat interval."""
    future_tolerance_seconds: int = FUTURE_TOLERANCE_SECONDS
    """Live events (``POST /events``, ``omniscore stream``) stamped more than this many
    seconds after the clock are rejected as from the future (clock skew is tolerated)."""
    stream_name: str = STREAM_NAME
    """Redis Stream that ``omniscore stream`` consumes canonical events from."""
    stream_redis: str | None = None
    """Redis URL of that stream (``redis://host:port/db``); default: the online store's
    Redis when it is one."""
    lgbm_threads: int | None = None
    """LightGBM threads of each training or tuning process (``OMNISCORE_LGBM_THREADS``).
    Unset: :data:`DEFAULT_LGBM_THREADS`, and ``train --workers N`` splits the cores between
    its processes. On cores busy with other work one thread is often faster, as OpenMP
    threads wait on each other."""
    build_memory_mb: int = BUILD_MEMORY_MB
    """Memory budget of one feature build process (``OMNISCORE_BUILD_MEMORY_MB``): the build
    splits customers into as many hash partitions as keep one partition's working set under
    it (:mod:`data_layer.partitioned_build`)."""
    spark_master: str = SPARK_MASTER
    """Spark master URL of ``--engine spark`` (``OMNISCORE_SPARK_MASTER``; local mode by
    default, ``spark://host:7077`` or ``yarn`` on a cluster)."""
    score_log: str | None = None
    """Where every served score is recorded (:mod:`data_layer.score_log`): unset or
    ``sqlite`` for ``<home>/score_log.db``, a ``postgresql://`` URL, or ``off``."""
    score_log_retention_days: int = SCORE_LOG_RETENTION_DAYS
    """Days of scores the score log keeps, counted back from the newest score logged."""
    monitor_feature_drift_share: float = 0.3
    """``omniscore monitor`` alarm: share of a model's features that drifted (Evidently's
    per-column test) above which feature drift is flagged."""
    monitor_group_drift_ratio: float = 2.0
    """Alarm: a signal family and channel (``channel_activity/store``) of at least three
    features, at least half of them drifted, whose mean distance from the reference is at
    least this many times its mean seasonal range (what its features moved by themselves
    before the reference). One channel moving alone is flagged even when it is a small share
    of a model's features."""
    monitor_score_psi: float = 0.2
    """Alarm: population stability index of the scores against the training reference."""
    monitor_segment_share_shift: float = 0.1
    """Alarm: the largest change of a segment's share of customers (absolute)."""
    monitor_segment_ari: float = 0.5
    """Alarm below: adjusted Rand index of a re-fit on current data against the served
    assignment."""
    monitor_expected_auc_drop: float = 0.05
    """Alarm: drop of the label-free expected AUC from the reference's."""
    triggers: str = TRIGGERS
    """Which changes publish a score-change message (:mod:`serving.triggers`): a comma list
    of ``propensity`` and ``churn`` (a band boundary crossed) and ``segments`` (another
    segment), or ``off``."""
    trigger_stream: str = TRIGGER_STREAM
    """Redis Stream the score-change messages are appended to."""
    trigger_redis: str | None = None
    """Redis URL of that stream; default: the event stream's (``stream_redis``), else a Redis
    online store's. With none, triggers are off."""
    trigger_thresholds: str | None = None
    """Band boundaries on the 0-100 score for triggers, e.g. ``70,90`` (low below 70, medium
    to 90, high above); unset: the bands the models serve (the same 70th and 90th
    percentiles)."""
    trigger_webhooks: str | None = None
    """URLs (comma separated) each score-change message is also POSTed to, from a background
    worker with retries and backoff; a URL that keeps failing is parked with its reason."""
    profile: Path | None = None
    """The profile file these settings were read from, if any."""

    def __post_init__(self) -> None:
        if self.future_tolerance_seconds < 0:
            raise ValueError(
                f"future_tolerance_seconds ({ENV_VARS['future_tolerance_seconds']}) must be 0 "
                f"or more, got {self.future_tolerance_seconds}"
            )
        if self.offline_store not in OFFLINE_STORES:
            raise ValueError(
                f"offline_store ({ENV_VARS['offline_store']}) must be one of {OFFLINE_STORES}, "
                f"got {self.offline_store!r}"
            )
        beat, grace = self.optuna_heartbeat_seconds, self.optuna_grace_seconds
        if beat <= 0:
            raise ValueError(
                f"optuna_heartbeat_seconds ({ENV_VARS['optuna_heartbeat_seconds']}) must be "
                f"positive, got {beat}"
            )
        if grace <= beat:
            raise ValueError(
                f"optuna_grace_seconds ({ENV_VARS['optuna_grace_seconds']}) = {grace} must be "
                f"greater than optuna_heartbeat_seconds = {beat}: a live worker's trial would "
                "be failed between two of its heartbeats"
            )
        if self.build_memory_mb < 1:
            raise ValueError(
                f"build_memory_mb ({ENV_VARS['build_memory_mb']}) must be at least 1, "
                f"got {self.build_memory_mb}"
            )
        if self.score_log_retention_days < 1:
            raise ValueError(
                f"score_log_retention_days ({ENV_VARS['score_log_retention_days']}) must be "
                f"at least 1, got {self.score_log_retention_days}"
            )
        if self.lgbm_threads is not None and self.lgbm_threads < 1:
            raise ValueError(
                f"lgbm_threads ({ENV_VARS['lgbm_threads']}) must be at least 1, "
                f"got {self.lgbm_threads}"
            )

    @property
    def lgbm_thread_count(self) -> int:
        """LightGBM threads this process uses: ``lgbm_threads`` or the default (2)."""
        return self.lgbm_threads or DEFAULT_LGBM_THREADS

    @classmethod
    def from_env(
        cls, home: str | os.PathLike | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from the environment and the home's profile; ``home`` overrides
        ``$OMNISCORE_HOME``. ``env`` defaults to ``os.environ``.

        Also makes this process's feature catalog the home's: the built-in features plus the
        extra profile features the home declares (``omniscore ingest-customers``;
        :func:`feature_repo.catalog.use_profile_extras`)."""
        env = os.environ if env is None else env
        root = Path(home or env.get("OMNISCORE_HOME") or DEFAULT_HOME).resolve()
        path = Path(env["OMNISCORE_PROFILE"]) if env.get("OMNISCORE_PROFILE") else None
        if path is None and (root / PROFILE_NAME).is_file():
            path = root / PROFILE_NAME
        if path is not None and not path.is_file():
            raise ValueError(f"OMNISCORE_PROFILE={path} does not exist")
        values = load_profile(path, env) if path is not None else {}
        for key, var in ENV_VARS.items():
            if env.get(var):
                values[key] = env[var]
        values: dict[str, object] = {k: v for k, v in values.items() if v}
        for key in _INT_SETTINGS & set(values):
            values[key] = _whole_number(key, str(values[key]))
        for key in _FLOAT_SETTINGS & set(values):
            try:
                values[key] = float(values[key])
            except ValueError:
                raise ValueError(f"{key} must be a number, got {values[key]!r}") from None
        settings = cls(home=root, profile=path, **{**_DEFAULTS, **values})
        # The home's declared extra profile features join this process's feature catalog here,
        # where every command, training job and service builds its settings.
        from data_layer.event_store import read_profile_extras  # it imports this module
        from feature_repo.catalog import use_profile_extras

        use_profile_extras(read_profile_extras(settings))
        return settings

    # --- canonical data ---------------------------------------------------------------
    @property
    def events_dir(self) -> Path:
        """Canonical event store: Parquet files, one per ingest or generate batch."""
        return self.home / "events"

    @property
    def quarantine_dir(self) -> Path:
        """Rejected input rows, each with the reason it was rejected."""
        return self.home / "quarantine"

    @property
    def customers_path(self) -> Path:
        """Profile table: one row per customer (signup date, region, age band, ...)."""
        return self.home / "customers.parquet"

    @property
    def ground_truth_dir(self) -> Path:
        """Simulator truth the models never see (archetypes, latent probabilities)."""
        return self.home / "ground_truth"

    # --- features -----------------------------------------------------------------------
    @property
    def features_dir(self) -> Path:
        """Point-in-time feature snapshots, one Parquet file per feature view."""
        return self.home / "features"

    @property
    def feast_dir(self) -> Path:
        """Feast registry and the embedded SQLite online store."""
        return self.home / "feast"

    @property
    def feast_registry_path(self) -> str:
        """Feast registry: a local file by default, or a SQL URL for a shared registry."""
        return self.feast_registry or str(self.feast_dir / "registry.db")

    @property
    def online_store_path(self) -> Path:
        """SQLite online store file (used when ``online_store`` is ``sqlite``)."""
        return self.feast_dir / "online_store.db"

    # --- training -----------------------------------------------------------------------
    @property
    def tracking_uri(self) -> str:
        """MLflow tracking and registry URI (``MLFLOW_TRACKING_URI`` wins)."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_artifacts_dir(self) -> Path:
        """Local folder where MLflow keeps artifacts of experiments created under this home.

        Raises ``ValueError`` when the artifact root is an object-store URI (use
        :attr:`mlflow_artifact_uri`).
        """
        root = self.mlflow_artifacts
        if not root:
            return self.home / "mlartifacts"
        if root.startswith("file://"):
            return Path(unquote(urlparse(root).path))
        if "://" in root:
            raise ValueError(f"artifact root {redact(root)} is not a local folder")
        return Path(root).expanduser().resolve()

    @property
    def mlflow_artifact_uri(self) -> str:
        """Artifact root URI for new MLflow experiments (``file://`` or an object store)."""
        root = self.mlflow_artifacts
        if root and "://" in root and not root.startswith("file://"):
            return root.rstrip("/")
        return self.mlflow_artifacts_dir.as_uri()

    @property
    def optuna_storage_url(self) -> str:
        """Optuna study storage (SQLite for one process, PostgreSQL for many workers)."""
        return self.optuna_storage or f"sqlite:///{self.home / 'optuna.db'}"

    def ensure_dirs(self) -> None:
        """Create the home's folders; called by commands that write, never on import."""
        for path in (
            self.home,
            self.events_dir,
            self.quarantine_dir,
            self.ground_truth_dir,
            self.features_dir,
            self.feast_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)
        if self.mlflow_artifact_uri.startswith("file://"):
            self.mlflow_artifacts_dir.mkdir(parents=True, exist_ok=True)

    def secrets(self) -> list[str]:
        """Every password found in the configured URLs (for scrubbing messages)."""
        values = (self.mlflow_tracking_uri, self.optuna_storage, self.online_store,
                  self.feast_registry, self.mlflow_artifacts, self.serving_url,
                  self.stream_redis, self.score_log, self.trigger_redis)  # fmt: skip
        return [s for v in values for s in url_secrets(v)]
