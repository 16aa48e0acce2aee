"""Which registered models learned from erased customers: the erasure receipts' model list
and the open obligations of ``omniscore forget --report``.

A model version's training data is described by its run's ``omniscore.cutoffs`` lineage
tag (``train=…;valid=…;test=…`` for classifiers, ``fit=…`` for segments): every row is a
customer seen before one of those instants. A customer whose first event or signup came
before the version's newest cutoff may therefore be in its data; when a version carries no
readable cutoffs, its registration time is the bound (the store then held every customer
seen before it). The rule over-reports rather than misses: a retrain on the erased store is
the remedy either way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from data_layer.erasure import FirstSeen, read_audit
from data_layer.settings import Settings
from training.model_io import registered_name, registry_client
from training.registry import CHAMPION

MODELS = ("propensity", "churn", "segments")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _registry_exists(settings: Settings) -> bool:
    """False for a home whose default SQLite registry was never created (opening it would
    create it, which takes seconds of schema migrations for nothing)."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    return True


def _versions(settings: Settings) -> Iterable[tuple[str, object, pd.Timestamp, str]]:
    """(registered name, version, data bound, run id) of every registered version."""
    from mlflow.exceptions import MlflowException

    if not _registry_exists(settings):
        return
    client = registry_client(settings)
    for model in MODELS:
        name = registered_name(model)
        try:
            versions = client.search_model_versions(f"name='{name}'")
        except MlflowException:
            continue
        for v in versions:
            bound = pd.Timestamp(int(v.creation_timestamp), unit="ms", tz="UTC")
            cutoffs = None
            if v.run_id:
                try:
                    cutoffs = client.get_run(v.run_id).data.tags.get("omniscore.cutoffs")
                except MlflowException:
                    cutoffs = None
            dates = _DATE.findall(cutoffs or "")
            if dates:
                bound = max(pd.Timestamp(d, tz="UTC") for d in dates)
            yield name, v, bound, v.run_id or ""


def versions_trained_on(settings: Settings, first: FirstSeen) -> list[dict]:
    """Registered versions whose data may include the customers of ``first`` (keyed hash →
    first event or signup); each with the ``subjects`` (hashes) it covers."""
    if not first:
        return []
    out = []
    for name, version, bound, run_id in _versions(settings):
        covered = sorted(h for h, seen in first.items() if seen < bound)
        if covered:
            out.append(
                {
                    "name": name,
                    "version": str(version.version),
                    "run_id": run_id,
                    "data_until": bound.isoformat(),
                    "registered_at": pd.Timestamp(
                        int(version.creation_timestamp), unit="ms", tz="UTC"
                    ).isoformat(),
                    "subjects": covered,
                }
            )
    return out


def open_obligations(settings: Settings, now: pd.Timestamp | None = None) -> list[dict]:
    """Champion versions trained on data of erased customers, with their age in days.

    Read from the audit log's receipts and the registry's current aliases: once a retrained
    version (on the erased store) becomes champion, the obligation disappears."""
    now = pd.Timestamp.now(tz="UTC") if now is None else pd.Timestamp(now)
    tainted: dict[tuple[str, str], dict] = {}
    for receipt in read_audit(settings):
        if receipt.get("kind") != "forget":
            continue
        for m in receipt.get("model_versions", []):
            entry = tainted.setdefault(
                (m["name"], str(m["version"])), {**m, "erased_customers": 0, "requests": 0}
            )
            entry["requests"] += 1
            entry["erased_customers"] += len(receipt.get("subjects", []))
    if not tainted or not _registry_exists(settings):
        return []
    from mlflow.exceptions import MlflowException

    client = registry_client(settings)
    out = []
    for model in MODELS:
        name = registered_name(model)
        try:
            champion = client.get_model_version_by_alias(name, CHAMPION)
        except MlflowException:
            continue
        entry = tainted.get((name, str(champion.version)))
        if entry is None:
            continue
        registered = pd.Timestamp(int(champion.creation_timestamp), unit="ms", tz="UTC")
        out.append(
            {
                "name": name,
                "version": str(champion.version),
                "registered_at": registered.isoformat(),
                "age_days": round((now - registered).total_seconds() / 86400, 1),
                "requests": entry["requests"],
                "erased_customers_at_most": entry["erased_customers"],
            }
        )
    return out
