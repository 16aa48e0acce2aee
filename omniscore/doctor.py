"""``omniscore doctor``: which backend each component uses, and whether it answers.

It spans every component (Feast registry, online and offline store, MLflow tracking,
registry and artifacts, Optuna storage, the scoring service), so it lives at the end of the
import chain. Checks only read: an empty database or a missing SQLite file is reported, never
created. Every message passes through :func:`scrub`, so a password in a configured URL (or
echoed back in a driver's error) never reaches the output or the logs.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlparse

from data_layer.settings import ENV_VARS, Settings, redact
from feature_repo.catalog import VIEWS

TIMEOUT_SECONDS = 3.0
_SQL_SCHEMES = ("postgresql", "postgres", "mysql", "mssql", "oracle")


class Check(NamedTuple):
    """One component's answer: the backend in use, whether it answers, and what was seen."""

    component: str
    backend: str
    ok: bool
    detail: str


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credentials: URL passwords and ``password=`` options redacted, and
    every known secret string replaced, wherever it appears."""
    text = redact(str(text))
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def backends(settings: Settings) -> dict[str, str]:
    """The backend each component uses, described without credentials and without I/O."""
    from data_layer.feast_store import online_store_config, registry_config

    registry = registry_config(settings)
    online = online_store_config(settings)
    tracking = settings.tracking_uri
    if online["type"] == "sqlite":
        online_backend = f"sqlite {online['path']}"
    else:
        online_backend = f"{online.get('redis_type', 'redis')} {settings.online_store}"
    out = {
        "configuration": (
            f"profile {settings.profile}" if settings.profile else "environment + defaults"
        ),
        "feast registry": f"{registry['registry_type']} {registry['path']}",
        "online store": online_backend,
        "offline store": f"{settings.offline_store} (Parquet) {settings.features_dir}",
        "mlflow tracking": f"{_scheme(tracking)} {tracking}",
        "mlflow registry": f"{_scheme(tracking)} {tracking}",
        "mlflow artifacts": settings.mlflow_artifact_uri,
        "optuna storage": f"{_scheme(settings.optuna_storage_url)} {settings.optuna_storage_url}",
        "serving": f"bentoml {settings.serving_url}" if settings.serving_url else "not configured",
    }
    return {k: redact(v) for k, v in out.items()}


def doctor(settings: Settings, timeout: float = TIMEOUT_SECONDS) -> list[Check]:
    """Check every component of ``settings``; returns one :class:`Check` per component.

    ``ok`` is False only when a backend does not answer or cannot be read; a store that has
    not been created yet (nothing applied, nothing trained) is fine and says so. Each check
    gives up after ``timeout`` seconds of connecting.
    """
    secrets = settings.secrets()
    described = backends(settings)
    out = []
    for component, check in CHECKS.items():
        try:
            ok, detail = check(settings, timeout)
        except Exception as exc:  # a broken backend is a finding, not a crash of the doctor
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        detail = " ".join(str(detail).split())[:500]
        out.append(
            Check(component, scrub(described[component], secrets), ok, scrub(detail, secrets))
        )
    return out


def failures(checks: Iterable[Check]) -> list[Check]:
    """The checks that did not pass."""
    return [c for c in checks if not c.ok]


def format_checks(checks: Iterable[Check]) -> str:
    """Plain-text table of the checks (the CLI may draw its own)."""
    rows = [("component", "backend", "status", "detail")]
    rows += [(c.component, c.backend, "ok" if c.ok else "FAIL", c.detail) for c in checks]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows)


# --- individual checks: (ok, detail) ------------------------------------------------------------
Result = tuple[bool, str]


def check_configuration(settings: Settings, timeout: float) -> Result:
    """Where the backend choices come from: environment variables, a profile, or defaults."""
    set_vars = [var for var in ENV_VARS.values() if os.environ.get(var)]
    return True, f"home {settings.home}; environment sets {', '.join(set_vars) or 'nothing'}"


def check_feast_registry(settings: Settings, timeout: float) -> Result:
    """The Feast registry (file or SQL) answers; how much is registered in the project."""
    from data_layer.feast_store import feature_store, registry_config

    config = registry_config(settings)
    path, project = config["path"], settings.feast_project
    if config["registry_type"] == "sql":
        tables = _sql_tables(path, timeout)
        if tables is None:
            return True, "SQLite file not created yet (run `omniscore features apply`)"
        if "feature_views" not in tables:
            return True, "answers; no Feast tables yet (run `omniscore features apply`)"
        query = "SELECT count(*) FROM {} WHERE project_id = :p"
        views = _sql_count(path, query.format("feature_views"), timeout, p=project)
        services = _sql_count(path, query.format("feature_services"), timeout, p=project)
        return True, f"answers; project {project}: {views} feature views, {services} services"
    if "://" not in path and not Path(path).exists():
        return True, "not applied yet (run `omniscore features apply`)"
    store = feature_store(settings)
    views = store.list_feature_views(allow_cache=False)
    services = store.list_feature_services()
    return (
        True,
        f"readable; project {project}: {len(views)} feature views, {len(services)} services",
    )


def check_online_store(settings: Settings, timeout: float) -> Result:
    """The online store (SQLite file or Redis) answers."""
    from data_layer.feast_store import online_store_config

    config = online_store_config(settings)
    if config["type"] == "sqlite":
        path = Path(config["path"])
        if not path.exists():
            return True, "not created yet (apply creates it)"
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=timeout)
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
        finally:
            conn.close()
        tables = [n for n in names if n.startswith(f"{settings.feast_project}_")]
        return True, f"readable; {len(tables)} view tables of project {settings.feast_project}"
    client = redis_client(config, timeout)
    try:
        client.ping()
        info = client.info("server")
        version = info.get("redis_version", "?") if isinstance(info, dict) else "?"
    finally:
        client.close()
    ttl = config.get("key_ttl_seconds")
    return True, f"PING ok; server {version}; key TTL {f'{ttl / 86400:g} days' if ttl else 'none'}"


def check_offline_store(settings: Settings, timeout: float) -> Result:
    """The offline store: the Parquet snapshot files Feast's file source reads."""
    from feature_repo.data_sources import snapshot_path

    folder = settings.features_dir
    if not folder.exists():
        return True, "no snapshots yet (run `omniscore features build`)"
    if not os.access(folder, os.R_OK | os.X_OK):
        return False, "folder is not readable"
    present = [v for v in VIEWS if snapshot_path(settings.features_dir, v).exists()]
    return True, f"{len(present)} of {len(VIEWS)} view snapshot files"


