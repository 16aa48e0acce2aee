"""The one ``omniscore`` command line: every stage of the data flow, and the demo.

This package sits at the end of the import chain (``feature_repo`` → ``training`` →
``serving`` → ``omniscore``), so it may compose all of them while none of them imports it.
Heavy modules are imported inside each command to keep ``--help`` fast.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from data_layer.settings import Settings
from omniscore.pipeline import STAGE_NAMES, PipelineOptions
from training.contract import MODEL_NAMES

app = typer.Typer(
    help="OmniScore: omnichannel propensity, churn and segments on Feast, MLflow and BentoML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
features_app = typer.Typer(
    help="Build point-in-time feature snapshots and drive the Feast store.", no_args_is_help=True
)
app.add_typer(features_app, name="features")
console = Console()

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="State folder (overrides $OMNISCORE_HOME; default ./data).",
        show_default=False,
    ),
]


def _settings(home: Path | None) -> Settings:
    try:
        settings = Settings.from_env(home)
    except ValueError as error:
        _fail(str(error))
    # Child processes (Feast's yaml, the serving subprocess) read the same home.
    os.environ["OMNISCORE_HOME"] = str(settings.home)
    # MLflow draws a progress bar per artifact download, which buries the command's output.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    _library_output_to_log(settings)
    return settings


LOG_NAME = "omniscore.log"


def log_file(settings: Settings) -> Path:
    """The file that receives library warnings and logging: ``$OMNISCORE_HOME/logs/``."""
    return settings.home / "logs" / LOG_NAME


def _library_output_to_log(settings: Settings) -> None:
    """Send Python warnings and library logging to :func:`log_file`.

    Third-party warnings (ibis, Optuna, LightGBM, SQLAlchemy) and library log lines would
    otherwise interleave with the command's own output. Every command calls this once it
    knows its home.
    """
    log_path = log_file(settings)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    # One log per process: a command run in-process again (tests) moves it to its home.
    for old in [h for h in root.handlers if h.get_name() == LOG_NAME]:
        root.removeHandler(old)
        old.close()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.set_name(LOG_NAME)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # Warnings that pass the filters go to the log rather than onto stderr.
    logging.captureWarnings(True)
    # MLflow gives its loggers a stderr handler on import unless told not to; unconfigured,
    # they propagate to the file above. Optuna's handler is moved when training starts.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")


def _optuna_output_to_log() -> None:
    """Optuna logs through its own stderr handler: hand its records to the root logger."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


def _fail(message: str) -> None:
    # One line, however narrow the terminal, so that scripts and people read it alike.
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code=2)


