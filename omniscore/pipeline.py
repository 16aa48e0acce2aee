"""The OmniScore pipeline, defined once: its stages in order, each with its "already done?" check.

generate → features → apply → materialize → train → promote → serve

``omniscore demo``, ``omniscore pipeline``, the notebooks' :func:`omniscore.workspace.ensure_home`,
the ``MLproject`` entry points and the benchmarks all run these stages through
:func:`run_pipeline` rather than writing the order again. A stage whose output the home already
holds is skipped, unless an earlier stage ran in the same call (its input changed) or the
caller asks for a rerun. Each stage's body is the library function the matching CLI command
calls (``data_layer``, ``training``, ``serving``); this module only wires them, and imports
them inside the stages so that ``omniscore --help`` stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_layer.settings import Settings
from training.contract import MODEL_NAMES, contract

ModelProgressFn = Callable[[str, str, int, int], None]
"""Training progress of one model: ``(model, step, done, total)``."""


@dataclass(frozen=True)
class PipelineOptions:
    """What the stages need besides the settings: the world's size and how hard to train.

    The defaults are the demo's: a world small enough to run end to end in a few minutes.
    """

    customers: int = 3000
    days: int = 365
    seed: int = 7
    """Seed of the synthetic world, and of training unless ``train_seed`` is given."""
    snapshot_weeks: int | None = None
    """Weekly snapshots to build, ending the day after the newest event (None: the feature
    pipeline's default, :func:`data_layer.feature_pipeline.default_snapshot_range`)."""
    models: tuple[str, ...] = MODEL_NAMES
    """Models to train and promote, by their contract names (:mod:`training.contract`)."""
    trials: int = 6
    cutoffs: int | None = None
    """Snapshot cutoffs of the classifiers' time split (None: chosen from the history and
    the horizon, as ``omniscore train`` does without ``--cutoffs``)."""
    train_seed: int | None = None
    min_class: int | None = None
    """Fewest training rows of either class (None: training's default)."""
    promote_over_gate: str | None = None
    """A reason to promote every new challenger past the gate (benchmarks that need
    champions whatever their quality); None keeps the gate."""
    score_ids: tuple[str, ...] = ("C000001", "C000002", "C999999")
    """Customers the ``serve`` stage scores over HTTP (the last one is unknown on purpose)."""
    train_progress: ModelProgressFn | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: ``run`` does it, ``done`` says whether the home holds its
    output already. ``run`` returns the step's report, handed to the ``on_stage`` callback."""

    name: str
    description: str
    run: Callable[[Settings, PipelineOptions], object]
    done: Callable[[Settings, PipelineOptions], bool]


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage in :func:`run_pipeline`, passed to its ``on_stage``
    callback twice when the stage runs (``status`` ``"running"``, then ``"ran"`` with
    ``result`` and ``seconds``) and once when it is skipped (``"skipped"``)."""

    stage: Stage
    status: str
    result: object = None
    seconds: float = 0.0


@dataclass(frozen=True)
class ServeCheck:
    """The ``serve`` stage's answer: the URL the service ran on and its ``/score`` JSON."""

    url: str
    answer: dict


# --- the stages ---------------------------------------------------------------------------


def _generate(settings: Settings, options: PipelineOptions) -> dict:
    from data_layer.synthetic import generate_into

    return generate_into(settings, options.customers, options.days, options.seed)


def _events_exist(settings: Settings, options: PipelineOptions) -> bool:
    from data_layer.event_store import event_files

    return bool(event_files(settings))


def _build_features(settings: Settings, options: PipelineOptions):
    from data_layer.feature_pipeline import build_features, default_snapshot_range

    if options.snapshot_weeks is None:
        return build_features(settings)
    return build_features(settings, *default_snapshot_range(settings, options.snapshot_weeks))


def _snapshots_exist(settings: Settings, options: PipelineOptions) -> bool:
    from feature_repo.catalog import VIEWS
    from feature_repo.data_sources import snapshot_path

    return all(snapshot_path(settings.features_dir, view).exists() for view in VIEWS)


def _apply(settings: Settings, options: PipelineOptions):
    from data_layer.feast_store import apply

    return apply(settings)


def _registry_exists(settings: Settings, options: PipelineOptions) -> bool:
    path = settings.feast_registry_path
    # A SQL registry cannot be checked by a file: apply is idempotent, so apply again.
    return "://" not in path and Path(path).exists()


def _materialize(settings: Settings, options: PipelineOptions):
    from data_layer.feast_store import materialize

    return materialize(settings)


def _materialized(settings: Settings, options: PipelineOptions) -> bool:
    # The registry records each view's materialized interval, whatever the online store.
    from data_layer.feast_store import feature_store

    views = feature_store(settings).list_feature_views(allow_cache=False)
    return bool(views) and all(view.most_recent_end_time for view in views)


def _train(settings: Settings, options: PipelineOptions) -> list:
    from training.datasets import IneligibleError
    from training.train import train_model

    extra: dict = {} if options.min_class is None else {"min_class": options.min_class}
    if options.cutoffs is not None:
        extra["n_cutoffs"] = options.cutoffs
    seed = options.seed if options.train_seed is None else options.train_seed
    results = []
    for model in options.models:
        progress = None
        if options.train_progress is not None:

            def progress(step: str, done: int, total: int, model: str = model) -> None:
                options.train_progress(model, step, done, total)

        try:
            results.append(
                train_model(settings, model, options.trials, seed, progress=progress, **extra)
            )
        except IneligibleError as error:
            # Several models train in one stage: say which one the data cannot support.
            raise IneligibleError(f"{model}: {error}") from error
    return results


def _models_registered(settings: Settings, options: PipelineOptions) -> bool:
    from training.registry import describe

    return all(describe(settings, model)["versions"] for model in options.models)


def _promote(settings: Settings, options: PipelineOptions) -> list:
    from training.registry import promote

    forced = options.promote_over_gate is not None
    return [
        promote(settings, model, force=forced, reason=options.promote_over_gate)
        for model in options.models
    ]


def _champions_exist(settings: Settings, options: PipelineOptions) -> bool:
    found = champions(settings, options.models)
    return all(champion is not None for champion in found.values())


def _serve(settings: Settings, options: PipelineOptions) -> ServeCheck:
    from serving.launcher import start_server

    with start_server(settings) as server:
        return ServeCheck(server.url, server.score(list(options.score_ids), explain=False))


def _never_done(settings: Settings, options: PipelineOptions) -> bool:
    return False


STAGES: tuple[Stage, ...] = (
    Stage("generate", "simulate the synthetic omnichannel world", _generate, _events_exist),
    Stage("features", "build point-in-time feature snapshots", _build_features, _snapshots_exist),
    Stage("apply", "register the Feast definitions", _apply, _registry_exists),
    Stage("materialize", "load the online store", _materialize, _materialized),
    Stage("train", "tune, train and register challengers", _train, _models_registered),
    Stage("promote", "move 'champion' through the gate", _promote, _champions_exist),
    Stage("serve", "score over HTTP through the BentoML service", _serve, _never_done),
)
"""Every stage, in data-flow order. ``serve`` starts the service, scores
``PipelineOptions.score_ids`` and stops it again; it always runs."""
STAGE_NAMES: tuple[str, ...] = tuple(stage.name for stage in STAGES)


def champions(settings: Settings, models: tuple[str, ...]) -> dict[str, str | None]:
    """The champion version of each model (None where the gate has kept none)."""
    from training.registry import describe

    return {model: describe(settings, model)["champion"] for model in models}


def select_stages(first: str = STAGE_NAMES[0], until: str = STAGE_NAMES[-1]) -> tuple[Stage, ...]:
    """The stages from ``first`` to ``until`` inclusive; ``ValueError`` on an unknown name or
    an empty range."""
    for name in (first, until):
        if name not in STAGE_NAMES:
            raise ValueError(f"unknown stage {name!r}: choose one of {', '.join(STAGE_NAMES)}")
    lo, hi = STAGE_NAMES.index(first), STAGE_NAMES.index(until)
    if lo > hi:
        raise ValueError(f"stage {first!r} comes after {until!r}: nothing to run")
    return STAGES[lo : hi + 1]


def run_pipeline(
    settings: Settings,
    until: str = STAGE_NAMES[-1],
    options: PipelineOptions | None = None,
    on_stage: Callable[[StageOutcome], None] | None = None,
    *,
    first: str = STAGE_NAMES[0],
    rerun: bool = False,
) -> list[StageOutcome]:
    """Run the stages ``first`` … ``until`` in order, skipping those already done.

    A stage is skipped when its ``done`` check holds, no earlier stage ran in this call (a
    stage that ran changed the input of every later one) and ``rerun`` is false. Unknown
    model names raise ``ValueError`` before anything runs; a stage's own error propagates
    (training's :class:`~training.datasets.IneligibleError`, for one). Returns one outcome
    per selected stage.
    """
    options = options or PipelineOptions()
    for model in options.models:
        contract(model)
    stages = select_stages(first, until)
    report = on_stage or (lambda outcome: None)
    settings.ensure_dirs()
    outcomes = []
    upstream_ran = rerun
    for stage in stages:
        if not upstream_ran and stage.done(settings, options):
            outcome = StageOutcome(stage, "skipped")
        else:
            report(StageOutcome(stage, "running"))
            started = time.perf_counter()
            result = stage.run(settings, options)
            outcome = StageOutcome(stage, "ran", result, time.perf_counter() - started)
            upstream_ran = True
        report(outcome)
        outcomes.append(outcome)
    return outcomes