def check_mlflow_tracking(settings: Settings, timeout: float) -> Result:
    """The MLflow tracking store (SQLite, a database, or a tracking server) answers."""
    uri = settings.tracking_uri
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        return _http_check(uri.rstrip("/") + "/health", timeout)
    if scheme != "sqlite" and scheme not in _SQL_SCHEMES:
        return True, "backend not probed by doctor"
    tables = _sql_tables(uri, timeout)
    if tables is None:
        return True, "not created yet (the first run creates it)"
    if "experiments" not in tables:
        return True, "answers; empty database (MLflow creates its tables on first use)"
    experiments = _sql_count(uri, "SELECT count(*) FROM experiments", timeout)
    runs = _sql_count(uri, "SELECT count(*) FROM runs", timeout)
    return True, f"answers; {experiments} experiments, {runs} runs"


def check_mlflow_registry(settings: Settings, timeout: float) -> Result:
    """The MLflow model registry (same URI as tracking): registered models and champions."""
    uri = settings.tracking_uri
    scheme = _scheme(uri)
    if scheme in ("http", "https"):
        from mlflow import MlflowClient

        models = MlflowClient(uri, uri).search_registered_models(max_results=100)
        champions = [
            (m.name, m.aliases["champion"]) for m in models if "champion" in (m.aliases or {})
        ]
        return True, _registry_detail(len(models), champions)
    if scheme != "sqlite" and scheme not in _SQL_SCHEMES:
        return True, "backend not probed by doctor"
    tables = _sql_tables(uri, timeout)
    if tables is None or "registered_models" not in tables:
        return True, "no registered models yet"
    models = _sql_count(uri, "SELECT count(*) FROM registered_models", timeout)
    champions = _sql_rows(
        uri,
        "SELECT name, version FROM registered_model_aliases WHERE alias = 'champion' ORDER BY name",
        timeout,
    )
    return True, _registry_detail(models, champions)


def _registry_detail(models: int, champions: list[tuple]) -> str:
    named = ", ".join(f"{name}@champion=v{version}" for name, version in champions)
    return f"{models} registered models; {named or 'no champion yet'}"