def _table(title: str, rows: list[tuple[str, object]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows:
        table.add_row(key, str(value))
    return table


# --- generate / ingest ---------------------------------------------------------------------


@app.command()
def generate(
    customers: Annotated[int, typer.Option(help="Number of customers.")] = 5000,
    days: Annotated[
        int | None,
        typer.Option(
            help="Days of history (default 365; 1095 for sparse-retail).", show_default=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data.")] = 7,
    profile: Annotated[
        str,
        typer.Option(
            help="omnichannel: six archetypes on every channel; sparse-retail: purchases only, "
            "one channel, a few a year (see docs/synthetic.md)."
        ),
    ] = "omnichannel",
    drift_at: Annotated[
        str | None,
        typer.Option(
            help="Drift scenario from this UTC date (YYYY-MM-DD, inside the period): half the "
            "customers' purchase rates are reshuffled, store activity moves to the app "
            "and deal seekers buy half as often.",
            show_default=False,
        ),
    ] = None,
    home: HomeOption = None,
) -> None:
    """Generate synthetic events with known ground truth (replaces the store)."""
    from data_layer.synthetic import PROFILES, SPARSE_DEFAULT_DAYS, generate_into

    if profile not in PROFILES:
        _fail(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if days is None:
        days = SPARSE_DEFAULT_DAYS if profile == "sparse-retail" else 365
    settings = _settings(home)
    with console.status(f"simulating {customers:,} customers × {days} days ({profile})"):
        settings.ensure_dirs()
        try:
            # Block by block into the store: a million customers never sit in memory at once.
            counts = generate_into(
                settings, customers, days, seed, profile=profile, drift_at=drift_at
            )
        except ValueError as exc:
            _fail(str(exc))
    console.print(
        _table("generated", [(k, f"{v:,}" if isinstance(v, int) else v) for k, v in counts.items()])
    )


@app.command()
def ingest(
    file: Annotated[Path, typer.Argument(help="CSV, Parquet or JSON Lines file of events.")],
    mapping: Annotated[
        Path | None, typer.Option(help="YAML mapping: column renames and value maps.")
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv, tsv, parquet or jsonl (default: by name).")
    ] = None,
    timezone: Annotated[
        str | None, typer.Option(help="IANA zone of naive timestamps (default UTC).")
    ] = None,
    timestamp_format: Annotated[
        str | None, typer.Option(help="epoch_s, epoch_ms or a strptime format (default ISO).")
    ] = None,
    default_channel: Annotated[
        str | None, typer.Option(help="Channel for logs without a channel column.")
    ] = None,
    default_event_type: Annotated[
        str | None, typer.Option(help="Event type for logs without one (e.g. purchase).")
    ] = None,
    unknown_to_other: Annotated[
        bool | None,
        typer.Option("--unknown-to-other/--reject-unknown", help="Map unknown types to other."),
    ] = None,
    base_currency: Annotated[str | None, typer.Option(help="Currency amounts convert to.")] = None,
    amounts: Annotated[
        str | None,
        typer.Option(help="required, or none for a log without revenue (revenue features null)."),
    ] = None,
    event_id_column: Annotated[
        str | None, typer.Option(help="Column holding the source's own event id.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Validate and add your own event log; rejected rows go to quarantine with a reason."""
    from data_layer.ingest import ingest_file, load_mapping

    def run(settings: Settings):
        rules = load_mapping(
            mapping,
            timezone=timezone,
            timestamp_format=timestamp_format,
            default_channel=default_channel,
            default_event_type=default_event_type,
            unknown_to_other=unknown_to_other,
            base_currency=base_currency,
            amounts=amounts,
            event_id_column=event_id_column,
        )
        return ingest_file(settings, file, rules, file_format=file_format)

    _ingest(home, run)


def _ingest(home: Path | None, run) -> None:
    """Run one ingest (``run(settings) -> report``): a bad mapping or a missing file is one
    line and exit 2; otherwise the report's summary."""
    settings = _settings(home)
    settings.ensure_dirs()
    try:
        report = run(settings)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    console.print(report.summary())


@app.command("ingest-customers")
def ingest_customers(
    file: Annotated[
        Path, typer.Argument(help="CSV, Parquet or JSON Lines file of customer profiles.")
    ],
    mapping: Annotated[
        Path | None,
        typer.Option(help="YAML mapping: column renames, valid_from, extra profile features."),
    ] = None,
    file_format: Annotated[
        str | None, typer.Option("--format", help="csv, tsv, parquet or jsonl (default: by name).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Validate and add a customer (profile) table; rejected rows go to quarantine."""
    from data_layer.ingest import CustomerMapping, ingest_customers_file

    def run(settings: Settings):
        rules = CustomerMapping.from_yaml(mapping) if mapping else CustomerMapping()
        return ingest_customers_file(settings, file, rules, file_format=file_format)

    _ingest(home, run)


@app.command("migrate-event-ids")
def migrate_event_ids(home: HomeOption = None) -> None:
    """Widen a store's 16-digit event ids to 128 bits (writers also do it on first write)."""
    from data_layer.event_store import migrate_event_ids as migrate

    settings = _settings(home)
    rewritten = migrate(settings)
    console.print(
        f"{rewritten:,} event ids widened to 128 bits"
        if rewritten
        else "event ids are already 128-bit: nothing to migrate"
    )


@app.command("migrate-events")
def migrate_events(home: HomeOption = None) -> None:
    """Move events stored outside the month/bucket layout (an old flat home, sealed live
    files) into it, under the store lock, so time-range and partition builds can prune."""
    from data_layer.event_store import migrate_events as migrate
    from data_layer.event_store import store_buckets

    settings = _settings(home)
    moved = migrate(settings)
    console.print(
        f"{moved:,} events moved into the layout ({store_buckets(settings)} buckets per month)"
        if moved
        else "every event is already in the month/bucket layout: nothing to migrate"
    )


# --- features ------------------------------------------------------------------------------


@features_app.command("build")
def features_build(
    start: Annotated[
        datetime | None, typer.Option(help="First snapshot (UTC; default 39 weeks back).")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(help="Last snapshot (default: day after the newest event).")
    ] = None,
    every: Annotated[str, typer.Option(help="Spacing of snapshots, e.g. 7D or 6h.")] = "7D",
    at: Annotated[
        list[str] | None,
        typer.Option(
            "--at",
            help="A snapshot instant, e.g. 2026-06-03T14:25:00Z (repeatable; alone, only these).",
        ),
    ] = None,
    engine: Annotated[
        str,
        typer.Option(
            help="embedded (this process; partitioned past OMNISCORE_BUILD_MEMORY_MB) or "
            "spark (OMNISCORE_SPARK_MASTER; needs the spark extra and Java)."
        ),
    ] = "embedded",
    home: HomeOption = None,
) -> None:
    """Compute point-in-time snapshots: at each T, only events strictly before T."""
    from data_layer.feature_pipeline import build_features

    if engine not in ENGINES:
        _fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    settings = _settings(home)
    try:
        with console.status(f"building feature snapshots ({engine})"):
            if engine == "spark":
                report = _build_on_spark(settings, start, end, every, at or ())
            else:
                report = build_features(settings, start, end, every, at=at or ())
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        _fail(str(error))
    console.print(
        _table(
            "feature snapshots",
            [
                (
                    "snapshots",
                    f"{len(report.snapshots)} "
                    f"({report.snapshots[0].isoformat()} … {report.snapshots[-1].isoformat()})",
                ),
                ("rows", f"{report.rows:,}"),
                ("customers", f"{report.customers:,}"),
                ("seconds", f"{report.seconds:.1f}"),
            ],
        )
    )


ENGINES = ("embedded", "spark")
"""Where ``features build`` and ``score-batch`` run (issue 15)."""


def _build_on_spark(settings, start, end, every, at):
    """``features build --engine spark``: the same snapshot instants as the embedded build."""
    from data_layer.feature_pipeline import BuildReport, build_times
    from data_layer.spark_engine import build_features_spark

    times = build_times(settings, start, end, every, at)
    built = build_features_spark(settings, times)
    for stage in built.stages:
        console.print(
            f"spark stage {stage['stage']}: {stage['tasks']} tasks, {stage['seconds']:.1f} s"
        )
    return BuildReport(
        snapshots=times,
        rows=built.rows,
        customers=built.customers,
        seconds=built.seconds,
        files=built.files,
        partitions=built.partitions,
    )


@features_app.command("apply")
def features_apply(home: HomeOption = None) -> None:
    """Register the entity, sources, feature views and services in the Feast registry."""
    from data_layer.feast_store import apply

    settings = _settings(home)
    settings.ensure_dirs()
    summary = apply(settings)
    console.print(_table("feast apply", list(summary.as_dict().items())))


@features_app.command("materialize")
def features_materialize(
    end: Annotated[
        datetime | None, typer.Option(help="Materialize snapshots up to this time (default now).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Load the newest snapshot of each customer into the online store (incremental)."""
    from data_layer.feast_store import materialize

    settings = _settings(home)
    report = materialize(settings, end)
    _print_materialize(report)


def _print_materialize(report) -> None:
    table = Table(
        title=f"materialized into {report.online_store} ({report.method} writer)",
        title_justify="left",
    )
    for column in ("view", "after", "rows", "features", "seconds"):
        table.add_column(column)
    for view in report.views:
        after = view.after.isoformat() if view.after else "beginning"
        table.add_row(view.view, after, f"{view.rows:,}", str(view.features), f"{view.seconds:.2f}")
    console.print(table)
    console.print(
        f"{report.customers:,} customers, {report.feature_values:,} feature values in "
        f"{report.seconds:.2f} s ({report.customers_per_second:,.0f} customers/s)"
    )


# --- training and the registry -------------------------------------------------------------

MODELS = MODEL_NAMES
"""The models of the contract (``training/contract.py``), the choices of every command."""
MODEL_CHOICES = ", ".join(MODELS)


def _models(model: str, allow_all: bool = True) -> list[str]:
    if allow_all and model == "all":
        return list(MODELS)
    if model not in MODELS:
        _fail(f"unknown model {model!r}: choose {MODEL_CHOICES}{' or all' if allow_all else ''}")
    return [model]


def _training_bars():
    """Progress bars of training, one per model; Optuna's own log output goes to the log."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    _optuna_output_to_log()
    return Progress(
        TextColumn("[bold]{task.fields[model]:<10}[/] {task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=False,
    )


def _train_with_progress(settings: Settings, models: list[str], trials: int, seed: int, **kw):
    """Train ``models`` in turn with a progress bar each. One model: its failure stops the
    command (exit 2). Several (``train all``): every model that can train does; the ones that
    cannot are named with the reason after the results, and the command exits 1."""
    from training.train import train_all

    with _training_bars() as bars:
        tasks: dict[str, object] = {}

        def progress_for(model: str):
            task = tasks[model] = bars.add_task("starting", total=None, model=model)

            def progress(stage: str, done: int, total: int) -> None:
                bars.update(task, description=stage, completed=done, total=total or None)

            return progress

        report = train_all(settings, trials, seed, models=models, progress_for=progress_for, **kw)
        for model, task in tasks.items():
            failed = any(f.model == model for f in report.failures)
            bars.update(task, description="not trained" if failed else "done")
    if len(models) == 1 and report.failures:
        _fail(f"{models[0]}: {report.failures[0].reason}")
    if report.results:
        _print_results(report.results)
    for failure in report.failures:
        console.print(
            f"[bold red]not trained:[/] {failure.model}: {failure.reason}", soft_wrap=True
        )
    if report.failures:
        trained = ", ".join(r.model for r in report.results) or "none"
        console.print(
            f"[bold red]error:[/] {len(report.failures)} of {len(models)} models could not be "
            f"trained ({', '.join(f.model for f in report.failures)}); trained: {trained}",
            soft_wrap=True,
        )
        raise typer.Exit(code=1)
    return report.results


def _print_results(results) -> None:
    summaries = {r.model: r.summary() for r in results}
    measures = list(dict.fromkeys(k for s in summaries.values() for k in s if k != "model"))
    table = Table(title="trained (new versions carry alias 'challenger')", title_justify="left")
    table.add_column("measure")
    for model in summaries:
        table.add_column(model, justify="right")
    for measure in measures:
        table.add_row(measure, *(str(s.get(measure, "")) for s in summaries.values()))
    console.print(table)
    from training.baselines import single_channel_note

    for result in results:
        m = result.metrics
        if "rfm_test_roc_auc" in m:
            bgnbd = m.get("bgnbd_test_roc_auc")
            verdict = "beats" if m.get("beats_baselines") else "does NOT beat"
            console.print(
                f"{result.model}: test AUC {m['test_roc_auc']:.4f} {verdict} the classical "
                f"baselines on the same cutoff: RFM-logistic {m['rfm_test_roc_auc']:.4f}, "
                + (f"BG/NBD {bgnbd:.4f}" if bgnbd is not None else "BG/NBD not fitted")
                + f" (margin {m['gain_over_best_baseline']:+.4f})",
                soft_wrap=True,
            )
        note = single_channel_note(m)
        if note:
            console.print(f"{result.model}: {note}.", soft_wrap=True)


ChurnLookbackOption = Annotated[
    int | None,
    typer.Option(
        min=1,
        help="Churn only: label the customers active in this many days before each "
        "cutoff (default 90). Give workers the same value as train.",
    ),
]
CutoffsOption = Annotated[
    int | None,
    typer.Option(
        min=3,
        help="Snapshot cutoffs in the time split: validation, test and up to N-2 training "
        "ones (default: chosen from the history and the horizon, spread over the whole "
        "history). Give workers the same value as train.",
    ),
]


def _data_options(
    horizon_days: int | None, min_class: int, churn_lookback_days: int | None, cutoffs: int | None
) -> dict:
    """The data options given on the command line, in ``train_model``'s names; unset ones
    are left out, so the library defaults (and the study name they decide) apply. ``train``
    and ``tune-worker`` both parse them here, so a worker joins the study of its job."""
    data: dict[str, int] = {}
    if horizon_days is not None:
        data["horizon_days"] = horizon_days
    if min_class != 100:
        data["min_class"] = min_class
    if churn_lookback_days is not None:
        data["churn_lookback_days"] = churn_lookback_days
    if cutoffs is not None:
        data["n_cutoffs"] = cutoffs
    return data


@app.command()
def train(
    model: Annotated[str, typer.Argument(help=f"{MODEL_CHOICES} or all.")],
    trials: Annotated[int, typer.Option(help="Optuna trials per model.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed for sampling, splits and models.")] = 42,
    horizon_days: Annotated[
        int | None, typer.Option(help="Label horizon (propensity 14, churn 60 by default).")
    ] = None,
    workers: Annotated[
        int, typer.Option(help="Tuning processes on one study (PostgreSQL storage for > 1).")
    ] = 1,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: under the home).")
    ] = None,
    min_class: Annotated[
        int, typer.Option(help="Refuse to train with fewer examples of either class.")
    ] = 100,
    churn_lookback_days: ChurnLookbackOption = None,
    cutoffs: CutoffsOption = None,
    home: HomeOption = None,
) -> None:
    """Tune with Optuna, train, evaluate, log to MLflow and register as challenger."""
    settings = _settings(home)
    settings.ensure_dirs()
    kw = {
        "storage_url": storage,
        **_data_options(horizon_days, min_class, churn_lookback_days, cutoffs),
    }
    if workers > 1:
        from training.distributed import train_with_workers

        results = [
            train_with_workers(settings, m, trials=trials, workers=workers, seed=seed, **kw)
            for m in _models(model)
        ]
        _print_results(results)
    else:
        _train_with_progress(settings, _models(model), trials, seed, **kw)


@app.command(
    "tune-worker",
    help=(
        "Join the study of a training job with tuning processes only (run it on other "
        "machines). The study storage comes from OMNISCORE_OPTUNA_STORAGE or the profile, "
        "never from the command line; give the seed and data options of `omniscore train`, "
        "which decide the study. Nothing is logged to MLflow or registered. Exits 1 if a "
        "worker failed."
    ),
)
def tune_worker(
    model: Annotated[str, typer.Argument(help=f"{MODEL_CHOICES}.")],
    trials: Annotated[
        int, typer.Option(help="Finished trials the study needs (as given to train).")
    ] = 20,
    workers: Annotated[int, typer.Option(help="Tuning processes on this machine.")] = 1,
    seed: Annotated[int, typer.Option(help="The seed train was started with.")] = 42,
    horizon_days: Annotated[
        int | None, typer.Option(help="Label horizon, as given to train (default per model).")
    ] = None,
    min_class: Annotated[
        int, typer.Option(help="Minimum examples of either class, as given to train.")
    ] = 100,
    churn_lookback_days: ChurnLookbackOption = None,
    cutoffs: CutoffsOption = None,
    home: HomeOption = None,
) -> None:
    """Tuning processes on this machine for the study of a `train --workers` job elsewhere."""
    from data_layer.settings import redact
    from training.distributed import run_workers, shared_storage

    _models(model, allow_all=False)
    settings = _settings(home)
    try:
        url = shared_storage(settings, None)
    except ValueError as error:
        _fail(str(error))
    data = _data_options(horizon_days, min_class, churn_lookback_days, cutoffs)
    console.print(
        f"joining the {model} study at {redact(url)} with {workers} process(es), "
        f"until it holds {trials} finished trials"
    )
    report = run_workers(settings, model, trials, workers, seed, **data)
    console.print(
        f"workers exited with {report.exit_codes}; finished trials run here: "
        f"{report.trials_run} (total {report.total_trials_run})"
    )
    if report.failed:
        console.print(f"[bold red]error:[/] {report.failed} of {workers} worker(s) failed")
        raise typer.Exit(code=1)


@app.command()
def promote(
    model: Annotated[str, typer.Argument(help=f"{MODEL_CHOICES} or all.")],
    force: Annotated[bool, typer.Option(help="Override the gate (needs --reason).")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the gate is overridden.")] = None,
    home: HomeOption = None,
) -> None:
    """Move alias 'champion' to the challenger if it passes the gate on the latest cutoff."""
    from training.registry import promote as promote_model

    settings = _settings(home)
    decisions = []
    for name in _models(model):
        try:
            decisions.append(promote_model(settings, name, force=force, reason=reason))
        except (ValueError, LookupError) as error:
            _fail(f"{name}: {error}")
    _print_decisions(decisions)


def _print_decisions(decisions) -> None:
    table = Table(title="promotion decisions", title_justify="left")
    for column in ("model", "challenger", "previous champion", "champion now", "decision"):
        table.add_column(column)
    for d in decisions:
        verdict = "[green]promoted[/]" if d.promoted else "[yellow]kept[/]"
        table.add_row(
            d.model_name,
            d.challenger_version,
            d.previous_champion or "-",
            d.champion_after or "-",
            f"{verdict}{' (forced)' if d.forced else ''}: {d.reason}",
        )
    console.print(table)


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help=f"{MODEL_CHOICES} or all.")],
    home: HomeOption = None,
) -> None:
    """Restore the previous champion."""
    from training.registry import rollback as rollback_model

    settings = _settings(home)
    for name in _models(model):
        try:
            result = rollback_model(settings, name)
        except LookupError as error:
            _fail(f"{name}: {error}")
        console.print(f"{result.model_name}: champion {result.from_version} → {result.to_version}")


# --- serving -------------------------------------------------------------------------------


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless told).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="TCP port.")] = 3000,
    home: HomeOption = None,
) -> None:
    """Serve POST /score with the champion models on the embedded stores (BentoML)."""
    from serving.config import ServeConfigError
    from serving.launcher import serve as run_server
    from serving.launcher import server_env

    settings = _settings(home)
    try:
        server_env(settings)
    except ServeConfigError as error:
        _fail(str(error))
    console.print(f"serving on http://{host}:{port} (OpenAPI at /docs); Ctrl-C stops")
    raise typer.Exit(code=run_server(settings, host=host, port=port))


@app.command()
def stream(
    group: Annotated[str, typer.Option(help="Consumer group name.")] = "omniscore",
    consumer: Annotated[
        str | None,
        typer.Option(
            help="This consumer's name in the group (default <host>-<pid>).", show_default=False
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Messages read and accepted per batch.")] = 500,
    block_ms: Annotated[int, typer.Option(help="Longest wait for new messages per read.")] = 1000,
    claim_idle_ms: Annotated[
        int,
        typer.Option(help="Take over messages another consumer left unacknowledged this long."),
    ] = 30_000,
    idle_exit: Annotated[
        float | None,
        typer.Option(
            help="Exit once no message came for this many seconds and none is pending "
            "(default: run until interrupted).",
            show_default=False,
        ),
    ] = None,
    online: Annotated[
        bool,
        typer.Option(help="Rewrite the folded customers' features in the Feast online store."),
    ] = True,
    triggers: Annotated[
        bool,
        typer.Option(
            help="Score the folded customers with the champions and publish their band and "
            "segment changes (serving/triggers.py; settings triggers, trigger_redis)."
        ),
    ] = False,
    home: HomeOption = None,
) -> None:
    """Consume canonical events from the Redis Stream (settings: stream_name, stream_redis)
    as a consumer group: each batch is validated, stored exactly once, folded into the live
    state, then acknowledged. OMNISCORE_CLOCK fixes the clock for replays. With --triggers,
    score changes are published to the trigger stream before the acknowledgement."""
    from data_layer.live_ingest import OnlineFeatureWriter, parse_clock
    from data_layer.live_state import LiveState
    from data_layer.stream_consumer import StreamConfigError, StreamConsumer

    settings = _settings(home)
    try:
        clock = parse_clock(os.environ.get("OMNISCORE_CLOCK"))
        state = LiveState.open(settings)
        try:
            writer = OnlineFeatureWriter(settings) if online else None
        except Exception as error:  # Feast raises its own types for a missing registry
            _fail(
                f"the Feast online store cannot be opened ({type(error).__name__}): run "
                "`omniscore features apply` first, or pass --no-online"
            )
        around_fold = None
        if triggers:
            from serving.triggers import stream_triggers

            around_fold = stream_triggers(settings, state, clock)
            if around_fold is None:
                _fail("--triggers: triggers are off (OMNISCORE_TRIGGERS) or have no Redis")
        runner = StreamConsumer(
            settings,
            state=state,
            online=writer,
            group=group,
            consumer=consumer,
            batch_size=batch_size,
            block_ms=block_ms,
            claim_idle_ms=claim_idle_ms,
            clock=clock,
            around_fold=around_fold,
        )
    except (StreamConfigError, ValueError) as error:
        _fail(str(error))
    console.print(
        f"consuming {settings.stream_name} as {runner.group}/{runner.consumer}; Ctrl-C stops"
    )
    try:
        stats = runner.run(idle_exit_seconds=idle_exit)
    except KeyboardInterrupt:
        stats = runner.stats
    finally:
        state.close()
    console.print(_table("stream", [(k, f"{v:,}") for k, v in stats.as_dict().items()]))


@app.command()
def bento(home: HomeOption = None) -> None:
    """Build a Bento (``bentoml build``) that pins the current champion versions."""
    from serving.bento import build_bento

    settings = _settings(home)
    built = build_bento(settings)
    console.print(f"built {built.tag} with model versions {built.versions}")


@app.command("score-batch")
def score_batch(
    out: Annotated[Path, typer.Option(help="Parquet file to write the scores to.")] = Path(
        "scores.parquet"
    ),
    explain: Annotated[bool, typer.Option(help="Add per-customer reasons (slower).")] = False,
    engine: Annotated[
        str, typer.Option(help="embedded (this process) or spark (OMNISCORE_SPARK_MASTER).")
    ] = "embedded",
    home: HomeOption = None,
) -> None:
    """Score every customer of the latest offline snapshot with the champions."""
    from serving.batch import score_batch as run_batch

    if engine not in ENGINES:
        _fail(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    settings = _settings(home)
    if engine == "spark":
        from serving.spark_batch import score_batch_spark

        try:
            report, stages = score_batch_spark(settings, out, explain=explain)
        except RuntimeError as error:
            _fail(str(error))
        for stage in stages:
            console.print(
                f"spark stage {stage['stage']}: {stage['tasks']} tasks, {stage['seconds']:.1f} s"
            )
    else:
        report = run_batch(settings, out, explain=explain)
    console.print(
        f"scored {report.customers:,} customers ({report.known:,} known) → {report.out} in "
        f"{report.seconds:.2f} s ({report.customers_per_second:,.0f} customers/s); "
        f"versions {report.versions}"
    )


@app.command()
def forget(
    customer_ids: Annotated[
        list[str] | None, typer.Argument(help="Customer ids to erase.", show_default=False)
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", help="File of customer ids, one per line.")
    ] = None,
    unsuppress: Annotated[
        list[str] | None,
        typer.Option("--unsuppress", help="Lift the suppression of this id (signed up again)."),
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="List champions trained on erased customers' data.")
    ] = False,
    home: HomeOption = None,
) -> None:
    """Erase customers from every store of the home, suppress them and write a receipt."""
    from data_layer.erasure import forget as run_forget
    from data_layer.erasure import format_receipt, read_ids_file
    from data_layer.erasure import unsuppress as lift
    from training.erasure_lineage import open_obligations, versions_trained_on

    settings = _settings(home)
    if report:
        obligations = open_obligations(settings)
        if not obligations:
            console.print("no open obligations: no champion was trained on erased customers")
        for o in obligations:
            console.print(
                f"{o['name']} v{o['version']} (champion) was trained on data of up to "
                f"{o['erased_customers_at_most']:,} erased customer(s); registered "
                f"{o['registered_at'][:10]}, {o['age_days']:g} days old: retrain and promote"
            )
        return
    if unsuppress:
        try:
            lifted = lift(settings, unsuppress)
        except ValueError as error:
            _fail(str(error))
        console.print(f"suppression lifted for {lifted} of {len(unsuppress)} customer(s)")
        return
    ids = list(customer_ids or [])
    if file is not None:
        try:
            ids += read_ids_file(file)
        except OSError as error:
            _fail(f"cannot read {file}: {error.strerror or error}")
    if not ids:
        _fail("name customer ids, or --file ids.txt, --unsuppress ID or --report")
    try:
        receipt = run_forget(settings, ids, models=versions_trained_on)
    except ValueError as error:
        _fail(str(error))
    _library_output_to_log(settings)  # the log file was rewritten without their lines
    console.print(format_receipt(receipt), soft_wrap=True)


@app.command()
def backtest(
    model: Annotated[str, typer.Argument(help="propensity or churn.")],
    version: Annotated[
        str | None, typer.Option(help="Only this version (default: every logged one).")
    ] = None,
    source: Annotated[
        str, typer.Option(help="auto (the score log, else past snapshots), score_log, snapshots.")
    ] = "auto",
    snapshots: Annotated[int, typer.Option(help="Past snapshots to score without a log.")] = 4,
    out: Annotated[
        Path | None, typer.Option(help="Report folder (default <home>/reports/backtest-MODEL).")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Check issued scores against what the customers then did: AUC, PR-AUC, lift, rate
    per band, calibration and a 0-100 quality, per version and segment (docs/monitoring.md)."""
    from training.backtest import backtest as run_backtest

    if source not in ("auto", "score_log", "snapshots"):
        _fail(f"--source must be auto, score_log or snapshots, not {source!r}")
    from mlflow.exceptions import MlflowException

    settings = _settings(home)
    try:
        result = run_backtest(
            settings, model, out=out, version=version, snapshots=snapshots, source=source
        )
    except (ValueError, LookupError, OSError, MlflowException) as error:
        _fail(f"{model}: {error}")
    for v, bt in result.versions.items():
        m = bt.metrics
        console.print(
            f"{result.model} v{v} ({result.source}, cutoffs {', '.join(bt.cutoffs)}): "
            f"quality {m['quality']:.0f}/100, AUC {m['auc']:.3f}, PR-AUC {m['pr_auc']:.3f}, "
            f"realized rate {m['positive_rate']:.3f} vs predicted {m['predicted_rate']:.3f}, "
            f"label-free AUC estimate {m['expected_auc']:.3f}, {m['n']:.0f} scores",
            soft_wrap=True,
        )
    if result.skipped_cutoffs:
        console.print(
            "left out, as the version learned their outcomes: " + ", ".join(result.skipped_cutoffs),
            soft_wrap=True,
        )
    console.print(f"report: {result.report}  (MLflow run {result.run_id})", soft_wrap=True)


def _run_monitor(settings: Settings, as_of: str | None):
    from mlflow.exceptions import MlflowException

    from training.monitor import monitor as run_monitor

    try:
        result = run_monitor(settings, as_of=as_of)
    except (ValueError, LookupError, OSError, MlflowException) as error:
        _fail(str(error))
    for model, figures in result.models.items():
        shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()
                 if not isinstance(v, (dict, list))}  # fmt: skip
        console.print(f"[bold]{model}[/] {shown}", soft_wrap=True)
    for alarm in result.alarms:
        console.print(f"[bold red]drift:[/] {alarm}", soft_wrap=True)
    if not result.alarms:
        console.print(f"[green]no threshold crossed[/] at {result.cutoff[:10]}")
    return result


@app.command()
def monitor(
    as_of: Annotated[
        str | None, typer.Option(help="Compare the latest snapshot at or before this date.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Compare the current population with the champions' training references: feature,
    score and segment drift and a label-free performance estimate. Exits 3 when a threshold
    (OMNISCORE_MONITOR_*) is crossed."""
    from training.monitor import DRIFT_EXIT_CODE

    result = _run_monitor(_settings(home), as_of)
    if result.drifted:
        raise typer.Exit(code=DRIFT_EXIT_CODE)


@app.command()
def retrain(
    if_drifted: Annotated[
        bool, typer.Option("--if-drifted", help="Only when the monitor crosses a threshold.")
    ] = False,
    trials: Annotated[int, typer.Option(help="Optuna trials per model.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed for sampling, splits and models.")] = 42,
    home: HomeOption = None,
) -> None:
    """Train challengers and run the promotion gate; with --if-drifted, only for the models
    the monitor flags (nothing when it flags none)."""
    from training.registry import promote as promote_model

    settings = _settings(home)
    models = list(MODELS)
    if if_drifted:
        result = _run_monitor(settings, None)
        models = [m for m in MODELS if any(a.startswith(f"{m}:") for a in result.alarms)]
        if not models:
            console.print("no drift: nothing retrained")
            return
    settings.ensure_dirs()
    _train_with_progress(settings, models, trials, seed)
    decisions = []
    for name in models:
        try:
            decisions.append(promote_model(settings, name))
        except (ValueError, LookupError) as error:
            _fail(f"{name}: {error}")
    _print_decisions(decisions)


@app.command()
def doctor(home: HomeOption = None) -> None:
    """Show each component's backend and whether it answers (credentials redacted)."""
    from omniscore.doctor import doctor as run_checks
    from omniscore.doctor import failures

    settings = _settings(home)
    checks = run_checks(settings)
    table = Table(title=f"OmniScore doctor ({settings.home})", title_justify="left")
    for column in ("component", "backend", "status", "detail"):
        table.add_column(column)
    for check in checks:
        status = "[green]ok[/]" if check.ok else "[bold red]FAIL[/]"
        table.add_row(check.component, check.backend, status, check.detail)
    console.print(table)
    if failures(checks):
        _fail("some components do not answer (see above)")


# --- the pipeline and the demo -----------------------------------------------------------


class _StageDisplay:
    """Shows each pipeline stage as it runs (a spinner, or progress bars while training)
    and prints its result when it ends; an ``on_stage`` callback of ``run_pipeline``."""

    def __init__(self) -> None:
        self._live = None
        self._bars = None
        self._tasks: dict[str, object] = {}

    def __call__(self, outcome) -> None:
        if outcome.status == "skipped":
            console.print(f"[dim]· {outcome.stage.name}: already done, skipped[/]")
        elif outcome.status == "running":
            self._start(outcome.stage)
        else:
            self.close()
            _STAGE_PRINTERS[outcome.stage.name](outcome.result)

    def _start(self, stage) -> None:
        if stage.name == "train":
            self._bars = _training_bars()
            self._bars.start()
        else:
            self._live = console.status(stage.description)
            self._live.start()

    def train_progress(self, model: str, step: str, done: int, total: int) -> None:
        """Training progress of one model, as ``PipelineOptions.train_progress`` reports it."""
        if self._bars is None:
            return
        if model not in self._tasks:
            self._tasks[model] = self._bars.add_task("starting", total=None, model=model)
        self._bars.update(self._tasks[model], description=step, completed=done, total=total or None)

    def close(self) -> None:
        """Stop whatever live display is running (also after a stage failed)."""
        for live in (self._live, self._bars):
            if live is not None:
                live.stop()
        self._live = self._bars = None


def _print_generated(counts: dict) -> None:
    console.print(
        f"[green]✓[/] generated {counts['events']:,} events for {counts['customers']:,} customers"
    )


def _print_build(build) -> None:
    console.print(
        f"[green]✓[/] {build.rows:,} snapshot rows, {len(build.snapshots)} weekly snapshots "
        f"({build.snapshots[0].date()} … {build.snapshots[-1].date()}) in {build.seconds:.1f} s"
    )


def _print_apply(summary) -> None:
    console.print(
        f"[green]✓[/] feast apply: {len(summary.feature_views)} feature views, services "
        f"{', '.join(summary.feature_services)}"
    )


def _print_scores(check) -> None:
    table = Table(
        title=f"POST {check.url}/score (the service has stopped again)", title_justify="left"
    )
    for column in ("customer", "known", "propensity", "churn", "segment"):
        table.add_column(column)
    for row in check.answer["scores"]:
        table.add_row(
            row["customer_id"],
            str(row["known"]),
            f"{row['propensity']['probability']:.3f} ({row['propensity']['band']})",
            f"{row['churn']['probability']:.3f} ({row['churn']['band']})",
            f"{row['segment']['id']}: {row['segment']['name']}",
        )
    console.print(table)


_STAGE_PRINTERS = {
    "generate": _print_generated,
    "features": _print_build,
    "apply": _print_apply,
    "materialize": _print_materialize,
    "train": _print_results,
    "promote": _print_decisions,
    "serve": _print_scores,
}
"""How the demo and ``omniscore pipeline`` print each stage's result."""


def _run_stages(settings: Settings, options, until: str, first: str, rerun: bool) -> None:
    """Run the pipeline with a live display; data that cannot support a model, or a serving
    setting that cannot work, ends the command with one line."""
    from dataclasses import replace

    from omniscore.pipeline import run_pipeline, select_stages

    try:
        select_stages(first, until)
    except ValueError as error:
        _fail(str(error))
    from serving.config import ServeConfigError
    from training.datasets import IneligibleError

    display = _StageDisplay()
    options = replace(options, train_progress=display.train_progress)
    try:
        try:
            run_pipeline(settings, until, options, display, first=first, rerun=rerun)
        finally:
            display.close()
    except (IneligibleError, ServeConfigError) as error:
        _fail(str(error))


RerunOption = Annotated[
    bool, typer.Option(help="Run every stage, even those whose output the home already holds.")
]


@app.command()
def pipeline(
    until: Annotated[str, typer.Option(help=f"Last stage to run: {', '.join(STAGE_NAMES)}.")] = (
        "promote"
    ),
    first: Annotated[str, typer.Option("--from", help="First stage to run.")] = STAGE_NAMES[0],
    rerun: RerunOption = False,
    customers: Annotated[
        int, typer.Option(help="Customers to simulate.")
    ] = PipelineOptions.customers,
    days: Annotated[int, typer.Option(help="Days of history.")] = PipelineOptions.days,
    seed: Annotated[
        int, typer.Option(help="Seed of the world and of training.")
    ] = PipelineOptions.seed,
    snapshot_weeks: Annotated[
        int | None, typer.Option(min=3, help="Weekly snapshots to build (default 40).")
    ] = None,
    trials: Annotated[int, typer.Option(help="Optuna trials per model.")] = PipelineOptions.trials,
    cutoffs: CutoffsOption = None,
    min_class: Annotated[
        int | None, typer.Option(help="Refuse to train with fewer examples of either class.")
    ] = None,
    home: HomeOption = None,
) -> None:
    """Run the stages in order, skipping those already done: generate, features, apply,
    materialize, train, promote, serve (score a few customers over HTTP)."""
    settings = _settings(home)
    options = PipelineOptions(
        customers=customers,
        days=days,
        seed=seed,
        snapshot_weeks=snapshot_weeks,
        trials=trials,
        cutoffs=cutoffs,
        min_class=min_class,
    )
    _run_stages(settings, options, until, first, rerun)
    console.print(f"library warnings and logs: {log_file(settings)}", soft_wrap=True)


@app.command()
def demo(
    customers: Annotated[
        int, typer.Option(help="Customers to simulate.")
    ] = PipelineOptions.customers,
    days: Annotated[int, typer.Option(help="Days of history.")] = PipelineOptions.days,
    trials: Annotated[int, typer.Option(help="Optuna trials per model.")] = PipelineOptions.trials,
    seed: Annotated[int, typer.Option(help="Random seed.")] = PipelineOptions.seed,
    cutoffs: CutoffsOption = None,
    min_class: Annotated[
        int | None,
        typer.Option(help="Refuse to train with fewer examples of either class (small worlds)."),
    ] = None,
    rerun: RerunOption = False,
    home: HomeOption = None,
) -> None:
    """Run the main job on the embedded stores: generate, features, train, promote, score.

    The whole pipeline (``omniscore pipeline --until serve``); stages whose output the home
    already holds are skipped unless ``--rerun``."""
    settings = _settings(home)
    console.rule(f"OmniScore demo in {settings.home}")
    options = PipelineOptions(
        customers=customers,
        days=days,
        seed=seed,
        trials=trials,
        cutoffs=cutoffs,
        min_class=min_class,
    )
    _run_stages(settings, options, STAGE_NAMES[-1], STAGE_NAMES[0], rerun)
    console.rule("next")
    console.print(
        f"MLflow UI:        .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}\n"
        f"Optuna dashboard: .venv/bin/optuna-dashboard {settings.optuna_storage_url}\n"
        f"Library warnings and logs: {log_file(settings)}",
        # Commands and paths stay whole on one line, to be copied.
        soft_wrap=True,
    )


def main() -> None:  # pragma: no cover - console entry point alias
    app()
