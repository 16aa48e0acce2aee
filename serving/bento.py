"""Build a Bento of the scoring service that pins the model versions it was built with.

:func:`build_bento` reads the registry's current ``champion`` versions, copies the files
``bentofile.yaml`` includes into a staging directory, writes the versions there as
``serving/pinned_models.json`` and runs ``bentoml build`` on that copy. The working tree is
never written, so a build cannot disturb a server or a test started from the checkout, and
two builds can run at once. A service started from that Bento loads exactly those versions
from the configured registry (and their SHA-256 is checked as always) instead of following
the alias.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml

from data_layer.settings import Settings
from serving.config import PINNED_MODELS_FILE
from serving.launcher import REPO_ROOT
from serving.scoring import champion_versions


@dataclass(frozen=True)
class BentoBuild:
    """The Bento :func:`build_bento` made."""

    tag: str
    versions: dict[str, str]
    path: str


def pins(settings: Settings) -> dict:
    """The pin file's content: the champion versions now, and when they were read."""
    return {
        "versions": champion_versions(settings),
        "pinned_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def stage_build_context(staging: Path, content: dict) -> None:
    """Copy what ``bentofile.yaml`` includes into ``staging`` and write the pin file there."""
    bentofile = REPO_ROOT / "bentofile.yaml"
    patterns = yaml.safe_load(bentofile.read_text())["include"]
    shutil.copy2(bentofile, staging / bentofile.name)
    for pattern in patterns:
        for source in REPO_ROOT.glob(pattern):
            target = staging / source.relative_to(REPO_ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pin_file = staging / PINNED_MODELS_FILE.relative_to(REPO_ROOT)
    pin_file.write_text(json.dumps(content, indent=1, sort_keys=True))


def build_bento(settings: Settings, bentoml_home: str | None = None) -> BentoBuild:
    """``bentoml build`` with the champion versions pinned; returns the Bento's tag.

    ``bentoml_home`` overrides ``$BENTOML_HOME`` (where the Bento store lives). The versions
    are also set as the Bento's labels (``propensity_version`` ...).
    """
    content = pins(settings)
    versions = content["versions"]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "OMNISCORE_HOME": str(settings.home)}
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    if bentoml_home:
        env["BENTOML_HOME"] = bentoml_home
    with tempfile.TemporaryDirectory(prefix="omniscore-bento-") as staging:
        stage_build_context(Path(staging), content)
        command = [sys.executable, "-m", "bentoml", "build", staging, "-o", "tag"]
        for model, version in versions.items():
            command += ["--label", f"{model}_version={version}"]
        done = subprocess.run(
            command, cwd=staging, env=env, capture_output=True, text=True, timeout=900
        )
    if done.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    tag = done.stdout.strip().splitlines()[-1].strip()
    tag = tag.removeprefix("__tag__:")
    home = bentoml_home or env.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")
    name, _, version = tag.partition(":")
    return BentoBuild(tag=tag, versions=versions, path=os.path.join(home, "bentos", name, version))
