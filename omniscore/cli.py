"""The one ``omniscore`` command line: every stage of the data flow, and the demo.

This package sits at the end of the import chain (``feature_repo`` → ``training`` →
``serving`` → ``omniscore``), so it may compose all of them while none of them imports it.
Heavy modules are imported inside each command to keep ``--help`` fast.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from feature_repo.config import Settings

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
    settings = Settings.from_env(home)
    # Child processes (Feast's yaml, the serving subprocess) read the same home.
    os.environ["OMNISCORE_HOME"] = str(settings.home)
    return settings


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
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
    days: Annotated[int, typer.Option(help="Days of history.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same data.")] = 7,
    home: HomeOption = None,
) -> None:
    """Generate synthetic omnichannel events with known ground truth (replaces the store)."""
    from feature_repo.generate import generate as simulate
    from feature_repo.generate import write_generated

    settings = _settings(home)
    settings.ensure_dirs()
    with console.status(f"simulating {customers:,} customers × {days} days"):
        data = simulate(customers, days, seed)
        counts = write_generated(settings, data)
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
    home: HomeOption = None,
) -> None:
    """Validate and add your own event log; rejected rows go to quarantine with a reason."""
    from feature_repo.ingest import ingest_file, load_mapping

    settings = _settings(home)
    settings.ensure_dirs()
    try:
        rules = load_mapping(
            mapping,
            timezone=timezone,
            timestamp_format=timestamp_format,
            default_channel=default_channel,
            default_event_type=default_event_type,
            unknown_to_other=unknown_to_other,
            base_currency=base_currency,
        )
        report = ingest_file(settings, file, rules, file_format=file_format)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    console.print(report.summary())


# --- features ------------------------------------------------------------------------------


@features_app.command("build")
def features_build(
    start: Annotated[
        datetime | None, typer.Option(help="First snapshot (UTC midnight; default 25 weeks back).")
    ] = None,
    end: Annotated[
        datetime | None, typer.Option(help="Last snapshot (default: day after the newest event).")
    ] = None,
    every: Annotated[str, typer.Option(help="Spacing of snapshots in whole days.")] = "7D",
    home: HomeOption = None,
) -> None:
    """Compute point-in-time snapshots: at each T, only events strictly before T."""
    from feature_repo.features import build_features

    settings = _settings(home)
    try:
        with console.status("building feature snapshots"):
            report = build_features(settings, start, end, every)
    except (ValueError, FileNotFoundError) as error:
        _fail(str(error))
    console.print(
        _table(
            "feature snapshots",
            [
                (
                    "snapshots",
                    f"{len(report.snapshots)} "
                    f"({report.snapshots[0].date()} … {report.snapshots[-1].date()})",
                ),
                ("rows", f"{report.rows:,}"),
                ("customers", f"{report.customers:,}"),
                ("seconds", f"{report.seconds:.1f}"),
            ],
        )
    )


@features_app.command("apply")
def features_apply(home: HomeOption = None) -> None:
    """Register the entity, sources, feature views and services in the Feast registry."""
    from feature_repo.store import apply

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
    from feature_repo.store import materialize

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


# --- demo ---------------------------------------------------------------------------------


@app.command()
def demo(
    customers: Annotated[int, typer.Option(help="Customers to simulate.")] = 4000,
    days: Annotated[int, typer.Option(help="Days of history.")] = 365,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 7,
    home: HomeOption = None,
) -> None:
    """Run the main job on the embedded stores: generate, features, Feast, and a summary."""
    from feature_repo.features import build_features
    from feature_repo.generate import generate as simulate
    from feature_repo.generate import write_generated
    from feature_repo.store import apply, materialize, online_features

    settings = _settings(home)
    settings.ensure_dirs()
    console.rule(f"OmniScore demo in {settings.home}")
    with console.status(f"1/4 generating {customers:,} customers × {days} days"):
        counts = write_generated(settings, simulate(customers, days, seed))
    console.print(
        f"[green]✓[/] generated {counts['events']:,} events for {counts['customers']:,} customers"
    )
    with console.status("2/4 building point-in-time feature snapshots"):
        build = build_features(settings)
    console.print(
        f"[green]✓[/] {build.rows:,} snapshot rows, {len(build.snapshots)} weekly snapshots "
        f"({build.snapshots[0].date()} … {build.snapshots[-1].date()}) in {build.seconds:.1f} s"
    )
    with console.status("3/4 feast apply"):
        summary = apply(settings)
    console.print(
        f"[green]✓[/] feast apply: {len(summary.feature_views)} feature views, services "
        f"{', '.join(summary.feature_services)}"
    )
    with console.status("4/4 feast materialize"):
        report = materialize(settings)
    _print_materialize(report)
    from feature_repo.store import feature_store

    sample = online_features(feature_store(settings), "segments_v1", ["C000001", "C000002"])
    console.print("online features of two customers (segments_v1):")
    console.print(sample.T.head(12).to_string())


def main() -> None:  # pragma: no cover - console entry point alias
    app()
