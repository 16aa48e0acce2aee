"""Serving benchmark: the online endpoint over HTTP, its in-process floor, and batch scoring.

Models come from a trained home (``--models-home``, e.g. a demo's ``./data``) or are trained
here on a small generated home (two Optuna trials each). The online store is a separate home
with ``--customers`` customers of synthetic snapshots in the pipeline's format
(``benchmarks.bench_materialize.write_synthetic``), applied and materialized, so lookups run
against a store of the target size. Then, against one server started once:

1. floor: in process, one customer's Feast lookup plus the three predictions, sequential —
   both through Feast's ``get_online_features`` and through the server's own read path;
   and, for calibration, a trivial BentoML endpoint (:mod:`benchmarks.trivial_service`)
   timed by the same client: what HTTP and BentoML cost per request on this machine;
2. one id per request, no explanations, one sequential client: p50 / p99;
3. one id with ``explain``;
4. 100 ids per request, sequential: customers per second;
5. 8 concurrent clients with single ids: throughput and p99;
6. a fixed-concurrency load for ``--load-seconds`` (60): requests, errors, p50 / p99;
7. batch scoring of every customer (``score_batch``): customers per second;
8. ``/score`` p50 with the score log on against the same run with it off
   (:func:`time_score_log`; ``--score-log-only`` runs just this).

    .venv/bin/python -m benchmarks.bench_serving --customers 100000

Prints one JSON object (the last line). Clients are Python ``httpx`` with keep-alive, so the
HTTP figures include the client's own overhead (about half a millisecond per request).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from data_layer.feast_store import apply, feature_store, materialize
from data_layer.settings import Settings

TARGETS = {
    "single_p50_ms": 5.0,
    "single_p99_ms": 15.0,
    "ratio_to_floor": 3.0,
    "batch100_customers_per_s": 3000.0,
    "batch_customers_per_s": 50000.0,
}


def percentiles(seconds: list[float]) -> dict:
    """p50 / p99 / mean in milliseconds."""
    ms = np.asarray(seconds) * 1e3
    return {
        "n": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def train_small_home(path: Path, customers: int, trials: int) -> Settings:
    """Run the pipeline up to promotion: every model trained and promoted past the gate."""
    from omniscore.pipeline import PipelineOptions, run_pipeline

    settings = Settings.from_env(path)
    options = PipelineOptions(
        customers=customers,
        days=300,
        seed=11,
        snapshot_weeks=32,
        trials=trials,
        train_seed=3,
        promote_over_gate="serving benchmark",
    )
    run_pipeline(settings, "promote", options)
    return settings


BENCH_PROJECT = "omniscore_bench_serving"
"""Feast project of the benchmark's Redis keys (their suffix), removed before and after."""


