"""Start the scoring service as a ``bentoml serve`` subprocess on one OmniScore home.

:func:`serve` runs it in the foreground (``omniscore serve``); :func:`start_server` is a
context manager that starts it in the background, waits until ``/readyz`` says ready and
stops it on exit (tests, the demo, benchmarks). Both bind 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from data_layer.settings import Settings
from serving.config import DEFAULT_HOST, DEFAULT_PORT, ENV, ServeConfig

SERVICE = "serving.service:OmniScore"
REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_command(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> list[str]:
    """The ``bentoml serve`` command line for the service."""
    return [
        sys.executable, "-m", "bentoml", "serve", SERVICE,
        "--host", host, "--port", str(port), "--working-dir", str(REPO_ROOT),
    ]  # fmt: skip


def server_env(
    settings: Settings,
    api_key: str | None = None,
    options: Mapping[str, object] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of the server process: the home, its backends and serving options.

    ``options`` maps :class:`~serving.config.ServeConfig` field names (``max_ids``,
    ``reload_interval``, ...) to values. BentoML's usage tracking is turned off, and Python
    runs optimized (``PYTHONOPTIMIZE=1`` unless the environment sets it). A serving setting
    that cannot work raises :class:`~serving.config.ServeConfigError` here, before any
    server process starts.
    """
    env = dict(os.environ if base is None else base)
    env["OMNISCORE_HOME"] = str(settings.home)
    env["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    env["OMNISCORE_ONLINE_STORE"] = settings.online_store
    env["OMNISCORE_FEAST_PROJECT"] = settings.feast_project
    if settings.feast_registry:
        env["OMNISCORE_FEAST_REGISTRY"] = settings.feast_registry
    if api_key is not None:
        env[ENV["api_key"]] = api_key
    for name, value in (options or {}).items():
        if name not in ENV:
            raise KeyError(f"unknown serving option {name!r}; known: {sorted(ENV)}")
        env[ENV[name]] = str(value)
    env["BENTOML_DO_NOT_TRACK"] = "True"
    # BentoML empties $BENTOML_HOME/prometheus_multiproc_dir whenever a server starts, which
    # deletes the metric files of any other server running on the same BentoML home: each
    # OmniScore home gets its own unless BENTOML_HOME is set explicitly.
    env.setdefault("BENTOML_HOME", str(settings.home / "bentoml"))
    env.setdefault("PYTHONPATH", str(REPO_ROOT))
    # The service runs optimized (python -O): Feast decorates its classes with typeguard's
    # @typechecked, which recompiles them at every import (ready in 16.2 s without -O, 9.1 s
    # with it, on this machine) and which is a no-op under -O. No OmniScore code relies on
    # assert (ruff's S101).
    env.setdefault("PYTHONOPTIMIZE", "1")
    ServeConfig.from_env(env)
    return env


def serve(
    settings: Settings,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    api_key: str | None = None,
    options: Mapping[str, object] | None = None,
) -> int:
    """Run the service in the foreground until interrupted; returns its exit code.

    ``omniscore serve`` calls this. The API key defaults to ``$OMNISCORE_API_KEY``.
    """
    env = server_env(settings, api_key, options)
    process = subprocess.Popen(server_command(host, port), env=env, cwd=REPO_ROOT)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


@dataclass
class ServerHandle:
    """A running server: its URL, process, API key and log file."""

    url: str
    process: subprocess.Popen
    api_key: str | None
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    def headers(self) -> dict[str, str]:
        """``Authorization`` header for the configured key (empty without one)."""
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        """The server's combined output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def score(self, customer_ids: list[str], explain: bool = False) -> dict:
        """``POST /score`` for some customers; the parsed response (raises on an error)."""
        import httpx

        response = httpx.post(
            f"{self.url}/score",
            json={"customer_ids": list(customer_ids), "explain": explain},
            headers=self.headers(),
            timeout=60,
        )
        response.raise_for_status()
        return response.json()

    def wait_ready(self, timeout: float = 180.0) -> dict:
        """Block until ``GET /readyz`` answers 200; returns its JSON (empty for a plain-text
        answer, as other BentoML services give). Raises on timeout or exit."""
        import httpx

        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.process.returncode}:\n{self.log()[-4000:]}"
                )
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=5)
                if response.status_code == 200:
                    json_body = "json" in response.headers.get("content-type", "")
                    return response.json() if json_body else {}
                last = response.text
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}"
            time.sleep(0.25)
        tail = self.log()[-4000:]
        raise TimeoutError(f"server not ready after {timeout:.0f} s ({last}):\n{tail}")

    def stop(self, timeout: float = 30.0) -> int:
        """Stop the server (SIGINT, then SIGKILL) and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                # The server runs in its own session: end its workers with it.
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


@contextmanager
def start_server(
    settings: Settings,
    port: int | None = None,
    host: str = DEFAULT_HOST,
    api_key: str | None = None,
    options: Mapping[str, object] | None = None,
    log_path: Path | None = None,
    ready_timeout: float = 180.0,
    wait: bool = True,
) -> Iterator[ServerHandle]:
    """Start the service in the background, wait for readiness, stop it on exit.

    ``port`` defaults to a free one; output goes to ``log_path`` (default
    ``$OMNISCORE_HOME/serving.log``). With ``wait=False`` it returns as soon as the process
    is started (call :meth:`ServerHandle.wait_ready` or probe yourself).
    """
    port = port or free_port(host)
    env = server_env(settings, api_key, options)
    log_path = Path(log_path or settings.home / "serving.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            server_command(host, port),
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    handle = ServerHandle(f"http://{host}:{port}", process, env.get(ENV["api_key"]), log_path, env)
    try:
        if wait:
            handle.wait_ready(ready_timeout)
        yield handle
    finally:
        handle.stop()
