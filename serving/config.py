"""Serving settings, read from the environment by the BentoML service at start-up.

Every knob has an environment variable so ``omniscore serve``, ``bentoml serve`` and a
container configure the service the same way. Nothing is read on import: callers use
:meth:`ServeConfig.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 3000
ENV = {
    "api_key": "OMNISCORE_API_KEY",
    "admin_key": "OMNISCORE_ADMIN_KEY",
    "max_ids": "OMNISCORE_MAX_IDS",
    "max_body_bytes": "OMNISCORE_MAX_BODY_BYTES",
    "timeout": "OMNISCORE_REQUEST_TIMEOUT",
    "max_concurrency": "OMNISCORE_MAX_CONCURRENCY",
    "threads": "OMNISCORE_SERVE_THREADS",
    "reload_interval": "OMNISCORE_RELOAD_INTERVAL",
    "online_read": "OMNISCORE_ONLINE_READ",
    "pinned_models": "OMNISCORE_PINNED_MODELS",
    "clock": "OMNISCORE_CLOCK",
    "max_events": "OMNISCORE_MAX_EVENTS",
    "features": "OMNISCORE_SERVE_FEATURES",
}
"""Environment variable of each :class:`ServeConfig` field."""
PINNED_MODELS_FILE = Path(__file__).resolve().parent / "pinned_models.json"
"""Written by :func:`serving.bento.build_bento` into the Bento: the versions it serves."""


class ServeConfigError(ValueError):
    """A serving setting that cannot work; the message names its variable and what is wrong.

    The command line prints it as one line and exits non-zero.
    """


def startup_config() -> ServeConfig:
    """The serving settings for a starting server process, or exit 2 with one line.

    Called once, by the service's start-up module (:mod:`serving.service`, which BentoML
    imports to start a server): a bad setting is printed as ``error: …`` on stderr, with no
    traceback, whether the server was started by ``omniscore serve`` or by ``bentoml serve``.
    """
    import sys

    try:
        return ServeConfig.from_env()
    except ServeConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def bundled_pins(pin_file: Path = PINNED_MODELS_FILE) -> str | None:
    """The pin file a built Bento carries, or None when there is none.

    Inside a built Bento the pin file is the build's promise. In a source checkout (a ``.git``
    beside ``serving/``) it can only be a leftover, since :func:`serving.bento.build_bento`
    writes it into a staging copy, and silently serving old versions would hide that: refused.
    """
    if not pin_file.exists():
        return None
    if (pin_file.parents[1] / ".git").exists():
        raise ServeConfigError(
            "serving/pinned_models.json is in the source checkout (left by a Bento "
            "build?): remove it, or name it in OMNISCORE_PINNED_MODELS to pin on purpose"
        )
    return str(pin_file)


@dataclass(frozen=True)
class ServeConfig:
    """How the scoring service behaves.

    - ``api_key``: when set, every endpoint but ``/healthz``, ``/livez`` and ``/readyz``
      requires ``Authorization: Bearer <key>``;
    - ``admin_key``: the separate key ``POST /admin/forget`` requires (``Authorization:
      Bearer <admin key>``); unset, the endpoint is refused with 403;
    - ``max_ids``: customer ids per ``/score`` request;
    - ``max_body_bytes``: request bodies above this are refused with 413 before parsing;
    - ``timeout``: seconds a request may take (online read and scoring) before a 503;
    - ``max_concurrency``: requests in flight; over it the service answers 429 at once;
    - ``threads``: worker threads scoring in parallel (LightGBM and SQLite release the GIL);
    - ``reload_interval``: seconds between registry checks for a moved ``champion``
      (0 turns polling off; ``POST /admin/reload`` still works);
    - ``online_read``: ``auto``, ``direct`` or ``feast`` (see :mod:`serving.online`);
    - ``pinned_models``: a JSON file of versions to serve instead of following ``champion``;
    - ``clock``: an ISO-8601 instant that fixes the service's clock (tests and replays):
      ``/score``, ``GET /customers/{id}`` and the late/future rules of ``POST /events`` then
      work as of that instant;
    - ``max_events``: events per ``POST /events`` request;
    - ``features``: ``live`` (features computed as of each request's instant from the live
      state, so windows slide with time), ``online`` (the rows last written to the Feast
      online store, as of their snapshot time) or ``auto`` (live as soon as the live state
      holds anything: bootstrapped by ``features materialize`` or fed by live events).
    """

    api_key: str | None = None
    admin_key: str | None = None
    max_ids: int = 1000
    max_body_bytes: int = 1 << 20
    timeout: float = 10.0
    max_concurrency: int = 64
    threads: int = 2
    reload_interval: float = 30.0
    online_read: str = "auto"
    pinned_models: str | None = None
    clock: str | None = None
    max_events: int = 1000
    features: str = "auto"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        """Settings from ``env`` (default ``os.environ``); unset variables keep defaults."""
        env = os.environ if env is None else env
        default = cls()

        def get(field: str, cast):
            raw = env.get(ENV[field])
            if raw is None or raw.strip() == "":
                return getattr(default, field)
            try:
                return cast(raw.strip())
            except ValueError as exc:
                raise ServeConfigError(
                    f"{ENV[field]}={raw!r} is not a valid {cast.__name__}"
                ) from exc

        pinned = get("pinned_models", str)
        if pinned is None:
            pinned = bundled_pins()
        config = cls(
            api_key=get("api_key", str),
            admin_key=get("admin_key", str),
            max_ids=get("max_ids", int),
            max_body_bytes=get("max_body_bytes", int),
            timeout=get("timeout", float),
            max_concurrency=get("max_concurrency", int),
            threads=get("threads", int),
            reload_interval=get("reload_interval", float),
            online_read=get("online_read", str),
            pinned_models=pinned,
            clock=get("clock", str),
            max_events=get("max_events", int),
            features=get("features", str),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """Raise :class:`ServeConfigError` on a setting that cannot work."""
        problems = (
            (self.max_ids < 1, "max_ids", "must be at least 1"),
            (self.max_body_bytes < 1024, "max_body_bytes", "must be at least 1024"),
            (self.timeout <= 0, "timeout", "must be positive"),
            (self.max_concurrency < 1, "max_concurrency", "must be positive"),
            (self.threads < 1, "threads", "must be positive"),
            (self.reload_interval < 0, "reload_interval", "must be 0 (off) or positive"),
            (
                self.online_read not in ("auto", "direct", "feast"),
                "online_read",
                "must be auto, direct or feast",
            ),
            (
                self.api_key is not None and len(self.api_key) < 16,
                "api_key",
                "must be at least 16 characters",
            ),
            (
                self.admin_key is not None and len(self.admin_key) < 16,
                "admin_key",
                "must be at least 16 characters",
            ),
            (
                self.admin_key is not None and self.admin_key == self.api_key,
                "admin_key",
                "must differ from OMNISCORE_API_KEY (a scoring client must not erase)",
            ),
        )
        for wrong, field, rule in problems:
            if wrong:
                raise ServeConfigError(f"{ENV[field]} ({field}) {rule}")
        if self.features not in ("auto", "live", "online"):
            raise ServeConfigError(f"{ENV['features']} (features) must be auto, live or online")
        if self.max_events < 1:
            raise ServeConfigError(f"{ENV['max_events']} (max_events) must be at least 1")
        if self.clock is not None:
            from data_layer.live_ingest import parse_clock

            try:
                parse_clock(self.clock)
            except ValueError as exc:
                raise ServeConfigError(str(exc)) from None
