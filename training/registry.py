"""The model registry workflow: register challengers, gate promotions, roll back.

Names come from the model contract (``omniscore-propensity``, ``omniscore-churn``,
``omniscore-segments``). Every new version gets the alias ``challenger`` and a description of
what it was trained on. :func:`promote` scores the challenger and the champion on the latest
out-of-time cutoff, each classifier with the label definition it was trained with (recorded
on the version), and moves ``champion`` only when the gate passes (:func:`gate`): AUC not
below the champion's minus a tolerance and calibration (ECE) within bounds; a first version
must meet absolute minimums. ``force`` with a reason overrides the gate. Each decision is
written as tags on the versions involved, and the registered model keeps the champion
history that :func:`rollback` walks back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from data_layer.settings import Settings
from training.contract import contract, registered_name
from training.model_io import (
    KIND_TAG,
    PACKAGE_KINDS,
    SEGMENTS_PACKAGE,
    SERVICE_TAG,
    SHA_TAG,
    LoadedModel,
    load_version,
    registry_client,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "omniscore.champion_history"
CHALLENGER_ATTEMPTS = 5
"""How many times a registration points ``challenger`` at the newest version before giving up
(each further attempt means another registration wrote the alias in between)."""


@dataclass(frozen=True)
class GatePolicy:
    """Thresholds of the promotion gate.

    Classifiers: the challenger's AUC must be at least the champion's minus
    ``auc_tolerance`` and its ECE at most ``max_ece``; a first version needs ``min_auc``.
    Segments: silhouette at least the champion's minus ``silhouette_tolerance``; a first
    version needs ``min_silhouette``.
    """

    auc_tolerance: float = 0.01
    max_ece: float = 0.05
    min_auc: float = 0.60
    silhouette_tolerance: float = 0.05
    min_silhouette: float = 0.05


@dataclass
class PromotionDecision:
    """What :func:`promote` decided and why; also written as tags on the versions."""

    model_name: str
    challenger_version: str
    previous_champion: str | None
    promoted: bool
    forced: bool
    reason: str
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    evaluated_on: str
    champion_after: str | None
    decided_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def as_dict(self) -> dict:
        """JSON-ready form (for the CLI's summary and the notebooks)."""
        return asdict(self)


@dataclass
class RollbackResult:
    """Which version :func:`rollback` demoted and which one is champion again."""

    model_name: str
    from_version: str
    to_version: str


def full_name(model: str) -> str:
    """Registered name of a model given its short name (``churn``) or full name."""
    return registered_name(model)


def gate(
    kind: str,
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    policy: GatePolicy = GatePolicy(),
) -> tuple[bool, str]:
    """Pure promotion rule: (passes, why), from metrics on the same evaluation cutoff.

    ``kind`` is the package kind (:attr:`~training.model_io.LoadedModel.kind`).
    """
    if kind == SEGMENTS_PACKAGE:
        sil = challenger.get("silhouette", float("nan"))
        if not math.isfinite(sil):
            return False, "challenger silhouette is undefined"
        if champion is None:
            if sil < policy.min_silhouette:
                return (
                    False,
                    f"first version: silhouette {sil:.3f} < minimum {policy.min_silhouette}",
                )
            return True, f"first version meets minimums (silhouette {sil:.3f})"
        floor = champion["silhouette"] - policy.silhouette_tolerance
        if sil < floor:
            return (
                False,
                f"silhouette {sil:.3f} < champion {champion['silhouette']:.3f} - tolerance",
            )
        return True, f"silhouette {sil:.3f} >= champion {champion['silhouette']:.3f} - tolerance"
    auc, ece = challenger.get("roc_auc", float("nan")), challenger.get("ece", float("nan"))
    if not (math.isfinite(auc) and math.isfinite(ece)):
        return False, "challenger AUC or ECE is undefined on the evaluation cutoff"
    if ece > policy.max_ece:
        return False, f"calibration out of bounds: ECE {ece:.3f} > {policy.max_ece}"
    if champion is None:
        if auc < policy.min_auc:
            return False, f"first version: AUC {auc:.3f} < minimum {policy.min_auc}"
        return True, f"first version meets minimums (AUC {auc:.3f}, ECE {ece:.3f})"
    floor = champion["roc_auc"] - policy.auc_tolerance
    if auc < floor:
        return (
            False,
            f"AUC {auc:.4f} < champion {champion['roc_auc']:.4f} - {policy.auc_tolerance}",
        )
    return True, f"AUC {auc:.4f} >= champion {champion['roc_auc']:.4f} - {policy.auc_tolerance}"


# --- registering ----------------------------------------------------------------------------
def register_package(
    settings: Settings,
    model: str,
    package_dir: Path,
    *,
    experiment_id: str,
    run_id: str,
    hashes: dict[str, str],
    description: str,
    tags: dict[str, str],
):
    """Log a package directory as an MLflow logged model, register it, alias ``challenger``.

    The version carries the tags ``omniscore.sha256`` (JSON of file -> SHA-256),
    ``omniscore.kind`` and ``omniscore.feature_service`` plus ``tags``. ``challenger`` ends on
    the newest version of the model even when several jobs register at the same moment
    (:func:`_point_challenger_at_newest`). Returns the ``ModelVersion``.
    """
    from mlflow.exceptions import MlflowException

    client = registry_client(settings)
    terms = contract(model)
    name = terms.registered_name
    kind = PACKAGE_KINDS[terms.kind]
    logged = client.create_logged_model(
        experiment_id, name=terms.name, source_run_id=run_id, model_type=kind
    )
    client.log_model_artifacts(logged.model_id, str(package_dir))
    client.finalize_logged_model(logged.model_id, "READY")
    try:
        client.create_registered_model(name, description=f"OmniScore {terms.name}: {terms.summary}")
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version_tags = {SHA_TAG: json.dumps(hashes, sort_keys=True), KIND_TAG: kind, **tags}
    mv = client.create_model_version(
        name,
        # The artifact location, not models:/<id>: MLflow resolves the latter with a client on
        # the global tracking URI, which is not this home's.
        source=logged.artifact_location,
        run_id=run_id,
        tags=version_tags,
        description=description,
        model_id=logged.model_id,
    )
    _point_challenger_at_newest(client, name, str(mv.version))
    return client.get_model_version(name, str(mv.version))


def _newest_version(client, name: str) -> int:
    (newest,) = client.search_model_versions(
        f"name='{name}'", max_results=1, order_by=["version_number DESC"]
    )
    return int(newest.version)


def _point_challenger_at_newest(client, name: str, version: str) -> None:
    """Leave ``challenger`` on the newest version of ``name`` (``version`` is ours).

    Aliases are last-writer-wins, so two registrations at the same moment can land their
    writes in either order. After each write the alias and then the newest version number are
    read back: if the alias names the newest version (ours or a newer job's), we are done;
    if it is behind (our write of an older version landed after a newer job's), the newest
    version is written again. A version created after our read-back is written by its own
    job after ours, so the last write of all names the newest version. Raises
    ``RuntimeError`` after :data:`CHALLENGER_ATTEMPTS` writes that each fell behind.
    """
    target, now = version, None
    for _ in range(CHALLENGER_ATTEMPTS):
        if not _write_alias(client, name, CHALLENGER, target):
            continue  # another job created the alias at the same moment: write it again
        now = int(_alias_version(client, name, CHALLENGER) or 0)
        newest = _newest_version(client, name)
        if now >= newest:
            return
        target = str(newest)
    raise RuntimeError(
        f"alias {CHALLENGER} of {name} still points to version {now}, behind the newest, after "
        f"{CHALLENGER_ATTEMPTS} attempts: other registrations keep moving it"
    )


def _set_alias_checked(client, name: str, alias: str, version: str) -> None:
    """Point ``alias`` at ``version`` and refuse if another writer moved it meanwhile.

    Used for ``champion``: a promotion or rollback racing another one must not report a
    champion that is not the one serving, so a mismatch raises instead of being retried.
    """
    written = _write_alias(client, name, alias, version)
    now = _alias_version(client, name, alias)
    if not written or now != str(version):
        raise RuntimeError(
            f"alias {alias} of {name} was moved to version {now} by another writer while this "
            f"process set it to {version}; nothing was retried: check "
            f"`omniscore promote`/`rollback` runs in progress, then run this command again"
        )


def _write_alias(client, name: str, alias: str, version: str) -> bool:
    """Point ``alias`` at ``version``; False when the write lost a race to create the alias.

    MLflow's SQL registry writes an alias as a read, then an insert or an update. Two writers
    that both read "no alias yet" both insert, and the second fails on the alias table's
    unique key (measured on PostgreSQL: 27 of 30 pairs released by one barrier). The alias
    then exists, so the loser's next write is an update. Any other error is raised.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        text = str(exc).lower()
        duplicate = "duplicate key" in text or "unique constraint" in text
        if duplicate and "registered_model_alias" in text:
            return False
        raise
    return True


def _alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def _history(client, name: str) -> list[str]:
    tags = client.get_registered_model(name).tags or {}
    return list(json.loads(tags.get(HISTORY_TAG, "[]")))


# --- promotion ------------------------------------------------------------------------------
def default_evaluator(settings: Settings) -> Callable[[LoadedModel], tuple[dict[str, float], str]]:
    """Scores a loaded model on the latest out-of-time cutoff (features from Feast).

    Returns a function model -> (metrics, description of the cutoff). A classifier is scored
    on the label definition it was trained with (:func:`version_label_spec`): a churn model
    trained with ``--horizon-days 30`` is judged on 30-day labels, whatever the default. The
    evaluation rows are built once per feature service and label, so a champion and a
    challenger trained on the same definition see the same customers, cutoff and labels.
    """
    from training.datasets import evaluation_set
    from training.evaluate import classification_metrics
    from training.segments import evaluate_segments

    client = registry_client(settings)
    cache: dict[tuple, tuple] = {}

    def evaluate(loaded: LoadedModel) -> tuple[dict[str, float], str]:
        model = contract(loaded.name).name
        spec = None
        if loaded.kind != SEGMENTS_PACKAGE:
            spec = version_label_spec(client, model, loaded.tags, loaded.run_id)
        key = (model, loaded.feature_service, spec)
        if key not in cache:
            cache[key] = evaluation_set(settings, model, loaded.feature_service, spec)
        frame, y, cutoff = cache[key]
        if loaded.kind == SEGMENTS_PACKAGE:
            return evaluate_segments(loaded.segments, frame, seed=0), cutoff
        return classification_metrics(y, loaded.predict_proba(frame)), cutoff

    return evaluate


def version_label_spec(client, model: str, tags: dict[str, str], run_id: str | None):
    """The label definition a classifier version was trained with: its version tags, else
    its training run's parameters, else the contract's defaults
    (:func:`~training.labels.recorded_label_spec`)."""
    from mlflow.exceptions import MlflowException

    from training.labels import HORIZON_TAG, recorded_label_spec

    params: dict[str, str] = {}
    if HORIZON_TAG not in tags and run_id:
        try:
            params = dict(client.get_run(run_id).data.params)
        except MlflowException:
            params = {}  # the run was deleted: only the defaults are left
    return recorded_label_spec(model, tags, params)


def promote(
    settings: Settings,
    model: str,
    force: bool = False,
    reason: str | None = None,
    policy: GatePolicy = GatePolicy(),
    evaluator: Callable[[LoadedModel], tuple[dict[str, float], str]] | None = None,
) -> PromotionDecision:
    """Gate the ``challenger`` of a model against its ``champion`` and move the alias.

    ``omniscore promote MODEL [--force --reason TEXT]`` calls this. ``force`` without a
    non-empty ``reason`` raises ``ValueError``. The evaluator defaults to
    :func:`default_evaluator` (latest out-of-time cutoff). The decision (when, from which
    version, metrics of both, reason) is written as ``promotion.*`` tags on the challenger and
    ``demotion.*`` tags on a replaced champion.
    """
    if force and not (reason and reason.strip()):
        raise ValueError("--force needs --reason: say why the gate is being overridden")
    client = registry_client(settings)
    name = full_name(model)
    challenger_v = _alias_version(client, name, CHALLENGER)
    if challenger_v is None:
        raise LookupError(f"{name} has no '{CHALLENGER}' version: run `omniscore train` first")
    champion_v = _alias_version(client, name, CHAMPION)
    evaluate = evaluator or default_evaluator(settings)
    challenger = load_version(settings, name, challenger_v)
    kind = challenger.kind
    if champion_v == challenger_v:
        metrics, cutoff = evaluate(challenger)
        return PromotionDecision(
            name, challenger_v, champion_v, False, False,
            "challenger is already the champion", metrics, metrics, cutoff, champion_v,
        )  # fmt: skip
    challenger_metrics, cutoff = evaluate(challenger)
    champion_metrics = None
    if champion_v is not None:
        champion_metrics, champion_cutoff = evaluate(load_version(settings, name, champion_v))
        if champion_cutoff != cutoff:
            # Trained on different label definitions: each is judged on its own.
            cutoff = f"challenger {cutoff}; champion {champion_cutoff}"
    passed, why = gate(kind, challenger_metrics, champion_metrics, policy)
    promoted = passed or force
    if force and not passed:
        why = f"forced over the gate ({why}): {reason}"
    elif reason:
        why = f"{why}; note: {reason}"
    decision = PromotionDecision(
        model_name=name,
        challenger_version=challenger_v,
        previous_champion=champion_v,
        promoted=promoted,
        forced=force and not passed,
        reason=why,
        challenger_metrics=_round(challenger_metrics),
        champion_metrics=_round(champion_metrics) if champion_metrics else None,
        evaluated_on=cutoff,
        champion_after=challenger_v if promoted else champion_v,
    )
    _record_decision(client, decision)
    if promoted:
        _set_alias_checked(client, name, CHAMPION, challenger_v)
        history = _history(client, name)
        history.append(challenger_v)
        client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    return decision


def _round(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 5) for k, v in metrics.items()}


def _record_decision(client, d: PromotionDecision) -> None:
    verdict = "forced" if d.forced else "promoted" if d.promoted else "refused"
    tags = {
        "promotion.decision": verdict,
        "promotion.at": d.decided_at,
        "promotion.from_version": d.previous_champion or "none",
        "promotion.evaluated_on": d.evaluated_on,
        "promotion.metrics": json.dumps(
            {"challenger": d.challenger_metrics, "champion": d.champion_metrics}, sort_keys=True
        ),
        "promotion.reason": d.reason[:4000],
    }
    for key, value in tags.items():
        client.set_model_version_tag(d.model_name, d.challenger_version, key, value)
    if d.promoted and d.previous_champion:
        for key, value in {
            "demotion.at": d.decided_at,
            "demotion.replaced_by": d.challenger_version,
        }.items():
            client.set_model_version_tag(d.model_name, d.previous_champion, key, value)


def rollback(settings: Settings, model: str) -> RollbackResult:
    """Point ``champion`` back at the previous champion (``omniscore rollback MODEL``).

    The champion history is the ``omniscore.champion_history`` tag of the registered model;
    the demoted version is tagged ``rollback.*``. Raises ``LookupError`` when there is no
    earlier champion to restore.
    """
    client = registry_client(settings)
    name = full_name(model)
    current = _alias_version(client, name, CHAMPION)
    history = _history(client, name)
    if current is None or len(history) < 2:
        raise LookupError(f"{name} has no previous champion to roll back to")
    if history[-1] != current:
        # The alias was moved outside promote(): trust the alias, not the stale history.
        history.append(current)
    history.pop()
    previous = history[-1]
    _set_alias_checked(client, name, CHAMPION, previous)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history))
    at = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(name, current, "rollback.at", at)
    client.set_model_version_tag(name, current, "rollback.restored_version", previous)
    client.set_model_version_tag(name, previous, "rollback.restored_at", at)
    return RollbackResult(name, current, previous)


def describe(settings: Settings, model: str) -> dict[str, object]:
    """Versions of a registered model with their aliases and decision tags (for the CLI)."""
    client = registry_client(settings)
    name = full_name(model)
    versions = client.search_model_versions(f"name='{name}'")
    return {
        "name": name,
        "champion": _alias_version(client, name, CHAMPION),
        "challenger": _alias_version(client, name, CHALLENGER),
        "versions": [
            {
                "version": str(v.version),
                "aliases": list(v.aliases or []),
                "feature_service": (v.tags or {}).get(SERVICE_TAG),
                "decision": (v.tags or {}).get("promotion.decision"),
                "description": v.description,
            }
            for v in sorted(versions, key=lambda v: int(v.version))
        ],
    }