def check_mlflow_artifacts(settings: Settings, timeout: float) -> Result:
    """Where new experiments keep artifacts: a writable local folder, or an object store."""
    if not settings.mlflow_artifact_uri.startswith("file://"):
        return True, "object store: not probed (its client's own credentials apply)"
    folder = settings.mlflow_artifacts_dir
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is None or not os.access(existing, os.W_OK):
        return False, f"{existing} is not writable"
    return True, f"writable; {'exists' if folder.exists() else 'created on first run'}"


def check_optuna_storage(settings: Settings, timeout: float) -> Result:
    """The Optuna study storage answers; studies and trials still RUNNING."""
    url = settings.optuna_storage_url
    tables = _sql_tables(url, timeout)
    if tables is None:
        return True, "not created yet (the first tuning creates it)"
    if "studies" not in tables:
        return True, "answers; no Optuna tables yet"
    studies = _sql_count(url, "SELECT count(*) FROM studies", timeout)
    running = _sql_count(url, "SELECT count(*) FROM trials WHERE state = 'RUNNING'", timeout)
    return True, f"answers; {studies} studies, {running} trials running"


def check_serving(settings: Settings, timeout: float) -> Result:
    """The scoring service's ``/readyz``, when ``serving_url`` is configured."""
    if not settings.serving_url:
        return True, "set OMNISCORE_SERVING_URL to check a running service"
    return _http_check(settings.serving_url.rstrip("/") + "/readyz", timeout)


CHECKS: dict[str, Callable[[Settings, float], Result]] = {
    "configuration": check_configuration,
    "feast registry": check_feast_registry,
    "online store": check_online_store,
    "offline store": check_offline_store,
    "mlflow tracking": check_mlflow_tracking,
    "mlflow registry": check_mlflow_registry,
    "mlflow artifacts": check_mlflow_artifacts,
    "optuna storage": check_optuna_storage,
    "serving": check_serving,
}
"""Every component the doctor checks, in the order it reports them."""


# --- probes -------------------------------------------------------------------------------------
def redis_client(config: dict, timeout: float):
    """A redis-py client for a Feast Redis config, with connect and read timeouts."""
    import redis

    parts = config["connection_string"].split(",")
    options = dict(p.split("=", 1) for p in parts if "=" in p)
    hosts = [p.rsplit(":", 1) for p in parts if "=" not in p]
    common = {
        "password": options.get("password"),
        "username": options.get("username"),
        "ssl": options.get("ssl", "false").lower() == "true",
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
    }
    if config.get("redis_type") == "redis_cluster":
        from redis.cluster import ClusterNode, RedisCluster

        nodes = [ClusterNode(h, int(p)) for h, p in hosts]
        return RedisCluster(startup_nodes=nodes, **common)
    host, port = hosts[0]
    return redis.Redis(host=host, port=int(port), db=int(options.get("db", 0)), **common)


def _scheme(url: str) -> str:
    return urlparse(url).scheme.split("+", 1)[0] if "://" in url else "file"


def _engine(url: str, timeout: float):
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    args = {} if _scheme(url) == "sqlite" else {"connect_timeout": max(1, int(timeout))}
    return create_engine(url, connect_args=args, poolclass=NullPool)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLAlchemy SQLite URL (``sqlite:///rel.db``, ``sqlite:////abs.db``)."""
    path = unquote(urlparse(url).path)[1:]
    return None if path in ("", ":memory:") else Path(path)


def _sql_tables(url: str, timeout: float) -> set[str] | None:
    """Table names of a database; None for a SQLite file that does not exist (not created)."""
    from sqlalchemy import inspect

    if _scheme(url) == "sqlite":
        path = _sqlite_file(url)
        if path is None or not path.exists():
            return None
    engine = _engine(url, timeout)
    try:
        with engine.connect() as conn:
            return set(inspect(conn).get_table_names())
    finally:
        engine.dispose()


def _sql_rows(url: str, sql: str, timeout: float, **params) -> list[tuple]:
    from sqlalchemy import text

    engine = _engine(url, timeout)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(text(sql), params)]
    finally:
        engine.dispose()


def _sql_count(url: str, sql: str, timeout: float, **params) -> int:
    return int(_sql_rows(url, sql, timeout, **params)[0][0])


def _http_check(url: str, timeout: float) -> Result:
    import httpx

    response = httpx.get(url, timeout=timeout)
    return response.status_code == 200, f"GET {urlparse(url).path} -> {response.status_code}"
