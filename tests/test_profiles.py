"""Profile tables: `omniscore ingest-customers`, extra profile features, point-in-time profiles.

Every test writes a tiny hand-made customers file (and, where features are computed, a tiny
event log) under ``tmp_path`` and loads it into a home there, through the real stores.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import feature_repo.catalog as catalog
import training.datasets
from data_layer.event_store import read_customers, read_events, read_profile_extras
from data_layer.feature_pipeline import build_features, compute_snapshots, read_snapshots
from data_layer.ingest import (
    CONFLICTING_PROFILE,
    CustomerMapping,
    IngestMapping,
    ingest_customers_file,
    ingest_file,
)
from data_layer.settings import Settings
from feature_repo.repository import build_definitions

NOW = pd.Timestamp("2025-09-01T00:00:00Z")


def write_text(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def builtin_catalog():
    """Each test starts and ends with the built-in catalog (extras are process-wide)."""
    catalog.use_profile_extras({})
    yield
    catalog.use_profile_extras({})


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env(tmp_path / "home")


CRM_CSV = """
client,joined,tier,region,changed_at,lifetime_value,segment
c1,2025-01-05,silver,north,2025-01-05T00:00:00Z,120.5,hobby
c1,2025-01-05,gold,north,2025-05-10T00:00:00Z,480,hobby
c2,2025-02-01,,south,2025-02-01T00:00:00Z,,pro
,2025-02-01,bronze,south,2025-02-01T00:00:00Z,10,pro
c3,01/02/2025,bronze,east,2025-02-01T00:00:00Z,10,pro
c4,2025-02-01,bronze,east,2025-02-01T00:00:00Z,lots,pro
c5,2025-03-01,bronze,west,,5,pro
c6,2025-03-01,bronze,west,2025-03-01T00:00:00Z,5,pro
c6,2025-03-01,gold,west,2025-03-01T00:00:00Z,5,pro
"""
CRM_MAPPING = CustomerMapping(
    columns={
        "client": "customer_id",
        "joined": "signup_date",
        "tier": "loyalty_tier",
        "changed_at": "valid_from",
    },
    extras={"lifetime_value": "numeric", "segment": "categorical"},
)


def test_customers_file_is_validated_quarantined_and_loaded_once(settings, tmp_path):
    path = write_text(tmp_path / "crm.csv", CRM_CSV)
    report = ingest_customers_file(settings, path, CRM_MAPPING)

    assert (report.rows_read, report.accepted, report.duplicates, report.quarantined) == (
        9,
        4,
        0,
        5,
    )
    assert report.reasons == {
        "missing customer_id": 1,
        "unparseable signup_date": 1,
        "non-numeric lifetime_value: lots": 1,
        "missing valid_from": 1,
        CONFLICTING_PROFILE: 1,
    }
    quarantine = pq.read_table(report.quarantine_path).to_pandas().set_index("source_row")
    assert quarantine.loc[5, "joined"] == "01/02/2025"  # original values, as written
    assert quarantine.loc[9, "reason"] == CONFLICTING_PROFILE  # c6's second row at one instant

    table = read_customers(settings).set_index(["customer_id", "valid_from"])
    assert len(table) == 4
    c1_may = table.loc[("c1", pd.Timestamp("2025-05-10", tz="UTC"))]
    assert (c1_may["loyalty_tier"], c1_may["lifetime_value"], c1_may["segment"]) == (
        "gold",
        480.0,
        "hobby",
    )
    assert c1_may["signup_date"] == pd.Timestamp("2025-01-05", tz="UTC")
    c2 = table.loc[("c2", pd.Timestamp("2025-02-01", tz="UTC"))]
    assert pd.isna(c2["loyalty_tier"]) and pd.isna(c2["lifetime_value"])
    assert read_profile_extras(settings) == {"lifetime_value": "numeric", "segment": "categorical"}

    again = ingest_customers_file(settings, path, CRM_MAPPING)
    assert (again.accepted, again.duplicates, again.quarantined) == (0, 4, 5)
    assert len(read_customers(settings)) == 4
    assert again.quarantine_path == report.quarantine_path

    # A corrected row for a known (customer, valid_from) replaces it; a new instant adds one.
    fix = write_text(
        tmp_path / "fix.jsonl",
        """
        {"client": "c2", "joined": "2025-02-01", "tier": "silver", "region": "south", "changed_at": "2025-02-01T00:00:00Z", "lifetime_value": 3, "segment": "pro"}
        {"client": "c2", "joined": "2025-02-01", "tier": "gold", "region": "south", "changed_at": "2025-08-01T00:00:00Z", "lifetime_value": 9, "segment": "pro"}
        """,  # noqa: E501
    )
    fixed = ingest_customers_file(settings, fix, CRM_MAPPING)
    assert (fixed.accepted, fixed.duplicates, fixed.quarantined) == (2, 0, 0)
    c2_rows = read_customers(settings).query("customer_id == 'c2'")
    assert c2_rows["loyalty_tier"].tolist() == ["silver", "gold"]


def test_customers_from_parquet_and_whole_file_errors(settings, tmp_path):
    frame = pd.DataFrame(
        {
            "customer_id": [7, 8],  # integer ids become their decimal strings
            "signup_date": pd.to_datetime(["2025-01-01", "2025-01-02"], utc=True),
            "region": ["north", None],
        }
    )
    path = tmp_path / "customers.parquet"
    frame.to_parquet(path)
    report = ingest_customers_file(settings, path, CustomerMapping(static=True), now=NOW)
    assert (report.accepted, report.quarantined) == (2, 0)
    stored = read_customers(settings)
    assert stored["customer_id"].tolist() == ["7", "8"]
    assert stored["valid_from"].isna().all()  # static: valid since before any snapshot

    # Without valid_from and without `static`, rows are valid from the ingest only.
    later = ingest_customers_file(settings, path, CustomerMapping(), now=NOW)
    assert later.accepted == 2
    assert (read_customers(settings)["valid_from"].dropna() == NOW).sum() == 2

    no_id = write_text(tmp_path / "no_id.csv", "client_no,region\n1,north\n")
    with pytest.raises(ValueError, match="missing required column: customer_id"):
        ingest_customers_file(settings, no_id, CustomerMapping(columns={"id": "customer_id"}))
    with pytest.raises(ValueError, match="missing required column: tier_score"):
        ingest_customers_file(settings, path, CustomerMapping(extras={"tier_score": "numeric"}))
    with pytest.raises(ValueError, match="kind 'ordinal' is not one of"):
        CustomerMapping(extras={"x": "ordinal"}).validate()
    with pytest.raises(ValueError, match="'purchases_90d' is already a catalog feature"):
        CustomerMapping(extras={"purchases_90d": "numeric"}).validate()
    with pytest.raises(ValueError, match="unknown mapping key"):
        CustomerMapping.from_dict({"colums": {}})
    # A declared extra cannot change kind later.
    write_text(tmp_path / "x.csv", "customer_id,score\na,1\n")
    ingest_customers_file(
        settings, tmp_path / "x.csv", CustomerMapping(extras={"score": "numeric"}), now=NOW
    )
    with pytest.raises(ValueError, match="stored as numeric"):
        ingest_customers_file(
            settings, tmp_path / "x.csv", CustomerMapping(extras={"score": "categorical"})
        )
    # A file of one attribute does not blank the others: they keep the latest stored values.
    write_text(tmp_path / "y.csv", "customer_id,score\n7,3\n")
    mapping = CustomerMapping(extras={"score": "numeric"}, static=True)
    assert ingest_customers_file(settings, tmp_path / "y.csv", mapping).accepted == 1
    seven = read_customers(settings).query("customer_id == '7'").set_index("valid_from")
    first = seven.loc[seven.index.isna()].iloc[0]
    assert (first["score"], first["region"]) == (3.0, "north")
    assert first["signup_date"] == pd.Timestamp("2025-01-01", tz="UTC")
    assert len(seven) == 2  # the static version (replaced) and the one valid from NOW


EVENTS_CSV = """
customer_id,event_timestamp,channel,event_type,amount
c1,2025-02-10T10:00:00Z,web,page_view,
c1,2025-06-01T10:00:00Z,store,purchase,30
c2,2025-02-10T10:00:00Z,app,app_open,
"""


def test_profile_attributes_are_taken_point_in_time(settings, tmp_path):
    ingest_file(settings, write_text(tmp_path / "events.csv", EVENTS_CSV), IngestMapping())
    ingest_customers_file(settings, write_text(tmp_path / "crm.csv", CRM_CSV), CRM_MAPPING)
    settings = Settings.from_env(settings.home)  # a later command: the home's extras apply

    times = ["2025-03-15", "2025-05-10", "2025-05-11", "2025-07-01"]
    snaps = compute_snapshots(read_events(settings), read_customers(settings), times)
    c1 = snaps[snaps["customer_id"] == "c1"].set_index("event_timestamp")
    t = [pd.Timestamp(x, tz="UTC") for x in times]
    # The tier set on 10 May is not seen in March, nor at 10 May 00:00 itself (strictly before).
    assert c1.loc[t[0], "loyalty_tier"] == "silver" and c1.loc[t[0], "lifetime_value"] == 120.5
    assert c1.loc[t[1], "loyalty_tier"] == "silver"
    assert c1.loc[t[2], "loyalty_tier"] == "gold" and c1.loc[t[2], "lifetime_value"] == 480.0
    assert c1.loc[t[3], "segment"] == "hobby" and c1.loc[t[3], "region"] == "north"
    # Tenure runs from the signup date (5 January), present from the first version on.
    assert c1.loc[t[0], "tenure_days"] == (t[0] - pd.Timestamp("2025-01-05", tz="UTC")).days
    # c6 (signed up 1 March, one row valid from then) is a customer at 15 March, with no events.
    c6 = snaps[snaps["customer_id"] == "c6"].set_index("event_timestamp")
    assert c6.loc[t[0], "loyalty_tier"] == "bronze" and c6.loc[t[0], "purchases_90d"] == 0
    # Before any customer's signup or events, there is no row at all; c1 sees January's tier.
    early = compute_snapshots(read_events(settings), read_customers(settings), ["2025-01-20"])
    assert early[early["customer_id"] == "c1"]["loyalty_tier"].tolist() == ["silver"]
    assert early[early["customer_id"] == "c2"].empty  # signed up 1 February

    # The batch build writes the extras into the profile view's snapshots.
    build_features(settings, at=times)
    profile = read_snapshots(settings, "profile")
    assert {"lifetime_value", "segment"} <= set(profile.columns)
    march = profile[profile["event_timestamp"] == t[0]].set_index("customer_id")
    assert march.loc["c1", "loyalty_tier"] == "silver"
    assert march.loc["c1", "segment"] == "hobby"


def test_declared_extras_reach_the_catalog_feast_views_and_training(settings, tmp_path):
    ingest_customers_file(settings, write_text(tmp_path / "crm.csv", CRM_CSV), CRM_MAPPING)
    catalog.use_profile_extras({})
    settings = Settings.from_env(settings.home)  # where every command and job reads the home

    names = [f.name for f in catalog.features_of_view("profile")]
    assert names[-2:] == ["lifetime_value", "segment"]
    assert catalog.FEATURES_BY_NAME["lifetime_value"].dtype == "float"
    assert "segment" in catalog.service_features("propensity_v1")
    assert "segment" in catalog.service_features("churn_v1")
    # Training decides which columns are categorical from the same (updated) list.
    assert "segment" in training.datasets.CATEGORICAL_FEATURES
    assert "lifetime_value" not in training.datasets.CATEGORICAL_FEATURES

    objects = build_definitions(settings.features_dir)
    view = next(o for o in objects if getattr(o, "name", None) == "profile" and o.features)
    fields = {f.name: str(f.dtype) for f in view.features}
    assert "lifetime_value" in fields and "segment" in fields
    service = next(o for o in objects if getattr(o, "name", None) == "propensity_v1")
    projected = {f.name for p in service.feature_view_projections for f in p.features}
    assert {"lifetime_value", "segment"} <= projected

    # Another home without extras gets the built-in catalog back.
    Settings.from_env(tmp_path / "other")
    assert "segment" not in catalog.FEATURE_NAMES
    assert list(catalog.BUILTIN_FEATURES) == catalog.FEATURES


def test_cli_ingest_customers(tmp_path):
    from omniscore.cli import app

    home = tmp_path / "home"
    path = write_text(tmp_path / "crm.csv", CRM_CSV)
    mapping = write_text(
        tmp_path / "customers.yaml",
        """
        columns: {client: customer_id, joined: signup_date, tier: loyalty_tier, changed_at: valid_from}
        extras: {lifetime_value: numeric, segment: categorical}
        """,  # noqa: E501
    )
    runner = CliRunner()
    result = runner.invoke(
        app, ["ingest-customers", str(path), "--mapping", str(mapping), "--home", str(home)]
    )
    assert result.exit_code == 0, result.output
    assert "9 rows read → 4 accepted, 0 duplicates, 5 quarantined" in result.output
    assert "profile feature  segment (categorical)" in result.output
    bad = write_text(tmp_path / "bad.yaml", "extras: {segment: ordinal}\n")
    result = runner.invoke(
        app, ["ingest-customers", str(path), "--mapping", str(bad), "--home", str(home)]
    )
    assert result.exit_code == 2
    assert "kind 'ordinal' is not one of" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_declared_extras_reach_the_training_set_and_a_trained_model(copy_world, tmp_path):
    from training_home import rebuild_features

    from data_layer.feast_store import apply
    from training.datasets import build_training_set
    from training.train import train_model

    settings = copy_world(tmp_path / "home")
    ids = sorted(read_customers(settings)["customer_id"].unique())
    rows = ["customer_id,segment,score"]
    rows += [f"{c},{'pro' if i % 3 else 'hobby'},{i % 7}" for i, c in enumerate(ids)]
    path = tmp_path / "extras.csv"
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    mapping = CustomerMapping(extras={"segment": "categorical", "score": "numeric"}, static=True)
    report = ingest_customers_file(settings, path, mapping)
    assert report.accepted == len(ids)
    assert read_customers(settings)["signup_date"].notna().all()  # kept from the world

    settings = Settings.from_env(settings.home)  # what `omniscore train` does first
    rebuild_features(settings)
    apply(settings)
    ts = build_training_set(settings, "propensity")
    assert {"segment", "score"} <= set(ts.feature_names)
    assert "segment" in ts.categorical and "score" not in ts.categorical
    assert set(ts.frame["segment"].dropna()) == {"pro", "hobby"}
    assert ts.frame["score"].notna().all()

    result = train_model(settings, "propensity", trials=1, seed=1, n_cutoffs=4, register=False)
    assert result.feature_service == "propensity_v1" and "test_roc_auc" in result.metrics
