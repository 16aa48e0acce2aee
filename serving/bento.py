"""Build a Bento of the scoring service that pins the model versions it was built with.

:func:`build_bento` reads the registry's current ``champion`` versions, writes them to
``serving/pinned_models.json`` (which ``bentofile.yaml`` includes), runs ``bentoml build``
and removes the file again from the working tree. A service started from that Bento loads
exactly those versions from the configured registry (and their SHA-256 is checked as
always) instead of following the alias.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

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


def build_bento(settings: Settings, bentoml_home: str | None = None) -> BentoBuild:
    """``bentoml build`` with the champion versions pinned; returns the Bento's tag.

    ``bentoml_home`` overrides ``$BENTOML_HOME`` (where the Bento store lives). The versions
    are also set as the Bento's labels (``propensity_version`` ...).
    """
    content = pins(settings)
    versions = content["versions"]
    if PINNED_MODELS_FILE.exists():
        raise FileExistsError(f"{PINNED_MODELS_FILE} exists: another build is running?")
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "OMNISCORE_HOME": str(settings.home)}
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    # `bentoml build` imports the service from this checkout, where an unnamed pin file is
    # refused (ServeConfig.from_env): name it, as a deliberate pin.
    env["OMNISCORE_PINNED_MODELS"] = str(PINNED_MODELS_FILE)
    if bentoml_home:
        env["BENTOML_HOME"] = bentoml_home
    command = [sys.executable, "-m", "bentoml", "build", str(REPO_ROOT), "-o", "tag"]
    for model, version in versions.items():
        command += ["--label", f"{model}_version={version}"]
    PINNED_MODELS_FILE.write_text(json.dumps(content, indent=1, sort_keys=True))
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        PINNED_MODELS_FILE.unlink(missing_ok=True)
    if done.returncode != 0:
        raise RuntimeError(f"bentoml build failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    tag = done.stdout.strip().splitlines()[-1].strip()
    tag = tag.removeprefix("__tag__:")
    home = bentoml_home or env.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")
    name, _, version = tag.partition(":")
    return BentoBuild(tag=tag, versions=versions, path=os.path.join(home, "bentos", name, version))
