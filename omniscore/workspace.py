"""A ready-to-explore home for the notebooks: build what is missing, reuse what is there.

Each notebook under ``notebooks/`` starts with :func:`ensure_home`. On an empty
``$OMNISCORE_HOME`` it runs the pipeline of ``omniscore demo`` (:mod:`omniscore.pipeline`)
at a small size, up to promotion through the gate; on a home that already holds every
stage's output it only reports what it found. A notebook therefore runs
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
from omniscore.pipeline import PipelineOptions, StageOutcome, champions, run_pipeline
from training.contract import MODEL_NAMES

ENV_PREFIX = "OMNISCORE_NB_"


@dataclass(frozen=True)
class WorkspaceSize:
    """How large a world to simulate when the home is empty, and how hard to train on it.

    Read from ``OMNISCORE_NB_CUSTOMERS``, ``OMNISCORE_NB_DAYS``, ``OMNISCORE_NB_TRIALS``,
    ``OMNISCORE_NB_SEED``, ``OMNISCORE_NB_MIN_CLASS`` and ``OMNISCORE_NB_CUTOFFS`` by
    :meth:`from_env`.
    """

    customers: int = 600
    days: int = 300
    trials: int = 3
    seed: int = 7
    min_class: int = 20
    """Fewest training rows of either class: a small world needs a lower bar than the
    production default (100), or propensity and churn refuse to train."""
    cutoffs: int | None = None
    """Snapshot cutoffs of the classifiers' time split (None: chosen from the history)."""

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
    """Pipeline stages run, in order (``generate``, ``features``, ``apply``, ``materialize``,
    ``train``, ``promote``); empty when the home was complete."""
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


def ensure_home(
    settings: Settings,
    size: WorkspaceSize | None = None,
    models: Sequence[str] = MODEL_NAMES,
    log: Callable[[str], None] = print,
) -> HomeReport:
    """Build whatever the home lacks for the notebooks, then say what is there.

    Runs the pipeline (:func:`omniscore.pipeline.run_pipeline`) up to ``promote``, or up to
    ``materialize`` when no model is asked for, so a stage runs only when its output is
    missing or an earlier stage ran: ``generate`` (no events; ``size`` customers, days and
    seed), ``features`` (no snapshot files; the default 40 weekly snapshots), ``apply``,
    ``materialize``, ``train`` (a model of ``models`` without a registered version;
    ``size.trials`` trials and ``size.min_class``) and ``promote`` through the normal gate
    (a model without a champion). ``size`` defaults to :meth:`WorkspaceSize.from_env`.
    Returns a :class:`HomeReport`.
    """
    size = size or WorkspaceSize.from_env()
    options = PipelineOptions(
        customers=size.customers,
        days=size.days,
        seed=size.seed,
        models=tuple(models),
        trials=size.trials,
        cutoffs=size.cutoffs,
        min_class=size.min_class,
    )
    started = time.perf_counter()
    report = HomeReport(home=settings.home)

    def on_stage(outcome: StageOutcome) -> None:
        if outcome.status == "running":
            report.built.append(outcome.stage.name)
            log(f"[{time.perf_counter() - started:6.1f} s] {outcome.stage.description}")
        elif outcome.status == "ran" and outcome.stage.name == "promote":
            for decision in outcome.result:
                if not decision.promoted:
                    log(f"  {decision.model_name}: the gate kept no champion: {decision.reason}")

    run_pipeline(settings, "promote" if models else "materialize", options, on_stage)
    report.champions = champions(settings, options.models)
    report.seconds = time.perf_counter() - started
    log(report.summary())
    return report
