"""Feast data sources: the feature snapshots written by the feature pipeline.

Each feature view reads one Parquet file, ``$OMNISCORE_HOME/features/<view>.parquet``, holding
every snapshot of that view: ``customer_id``, ``event_timestamp`` (the snapshot time T),
``created_timestamp`` (when the snapshot was built) and the view's features.

Nothing is built at import: :func:`build_sources` takes the folder of one home's snapshots, so
two homes side by side never share a path.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
from feast import FileSource

from feature_repo.catalog import VIEWS, features_of_view
from feature_repo.entities import OWNER

TIMESTAMP_FIELD = "event_timestamp"
CREATED_TIMESTAMP_COLUMN = "created_timestamp"


def snapshot_path(features_dir: Path, view: str) -> Path:
    """The Parquet file holding every snapshot of one feature view."""
    return features_dir / f"{view}.parquet"


def snapshot_schema(view: str) -> pa.Schema:
    """Arrow schema of a view's snapshot file: keys, timestamps, then the view's features."""
    fields = [
        pa.field("customer_id", pa.string()),
        pa.field(TIMESTAMP_FIELD, pa.timestamp("us", tz="UTC")),
        pa.field(CREATED_TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
    ]
    fields += [
        pa.field(f.name, pa.string() if f.dtype == "string" else pa.float64())
        for f in features_of_view(view)
    ]
    return pa.schema(fields)


def source_name(view: str) -> str:
    """Registry name of a view's data source."""
    return f"{view}_snapshots"


def build_source(features_dir: Path, view: str) -> FileSource:
    """The file source over one view's snapshot file in ``features_dir``."""
    return FileSource(
        name=source_name(view),
        path=str(snapshot_path(features_dir, view)),
        timestamp_field=TIMESTAMP_FIELD,
        created_timestamp_column=CREATED_TIMESTAMP_COLUMN,
        description=f"Point-in-time snapshots of the {view} view. {VIEWS[view]}",
        owner=OWNER,
        tags={"view": view, "format": "parquet"},
    )


def build_sources(features_dir: Path) -> dict[str, FileSource]:
    """One file source per feature view of the catalog, keyed by view name."""
    return {view: build_source(features_dir, view) for view in VIEWS}
