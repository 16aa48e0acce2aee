"""Ingest throughput: a messy CSV (or Parquet) log of N rows through read → normalise → store.

Run: ``.venv/bin/python -m benchmarks.bench_ingest --rows 1000000``. Prints and returns a dict
of seconds per stage and rows/s; about 1% of the rows are deliberately bad.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data_layer.ingest import IngestMapping, ingest_file, normalise, read_source
from data_layer.schema import to_canonical_table
from data_layer.settings import Settings

MAPPING = IngestMapping(
    columns={
        "user": "customer_id",
        "ts": "event_timestamp",
        "platform": "channel",
        "event": "event_type",
        "value": "amount",
    },
    values={"channel": {"mobile": "app"}, "event_type": {"payment_done": "purchase"}},
    timezone="Europe/Paris",
    currency_column="currency",
    currency_rates={"EUR": 1.08, "GBP": 1.27},
)


def make_source(rows: int, seed: int = 7) -> pd.DataFrame:
    """A seeded source log in a foreign shape: own column names, local naive times, codes."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-01-01").value // 10**9
    seconds = start + rng.integers(0, 365 * 86400, rows)
    ts = pd.to_datetime(seconds, unit="s").strftime("%Y-%m-%dT%H:%M:%S").to_numpy(dtype=object)
    events = np.array(["page_view", "product_view", "add_to_cart", "payment_done", "email_open"])
    event = events[rng.integers(0, len(events), rows)]
    platform = np.array(["web", "mobile", "email", "store"])[rng.integers(0, 4, rows)]
    value = np.where(event == "payment_done", np.round(rng.lognormal(3, 1, rows), 2), np.nan)
    frame = pd.DataFrame(
        {
            "user": rng.integers(1, rows // 20 + 2, rows).astype(str),
            "ts": ts,
            "platform": platform,
            "event": event,
            "value": pd.Series(value).map("{:.2f}".format).where(~np.isnan(value), ""),
            "currency": np.array(["USD", "EUR", "GBP"])[rng.integers(0, 3, rows)],
        }
    )
    bad = rng.random(rows) < 0.01
    frame.loc[bad, "ts"] = "not a time"
    return frame


def run(rows: int, file_format: str = "csv") -> dict:
    """Time each stage on ``rows`` rows and a second, idempotent ingest of the same file."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(Path(tmp) / "home")
        source = make_source(rows)
        path = Path(tmp) / f"log.{file_format}"
        if file_format == "csv":
            source.to_csv(path, index=False)
        else:
            source.to_parquet(path, index=False)
        t0 = time.perf_counter()
        frame = read_source(path)
        t1 = time.perf_counter()
        accepted, quarantined = normalise(frame, MAPPING, path.name)
        t2 = time.perf_counter()
        to_canonical_table(accepted)
        t3 = time.perf_counter()
        first = ingest_file(settings, path, MAPPING)
        t4 = time.perf_counter()
        second = ingest_file(settings, path, MAPPING)
        t5 = time.perf_counter()
    result = {
        "rows": rows,
        "format": file_format,
        "read_s": round(t1 - t0, 2),
        "normalise_s": round(t2 - t1, 2),
        "canonical_table_s": round(t3 - t2, 2),
        "ingest_file_s": round(t4 - t3, 2),
        "reingest_s": round(t5 - t4, 2),
        "ingest_rows_per_s": round(rows / (t4 - t3)),
        "normalise_rows_per_s": round(rows / (t2 - t1)),
        "accepted": first.accepted,
        "duplicates": first.duplicates,
        "quarantined": first.quarantined,
        "reingest_accepted": second.accepted,
        "reingest_duplicates": second.duplicates,
    }
    print(result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--format", choices=("csv", "parquet"), default="csv")
    args = parser.parse_args()
    run(args.rows, args.format)


if __name__ == "__main__":
    main()
