"""Shared test fixtures. Keep additions additive: other test modules rely on these."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from feature_repo.catalog import VIEWS, features_of_view
from feature_repo.config import Settings
from feature_repo.data_sources import snapshot_path, snapshot_schema

# --- hand-made feature snapshots (tests/test_feast_store.py) ----------------------------------

SNAPSHOT_TIMES = (
    pd.Timestamp("2026-10-05", tz="UTC"),
    pd.Timestamp("2026-10-12", tz="UTC"),
    pd.Timestamp("2026-10-19", tz="UTC"),
)
"""Three weekly snapshot times T1 < T2 < T3 of the hand-made snapshot set."""

EDGE_FLOATS = (-0.0, math.inf, -math.inf, 1e-300, 1.7976931348623157e308, 0.1, 5e-324, 1e16)
EDGE_STRINGS = ("", "é" * 100, "北京", "x")
SNAPSHOT_PRESENCE = {"c1": (0, 1, 2), "c2": (0, 1, 2), "c3": (0,), "c4": (2,)}
"""Which snapshot times (indexes into SNAPSHOT_TIMES) each hand-made customer has."""


@dataclass
class SnapshotHome:
    """A home holding hand-made snapshot files, and the rows written into them."""

    settings: Settings
    frames: dict[str, pd.DataFrame]
    """Every snapshot row of each view, as read back from its Parquet file."""

    def latest(self, view: str, customer: str, until: pd.Timestamp) -> dict | None:
        """The newest snapshot row of ``customer`` in ``view`` at or before ``until``."""
        frame = self.frames[view]
        hit = frame[(frame["customer_id"] == customer) & (frame["event_timestamp"] <= until)]
        return None if hit.empty else hit.sort_values("event_timestamp").iloc[-1].to_dict()


def _hand_made_value(feature_index: int, dtype: str, customer: str, t: int, shift: float):
    """Known value of one feature: ordinary floats are exact binary fractions."""
    if customer == "c4":  # edge values the online encoding must keep bit for bit
        pool = EDGE_FLOATS if dtype == "float" else EDGE_STRINGS
        return pool[feature_index % len(pool)]
    if customer == "c2" and t == 2 and feature_index % 3 == 0:
        return None
    if dtype == "string":
        return f"{customer}-t{t + 1}-{feature_index}"
    return 100.0 * int(customer[1:]) + 10.0 * t + feature_index / 8 + shift


def write_hand_made_snapshots(home: Path, shift: float = 0.0) -> SnapshotHome:
    """Write every view's snapshot file in the feature pipeline's contract format.

    c1 and c2 have snapshots at T1, T2 and T3 (c2's T3 has nulls), c3 only at T1, c4 only at
    T3 with edge values (-0.0, ±inf, subnormals, empty and multi-byte strings). ``shift`` is
    added to every ordinary float, so two homes can hold different values.
    """
    settings = Settings.from_env(home)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    frames = {}
    for view in VIEWS:
        rows = []
        for customer, times in SNAPSHOT_PRESENCE.items():
            for t in times:
                at = SNAPSHOT_TIMES[t]
                row = {
                    "customer_id": customer,
                    "event_timestamp": at,
                    "created_timestamp": at + pd.Timedelta(hours=3),
                }
                for j, feature in enumerate(features_of_view(view)):
                    row[feature.name] = _hand_made_value(j, feature.dtype, customer, t, shift)
                rows.append(row)
        table = pa.Table.from_pandas(
            pd.DataFrame(rows), schema=snapshot_schema(view), preserve_index=False
        )
        pq.write_table(table, snapshot_path(settings, view))
        frames[view] = table.to_pandas()
    return SnapshotHome(settings=settings, frames=frames)


@pytest.fixture
def snapshot_home(tmp_path) -> SnapshotHome:
    """A fresh home under tmp_path with the hand-made snapshot files (nothing applied yet)."""
    return write_hand_made_snapshots(tmp_path / "home")


@pytest.fixture(scope="session")
def make_snapshot_home():
    """Factory for further homes: ``make_snapshot_home(path, shift=0.0) -> SnapshotHome``."""
    return write_hand_made_snapshots