def drop_redis_keys(url: str, project: str = BENCH_PROJECT) -> int:
    """Delete the benchmark project's keys from a Redis online store; returns how many."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=b"*" + project.encode(), count=10_000))
    for lo in range(0, len(keys), 10_000):
        client.delete(*keys[lo : lo + 10_000])
    return len(keys)


def store_home(
    path: Path, models: Settings, customers: int, online_store: str = "sqlite"
) -> tuple[Settings, dict]:
    """A home whose online store (SQLite, or a ``redis://`` URL) holds ``customers``
    synthetic customers; same registry as ``models``."""
    from benchmarks.bench_materialize import write_synthetic

    settings = Settings(
        home=path.resolve(),
        mlflow_tracking_uri=models.tracking_uri,
        online_store=online_store,
        feast_project=BENCH_PROJECT if online_store != "sqlite" else "omniscore",
    )
    settings.ensure_dirs()
    if online_store != "sqlite":
        # A clean slate: no keys, and no registry whose materialization intervals would make
        # the next materialize write nothing into the emptied store.
        drop_redis_keys(online_store)
        Path(settings.feast_registry_path).unlink(missing_ok=True)
    started = time.perf_counter()
    write_synthetic(settings, customers, snapshots=2)
    apply(settings)
    report = materialize(settings)
    return settings, {
        "online_store": "sqlite" if online_store == "sqlite" else "redis",
        "customers": report.customers,
        "prepare_seconds": round(time.perf_counter() - started, 1),
    }


def customer_ids(customers: int) -> list[str]:
    """The synthetic ids ``write_synthetic`` uses."""
    return [f"{i:07d}" for i in range(customers)]


def time_floor(settings: Settings, ids: list[str], repeats: int) -> dict:
    """In-process lookup + three predictions for one customer, by read path."""
    from serving.online import OnlineReader
    from serving.scoring import load_model_set, score

    store = feature_store(settings)
    models = load_model_set(settings, store)
    rng = np.random.default_rng(0)
    out = {}
    for method in ("feast", "direct"):
        reader = OnlineReader(store, method)
        times = []
        for i in range(repeats + 20):
            cid = ids[int(rng.integers(len(ids)))]
            began = time.perf_counter()
            score(models, reader.read(models.layout, [cid]))
            if i >= 20:
                times.append(time.perf_counter() - began)
        out[method] = percentiles(times)
    out["trees"] = {
        m: plan.model.classifier.booster.num_trees() for m, plan in models.classifiers.items()
    }
    return out


def time_trivial_endpoint(work: Path, requests: int) -> dict:
    """p50 / p99 of :mod:`benchmarks.trivial_service` over HTTP: BentoML's and the client's
    own cost per request on this machine, the part of ``/score`` no OmniScore code can remove.
    """
    with trivial_server(work) as url, httpx.Client(base_url=url, timeout=30) as client:
        times, errors = [], 0
        for i in range(requests + 20):
            began = time.perf_counter()
            response = client.post("/echo", json={"customer_ids": ["0000001"]})
            elapsed = time.perf_counter() - began
            errors += response.status_code != 200
            if i >= 20:
                times.append(elapsed)
    return {**percentiles(times), "errors": errors}


@contextmanager
def trivial_server(work: Path) -> Iterator[str]:
    """:mod:`benchmarks.trivial_service` served by BentoML (the reference endpoint); its URL."""
    import os
    import subprocess
    import sys

    from serving.launcher import REPO_ROOT, ServerHandle, free_port

    port = free_port()
    env = {**os.environ, "BENTOML_HOME": str(work / "bentoml-trivial")}
    command = [sys.executable, "-m", "bentoml", "serve", "benchmarks.trivial_service:Trivial"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    log_path = work / "trivial-service.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = ServerHandle(f"http://127.0.0.1:{port}", process, None, log_path)
    try:
        server.wait_ready(180)
        yield server.url
    finally:
        server.stop()


def sequential(client: httpx.Client, bodies, warmup: int = 20) -> tuple[list[float], int]:
    """Send bodies one after another; (latencies, errors)."""
    times, errors = [], 0
    for i, body in enumerate(bodies):
        began = time.perf_counter()
        response = client.post("/score", json=body)
        elapsed = time.perf_counter() - began
        if response.status_code != 200:
            errors += 1
        if i >= warmup:
            times.append(elapsed)
    return times, errors


def time_score_log(settings: Settings, ids: list[str], requests: int, key: str) -> dict:
    """``/score`` p50 with the score log on and off, in the same run.

    Two servers on the same store, one writing the score log (the default SQLite file of the
    home) and one with ``OMNISCORE_SCORE_LOG=off``; single-id requests alternate between
    them, so both see the same machine load. Returns each one's percentiles, the p50 ratio
    (target: at most 1.05) and the rows the log holds afterwards.
    """
    import os

    from data_layer.score_log import read_scores
    from serving.launcher import start_server

    options = {"reload_interval": 0, "max_concurrency": 64}
    rng = np.random.default_rng(7)
    picks = rng.integers(len(ids), size=requests + 20)
    saved = os.environ.get("OMNISCORE_SCORE_LOG")
    try:
        os.environ["OMNISCORE_SCORE_LOG"] = "off"
        off_server = start_server(settings, api_key=key, options=options)
        off = off_server.__enter__()
        os.environ["OMNISCORE_SCORE_LOG"] = "sqlite"
        try:
            with start_server(settings, api_key=key, options=options) as on:
                times = {"on": [], "off": []}
                with (
                    httpx.Client(base_url=on.url, headers=on.headers(), timeout=30) as c_on,
                    httpx.Client(base_url=off.url, headers=off.headers(), timeout=30) as c_off,
                ):
                    for i, pick in enumerate(picks):
                        body = [{"customer_ids": [ids[pick]]}]
                        first, second = ("on", "off") if i % 2 else ("off", "on")
                        for name in (first, second):
                            client = c_on if name == "on" else c_off
                            took, errors = sequential(client, body, warmup=0)
                            if i >= 20 and not errors:
                                times[name].extend(took)
        finally:
            off_server.__exit__(None, None, None)
    finally:
        if saved is None:
            os.environ.pop("OMNISCORE_SCORE_LOG", None)
        else:
            os.environ["OMNISCORE_SCORE_LOG"] = saved
    on_stats, off_stats = percentiles(times["on"]), percentiles(times["off"])
    return {
        "log_on": on_stats,
        "log_off": off_stats,
        "p50_ratio": round(on_stats["p50_ms"] / off_stats["p50_ms"], 3),
        "rows_logged": int(len(read_scores(settings))),
    }


def concurrent(url: str, headers: dict, ids: list[str], clients: int, seconds: float) -> dict:
    """``clients`` threads sending single-id requests for ``seconds``."""
    stop = time.monotonic() + seconds
    results: list[tuple[list[float], int, dict]] = []

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        times, errors, codes = [], 0, {}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            while time.monotonic() < stop:
                cid = ids[int(rng.integers(len(ids)))]
                began = time.perf_counter()
                try:
                    status = client.post("/score", json={"customer_ids": [cid]}).status_code
                except httpx.HTTPError:
                    status = -1
                times.append(time.perf_counter() - began)
                codes[status] = codes.get(status, 0) + 1
                errors += status != 200
        results.append((times, errors, codes))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    times = [x for r in results for x in r[0]]
    codes: dict = {}
    for r in results:
        for k, v in r[2].items():
            codes[str(k)] = codes.get(str(k), 0) + v
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": len(times),
        "errors": sum(r[1] for r in results),
        "status_codes": codes,
        "requests_per_s": round(len(times) / wall, 1),
        **percentiles(times),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--models-home", type=Path, default=None)
    parser.add_argument("--train-customers", type=int, default=2000)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--load-seconds", type=float, default=60.0)
    parser.add_argument("--load-clients", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--online-store",
        default="sqlite",
        help="sqlite (default) or a redis:// URL (keys of a benchmark project, removed after)",
    )
    parser.add_argument(
        "--score-log-only",
        action="store_true",
        help="run only the score-log variant (/score p50 with the log on vs off)",
    )
    args = parser.parse_args()

    from serving.batch import score_batch
    from serving.launcher import start_server

    work = Path(args.workdir or tempfile.mkdtemp(prefix="omniscore-bench-serving-"))
    began = time.perf_counter()
    if args.models_home:
        models = Settings.from_env(args.models_home)
    else:
        models = train_small_home(work / "models", args.train_customers, args.trials)
    train_seconds = round(time.perf_counter() - began, 1)
    settings, prepared = store_home(work / "store", models, args.customers, args.online_store)
    ids = customer_ids(args.customers)
    result: dict = {"customers": args.customers, "train_seconds": train_seconds, **prepared}
    key = "bench-key-0123456789abcdef"
    result["score_log"] = time_score_log(settings, ids, args.requests, key)
    if args.score_log_only:
        print(json.dumps(result))
        return
    result["floor"] = time_floor(settings, ids, args.requests)
    result["trivial_endpoint"] = time_trivial_endpoint(work, args.requests)

    rng = np.random.default_rng(1)
    options = {"reload_interval": 0, "max_concurrency": 64}
    with start_server(settings, api_key=key, options=options) as server:
        with httpx.Client(base_url=server.url, headers=server.headers(), timeout=30) as c:
            picks = rng.integers(len(ids), size=args.requests + 20)
            times, errors = sequential(c, [{"customer_ids": [ids[i]]} for i in picks])
            result["single"] = {**percentiles(times), "errors": errors}
            picks = rng.integers(len(ids), size=220)
            bodies = [{"customer_ids": [ids[i]], "explain": True} for i in picks]
            times, errors = sequential(c, bodies)
            result["single_explain"] = {**percentiles(times), "errors": errors}
            blocks = [
                {"customer_ids": [ids[i] for i in rng.integers(len(ids), size=100)]}
                for _ in range(120)
            ]
            times, errors = sequential(c, blocks)
            result["batch100"] = {
                **percentiles(times),
                "errors": errors,
                "customers_per_s": round(100 / float(np.mean(times)), 1),
            }
        result["concurrent8"] = concurrent(server.url, server.headers(), ids, 8, 15.0)
        result["load"] = concurrent(
            server.url, server.headers(), ids, args.load_clients, args.load_seconds
        )
    floor = result["floor"]
    result["ratio_to_floor"] = {
        m: round(result["single"]["p50_ms"] / floor[m]["p50_ms"], 2) for m in ("feast", "direct")
    }
    report = score_batch(settings, work / "scores.parquet")
    result["batch_scoring"] = {
        "customers": report.customers,
        "score_seconds": report.score_seconds,
        "read_seconds": report.read_seconds,
        "write_seconds": report.write_seconds,
        "customers_per_s": round(report.customers_per_second, 1),
        "customers_per_s_end_to_end": round(report.customers / report.seconds, 1),
    }
    if args.online_store != "sqlite":
        result["redis_keys_removed"] = drop_redis_keys(args.online_store)
    result["targets"] = TARGETS
    result["met"] = {
        "single_p50": result["single"]["p50_ms"] <= TARGETS["single_p50_ms"],
        "single_p99": result["single"]["p99_ms"] <= TARGETS["single_p99_ms"],
        "ratio_to_feast_floor": result["ratio_to_floor"]["feast"] <= TARGETS["ratio_to_floor"],
        "ratio_to_direct_floor": result["ratio_to_floor"]["direct"] <= TARGETS["ratio_to_floor"],
        "batch100": result["batch100"]["customers_per_s"] >= TARGETS["batch100_customers_per_s"],
        "load_zero_errors": result["load"]["errors"] == 0,
        "score_log_p50_within_5pct": result["score_log"]["p50_ratio"] <= 1.05,
        "batch_scoring": result["batch_scoring"]["customers_per_s"]
        >= TARGETS["batch_customers_per_s"],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
