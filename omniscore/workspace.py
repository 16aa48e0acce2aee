"""A ready-to-explore home for the notebooks: build what is missing, reuse what is there.

Each notebook under ``notebooks/`` starts with :func:`ensure_home`. On an empty
``$OMNISCORE_HOME`` it runs the stages of ``omniscore demo`` at a small size (generate,
features build, feast apply, materialize, train with few trials, promote through the gate);
on a home that already holds them it only reports what it found. A notebook therefore runs
on a fresh machine, re-runs in seconds, and the test suite can hand all three notebooks one
shared home. The size comes from ``OMNISCORE_NB_*`` variables (:class:`WorkspaceSize`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

from data_layer.settings import DEFAULT_HOME, Settings
from feature_repo.catalog import VIEWS

MODELS: tuple[str, ...] = ("propensity", "churn", "segments")
ENV_PREFIX = "OMNISCORE_NB_"


@dataclass(frozen=True)
class WorkspaceSize:
    """How large a world to simulate when the home is empty, and how hard to train on it.

    Read from ``OMNISCORE_NB_CUSTOMERS``, ``OMNISCORE_NB_DAYS``, ``OMNISCORE_NB_TRIALS``,
    ``OMNISCORE_NB_SEED`` and ``OMNISCORE_NB_MIN_CLASS`` by :meth:`from_env`.
    """

    customers: int = 600
    days: int = 300
    trials: int = 3
    seed: int = 7
    min_class: int = 20
    """Fewest training rows of either class: a small world needs a lower bar than the
    production default (100), or propensity and churn refuse to train."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkspaceSize:
        """Sizes from the ``OMNISCORE_NB_*`` variables, defaults for the unset ones."""
        env = os.environ if env is None else env
        values: dict[str, int] = {}
        for f in fields(cls):
            var = ENV_PREFIX + f.name.upper()
            raw = env.get(var, "").strip()
            if not raw:
                continue
            try:
                values[f.name] = int(raw)
            except ValueError as exc:
                raise ValueError(f"{var}={raw!r} is not a whole number") from exc
            if values[f.name] < 1:
                raise ValueError(f"{var} must be at least 1, got {raw}")
        return cls(**values)


def workspace_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings of the home a notebook works in.

    ``$OMNISCORE_HOME`` when set; otherwise the checkout's ``./data`` (the home of
    ``make demo``), whatever folder Jupyter was started in. Backend variables apply as
    everywhere (:meth:`Settings.from_env`).
    """
    env = os.environ if env is None else env
    home = env.get("OMNISCORE_HOME") or None
    if home is None:
        checkout = Path(__file__).resolve().parents[1]
        if (checkout / "pyproject.toml").exists():
            home = str(checkout / DEFAULT_HOME)
    return Settings.from_env(home, env=env)


@dataclass
class HomeReport:
    """What :func:`ensure_home` found in a home and which stages it had to run."""

    home: Path
    built: list[str] = field(default_factory=list)
    """Stages run, in order (``generate``, ``features``, ``apply``, ``materialize``,
    ``train <model>``, ``promote <model>``); empty when the home was complete."""
    champions: dict[str, str | None] = field(default_factory=dict)
    """Champion version of each requested model (None when the gate refused it)."""
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a notebook's output."""
        what = ", ".join(self.built) if self.built else "nothing (the home was ready)"
        line = f"home {self.home}: built {what} in {self.seconds:.1f} s"
        if self.champions:
            line += "; champions: " + ", ".join(
                f"{m} v{v}" if v else f"{m} (none)" for m, v in self.champions.items()
            )
        return line


def _snapshots_exist(settings: Settings) -> bool:
    from feature_repo.data_sources import snapshot_path

    return all(snapshot_path(settings.features_dir, view).exists() for view in VIEWS)


def _registry_exists(settings: Settings) -> bool:
    path = settings.feast_registry_path
    # A SQL registry cannot be checked by a file: apply is idempotent, so apply again.
    return "://" not in path and Path(path).exists()


def _online_store_exists(settings: Settings) -> bool:
    return settings.online_store == "sqlite" and settings.online_store_path.exists()


def ensure_home(
    settings: Settings,
    size: WorkspaceSize | None = None,
    models: Sequence[str] = MODELS,
    log: Callable[[str], None] = print,
) -> HomeReport:
    """Build whatever the home lacks for the notebooks, then say what is there.

    Stages run only when their output is missing: ``generate`` (no events), ``features``
    (no snapshot files; the default 40 weekly snapshots), ``apply`` (no Feast registry),
    ``materialize`` (no online store, or new snapshots), then for each of ``models`` with no
    registered version ``train`` (``size.trials`` trials, ``size.min_class``) and, for a model
    without a champion, ``promote`` through the normal gate. ``size`` defaults to
    :meth:`WorkspaceSize.from_env`. Returns a :class:`HomeReport`.
    """
    from data_layer.event_store import event_files
    from data_layer.feast_store import apply, materialize
    from data_layer.feature_pipeline import build_features
    from data_layer.synthetic import generate, write_generated
    from training.registry import describe, promote
    from training.train import train_model

    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise ValueError(f"unknown models {unknown}; choose among {MODELS}")
    size = size or WorkspaceSize.from_env()
    started = time.perf_counter()
    report = HomeReport(home=settings.home)

    def stage(name: str) -> None:
        report.built.append(name)
        log(f"[{time.perf_counter() - started:6.1f} s] {name}")

    settings.ensure_dirs()
    if not event_files(settings):
        stage(f"generate ({size.customers} customers, {size.days} days, seed {size.seed})")
        write_generated(settings, generate(size.customers, size.days, size.seed))
    fresh_features = not _snapshots_exist(settings)
    if fresh_features:
        stage("features")
        build_features(settings)
    if fresh_features or not _registry_exists(settings):
        stage("apply")
        apply(settings)
    if fresh_features or not _online_store_exists(settings):
        stage("materialize")
        materialize(settings)
    for model in models:
        state = describe(settings, model)
        if not state["versions"]:
            stage(f"train {model} ({size.trials} trials)")
            train_model(
                settings, model, trials=size.trials, seed=size.seed, min_class=size.min_class
            )
            state = describe(settings, model)
        if state["champion"] is None:
            stage(f"promote {model}")
            decision = promote(settings, model)
            if not decision.promoted:
                log(f"  {model}: the gate kept no champion: {decision.reason}")
            state = describe(settings, model)
        report.champions[model] = state["champion"]
    report.seconds = time.perf_counter() - started
    log(report.summary())
    return report
