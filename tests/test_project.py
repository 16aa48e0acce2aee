"""Promises of the repository itself: import direction, generated docs, Makefile help."""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

from feature_repo.catalog import features_markdown

ROOT = Path(__file__).resolve().parents[1]
# Imports run one way, like the data: each package may import only those before it. The event
# schema comes before the feature catalog built on its channels, so the Feast repository may
# import that one module of the data layer, and nothing else of it.
ALLOWED = {
    "feature_repo": set(),
    "data_layer": {"feature_repo"},
    "training": {"data_layer", "feature_repo"},
    "serving": {"data_layer", "feature_repo", "training"},
    "omniscore": {"data_layer", "feature_repo", "training", "serving"},
}
ALLOWED_MODULES = {"feature_repo": {"data_layer.schema"}}


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.split(".")[0] in ALLOWED}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_run_one_way(package: str) -> None:
    offenders = {}
    for path in (ROOT / package).rglob("*.py"):
        wrong = {
            module
            for module in _imported_modules(path) - ALLOWED_MODULES.get(package, set())
            if module.split(".")[0] not in ALLOWED[package] | {package}
        }
        if wrong:
            offenders[str(path.relative_to(ROOT))] = sorted(wrong)
    assert offenders == {}, f"{package} imports up the chain: {offenders}"


def test_only_the_server_start_up_imports_the_service_module() -> None:
    """serving.service reads the serving settings on import (BentoML starts a server by
    importing it); any other importer would read the environment at import time too."""
    importers = [
        str(path.relative_to(ROOT))
        for package in ALLOWED
        for path in (ROOT / package).rglob("*.py")
        if "serving.service" in _imported_modules(path) and path.name != "service.py"
    ]
    assert importers == []


def test_features_doc_matches_catalog() -> None:
    assert (ROOT / "docs" / "features.md").read_text() == features_markdown(), (
        "docs/features.md is stale: run `python -m feature_repo.catalog > docs/features.md`"
    )


def test_make_help_lists_every_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):(?!=)", makefile, flags=re.MULTILINE))
    shown = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    listed = {line.split()[0] for line in shown.splitlines() if line.strip()}
    assert targets <= listed, f"targets missing from `make help`: {targets - listed}"
