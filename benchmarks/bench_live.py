"""Live path benchmark (issue 11, section 6): events in, fresh features and scores out.

One trained home (``--customers`` generated customers, one Optuna trial per model, promoted,
the live state bootstrapped at a fixed intra-day clock after the world ends) is measured on
the embedded store (SQLite online store and live state) and on Redis (a copy of the home
whose Feast online store and live state are a private Redis database). Per backend:

a. events folded per second, rescoring off: :func:`data_layer.live_ingest.accept_events` in
   process (validate, store durably, fold) in batches of ``--batch`` events;
b. events per second with rescoring: the same, plus the affected customers' features
   recomputed (``LiveState.features``), rewritten in the Feast online store and scored by the
   three champion models; and ``POST /events`` over HTTP (the service always rescores);
c. event to visible score: a sender subprocess posts events at a steady ``--rate`` per
   second (all events due by now in each request, so the rate holds whatever one request
   costs); a few probe events are announced on its stdout and this process polls
   ``GET /customers/{id}`` until the probe is in the customer's context. The latency is from
   the moment the sender started posting the probe to the moment a reader saw it;
d. ``/score`` p50 for one id against a trivial BentoML endpoint measured in the same run
   (:mod:`benchmarks.trivial_service`), idle and while events stream in at ``--rate``.

Every figure carries the load average and the CPU steal measured over it: the machine is
shared. Prints one JSON object (the last line).

    .venv/bin/python -m benchmarks.bench_live --customers 5000
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from benchmarks.bench_serving import percentiles, trivial_server
from benchmarks.run import cpu_ticks
from data_layer.schema import SOURCE_COLUMNS
from data_layer.settings import Settings

TARGETS = {
    "fold_events_per_s": 10_000,
    "rescore_events_per_s": 3_000,
    "visible_p99_ms": 50.0,
    "score_ratio_to_trivial": 2.0,
}
REDIS_URL = "redis://127.0.0.1:6379/9"
"""A private Redis database, flushed by the benchmark."""
BENCH_PROJECT = "omniscore_bench_live"
API_KEY = "bench-live-key-0123456789abcdef"
MAX_EVENTS_PER_REQUEST = 1000


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its children so far."""
    import psutil

    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return float("nan")


def redis_cpu_seconds() -> float | None:
    """Redis server's CPU seconds so far (``INFO cpu``), None without Redis."""
    try:
        import redis

        info = redis.Redis.from_url(REDIS_URL, socket_timeout=5).info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except Exception:
        return None


class Machine:
    """Load average, CPU steal and the CPU seconds spent by this process, a server process
    tree (``server_pid``) and Redis over one measured stretch: on a shared machine the wall
    time also counts the time others hold the cores, the CPU seconds do not."""

    def __init__(self, server_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.ticks = cpu_ticks()
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.server = tree_cpu_seconds(server_pid) if server_pid else None
        self.redis = redis_cpu_seconds()

    def done(self) -> dict:
        after = cpu_ticks()
        out = {
            "load_1m": round(os.getloadavg()[0], 1),
            "wall_seconds": round(time.perf_counter() - self.wall, 2),
            "client_cpu_seconds": round(time.process_time() - self.own, 2),
        }
        if self.server_pid:
            out["server_cpu_seconds"] = round(tree_cpu_seconds(self.server_pid) - self.server, 2)
        redis_now = redis_cpu_seconds()
        if self.redis is not None and redis_now is not None:
            out["redis_cpu_seconds"] = round(redis_now - self.redis, 2)
        if self.ticks and after and after[1] > self.ticks[1]:
            steal = (after[0] - self.ticks[0]) / (after[1] - self.ticks[1])
            out["cpu_steal_percent"] = round(100 * steal, 1)
        return out


def iso(at: pd.Timestamp) -> str:
    return at.isoformat().replace("+00:00", "Z")


# --- the home -------------------------------------------------------------------------------
def build_home(path: Path, customers: int, days: int) -> tuple[Settings, pd.Timestamp]:
    """Generate, build weekly snapshots, apply, materialize, train and promote the three
    models (one trial, four cutoffs); returns the home and the benchmark's clock."""
    from data_layer.feast_store import apply, materialize
    from data_layer.feature_pipeline import build_features, default_snapshot_range
    from data_layer.synthetic import generate, write_generated
    from training.registry import promote
    from training.train import train_model

    settings = Settings.from_env(path)
    settings.ensure_dirs()
    data = generate(customers, days, seed=5)
    write_generated(settings, data)
    start, end = default_snapshot_range(settings, weeks=32)
    build_features(settings, start, end)
    apply(settings)
    materialize(settings)
    for model in ("propensity", "churn", "segments"):
        extra = {"horizon_days": 30} if model == "churn" else {}
        train_model(settings, model, trials=1, seed=1, n_cutoffs=4, min_class=20, **extra)
        assert promote(settings, model, force=True, reason="live benchmark").promoted
    return settings, clock_of(data)


def clock_of(data) -> pd.Timestamp:
    """Fourteen hours and 25 minutes after the day the generated world ends."""
    newest = pd.Timestamp(data.events.column("event_timestamp").to_pandas().max())
    return newest.tz_convert("UTC").floor("D") + pd.Timedelta(days=1, hours=14, minutes=25)


def redis_home(source: Settings, path: Path) -> Settings:
    """A copy of ``source`` whose online store and live state are :data:`REDIS_URL`."""
    import redis

    from data_layer.feast_store import apply, materialize

    shutil.rmtree(path, ignore_errors=True)
    shutil.copytree(source.home, path)
    redis.Redis.from_url(REDIS_URL).flushdb()  # the benchmark's own database
    settings = Settings.from_env(
        path,
        env={"OMNISCORE_ONLINE_STORE": REDIS_URL, "OMNISCORE_FEAST_PROJECT": BENCH_PROJECT},
    )
    Path(settings.feast_registry_path).unlink(missing_ok=True)
    apply(settings)
    materialize(settings)
    return settings


def bootstrap(settings: Settings, clock: pd.Timestamp) -> int:
    from data_layer.live_state import LiveState

    with LiveState.open(settings) as state:
        return state.bootstrap(clock)


def live_events(customers: list[str], clock: pd.Timestamp, count: int, seed: int) -> list[dict]:
    """``count`` new canonical events of the home's customers, from another generated world
    moved to the two days before ``clock`` (customers renamed, ids of their own)."""
    from data_layer.synthetic import generate

    # About 0.45 events per customer and day: 40 days of count / 10 customers are plenty.
    world = generate(max(500, count // 10), 40, seed=seed).events.to_pandas()
    world = world.sample(n=min(count, len(world)), random_state=seed).reset_index(drop=True)
    if len(world) < count:
        raise ValueError(f"the second world has only {len(world)} events; need {count}")
    rng = np.random.default_rng(seed)
    world["customer_id"] = np.asarray(customers, dtype=object)[
        rng.integers(len(customers), size=len(world))
    ]
    stamps = world["event_timestamp"].dt.tz_convert("UTC")
    span = (stamps.max() - stamps.min()) or pd.Timedelta(seconds=1)
    world["event_timestamp"] = (
        clock - pd.Timedelta(minutes=1) - (stamps.max() - stamps) * (pd.Timedelta(days=2) / span)
    ).dt.floor("us")
    out = []
    for i, row in enumerate(world[list(SOURCE_COLUMNS)].itertuples(index=False)):
        event = {"event_id": f"bench-live-{seed}-{i:09d}"}
        for name, value in zip(SOURCE_COLUMNS, row, strict=True):
            if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
                continue
            event[name] = iso(value) if name == "event_timestamp" else value
        out.append(event)
    return out


# --- a and b: in process -----------------------------------------------------------------------
def in_process(
    settings: Settings, clock: pd.Timestamp, events: list[dict], batch: int, rescore: bool
) -> dict:
    """Events per second through ``accept_events`` (and, with ``rescore``, the online
    rewrite and the three scores of the affected customers); seconds per stage."""
    from data_layer.feast_store import feature_store
    from data_layer.live_ingest import OnlineFeatureWriter, accept_events
    from data_layer.live_state import LiveState
    from serving.live import LiveFeatures
    from serving.scoring import load_model_set, score

    state = LiveState.open(settings)
    writer = models = cache = None
    if rescore:
        store = feature_store(settings)
        writer = OnlineFeatureWriter(settings, store)
        models = load_model_set(settings, store)
        cache = LiveFeatures(state, settings)
    stages: dict[str, float] = {}
    accepted = 0
    machine = Machine()
    cpu = time.process_time()
    began = time.perf_counter()
    try:
        for lo in range(0, len(events), batch):
            report = accept_events(settings, events[lo : lo + batch], clock, state, online=writer)
            accepted += report.accepted
            for stage, seconds in report.seconds.items():
                stages[stage] = stages.get(stage, 0.0) + seconds
            if rescore and report.features is not None:
                mark = time.perf_counter()
                cache.remember(report.features, clock)
                scores = score(models, cache.batch(models.layout, report.customers, clock))
                assert len(scores) == len(report.customers)
                stages["score"] = stages.get("score", 0.0) + time.perf_counter() - mark
    finally:
        wall = time.perf_counter() - began
        state.close()
    used = machine.done()
    cpu_seconds = (time.process_time() - cpu) + used.get("redis_cpu_seconds", 0.0)
    return {
        "events": len(events),
        "accepted": accepted,
        "batch": batch,
        "events_per_s": round(len(events) / wall),
        # What one core would do with nothing else running: this process's CPU plus Redis's.
        "events_per_cpu_second": round(len(events) / cpu_seconds),
        "seconds_per_stage": {k: round(v, 2) for k, v in stages.items()},
        **used,
    }


# --- over HTTP ---------------------------------------------------------------------------------
def post_all(client: httpx.Client, events: list[dict], batch: int, server_pid: int) -> dict:
    """``POST /events`` in batches, sequentially: events per second and request latencies."""
    machine = Machine(server_pid)
    times, statuses = [], {}
    began = time.perf_counter()
    for lo in range(0, len(events), batch):
        mark = time.perf_counter()
        response = client.post("/events", json={"events": events[lo : lo + batch]})
        times.append(time.perf_counter() - mark)
        response.raise_for_status()
        for result in response.json()["results"]:
            statuses[result["status"]] = statuses.get(result["status"], 0) + 1
    wall = time.perf_counter() - began
    used = machine.done()
    cpu_seconds = used["server_cpu_seconds"] + used.get("redis_cpu_seconds", 0.0)
    return {
        "events": len(events),
        "batch": batch,
        "statuses": statuses,
        "events_per_s": round(len(events) / wall),
        "events_per_server_cpu_second": round(len(events) / cpu_seconds),
        "request": percentiles(times),
        **used,
    }


def time_score(
    client: httpx.Client,
    trivial: httpx.Client,
    ids: list[str],
    requests: int,
    seed: int,
    server_pid: int,
) -> dict:
    """``/score`` for one id, sequential: random ids (mostly first requests: features
    computed) and the same ids asked again (features from the live cache). Each request is
    followed by one to the trivial BentoML endpoint, so both see the same machine load; the
    ratio of the p50s is the figure."""
    rng = np.random.default_rng(seed)
    picks = [ids[int(i)] for i in rng.integers(len(ids), size=requests)]
    out = {}
    for name in ("first", "again"):
        machine = Machine(server_pid)
        times, reference = [], []
        for customer in picks:
            began = time.perf_counter()
            response = client.post("/score", json={"customer_ids": [customer]})
            times.append(time.perf_counter() - began)
            response.raise_for_status()
            began = time.perf_counter()
            trivial.post("/echo", json={"customer_ids": [customer]}).raise_for_status()
            reference.append(time.perf_counter() - began)
        score, echo = percentiles(times), percentiles(reference)
        out[name] = {
            **score,
            "trivial_p50_ms": echo["p50_ms"],
            "trivial_p99_ms": echo["p99_ms"],
            "p50_ratio_to_trivial": round(score["p50_ms"] / echo["p50_ms"], 2),
            **machine.done(),
        }
    return out


def start_sender(url: str, events_path: Path, rate: float, seconds: float, probe_every: int):
    """The sender subprocess (this module with ``--send``)."""
    command = [sys.executable, "-m", "benchmarks.bench_live", "--send", url, str(events_path)]
    command += ["--rate", str(rate), "--seconds", str(seconds), "--probe-every", str(probe_every)]
    return subprocess.Popen(
        command,
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "BENCH_LIVE_KEY": API_KEY},
    )


def send(url: str, events_path: Path, rate: float, seconds: float, probe_every: int) -> None:
    """Post the events of ``events_path`` at ``rate`` per second for ``seconds``: every
    request carries all events due by then. Announces every ``probe_every``-th request's first
    event on stdout (customer, id, the wall-clock time its request started), then a summary."""
    events = json.loads(events_path.read_text())
    headers = {"Authorization": f"Bearer {os.environ['BENCH_LIVE_KEY']}"}
    sent, requests, times = 0, 0, []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        began = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - began
            if elapsed >= seconds or sent >= len(events):
                break
            due = min(len(events), int(elapsed * rate) + 1)
            if due <= sent:
                time.sleep(max(0.0, (sent + 1) / rate - elapsed))
                continue
            due = min(due, sent + MAX_EVENTS_PER_REQUEST)  # a late sender catches up
            part = events[sent:due]
            if requests % probe_every == 0:
                probe = part[0]
                line = {"customer": probe["customer_id"], "event_id": probe["event_id"]}
                print(json.dumps({**line, "sent": time.time()}), flush=True)
            mark = time.perf_counter()
            client.post("/events", json={"events": part}).raise_for_status()
            times.append(time.perf_counter() - mark)
            sent, requests = due, requests + 1
        wall = time.perf_counter() - began
    summary = {"events": sent, "requests": requests, "events_per_s": round(sent / wall, 1)}
    print(json.dumps({"summary": {**summary, "request": percentiles(times)}}), flush=True)


def stream(
    server_url: str,
    headers: dict,
    events: list[dict],
    work: Path,
    rate: float,
    seconds: float,
    watch,
) -> dict:
    """Run the sender at ``rate`` while ``watch(client, probes, stop)`` reads; the sender's
    summary."""
    path = work / f"stream-{time.time_ns()}.json"
    path.write_text(json.dumps(events))
    sender = start_sender(server_url, path, rate, seconds, probe_every=1)
    probes: queue.Queue = queue.Queue()
    summary: dict = {}

    def read_stdout() -> None:
        for line in sender.stdout:
            message = json.loads(line)
            if "summary" in message:
                summary.update(message["summary"])
            else:
                probes.put(message)
        probes.put(None)

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    stop = threading.Event()
    try:
        with httpx.Client(base_url=server_url, headers=headers, timeout=60) as client:
            watch(client, probes, stop)
    finally:
        stop.set()
        sender.wait(timeout=seconds + 120)
        reader.join(timeout=10)
        path.unlink(missing_ok=True)
    return summary


def visible_latency(client: httpx.Client, probes: queue.Queue, stop) -> list[float]:
    """Poll ``GET /customers/{id}`` for each announced probe until its event is there."""
    latencies: list[float] = []
    while True:
        probe = probes.get()
        if probe is None:
            return latencies
        deadline = time.time() + 10
        while time.time() < deadline:
            response = client.get(f"/customers/{probe['customer']}")
            if response.status_code == 200 and any(
                e["event_id"] == probe["event_id"] for e in response.json()["recent_events"]
            ):
                latencies.append(time.time() - probe["sent"])
                break
            time.sleep(0.002)  # leave the two cores to the server between polls


def run_backend(
    settings: Settings, clock: pd.Timestamp, work: Path, args, name: str, trivial_url: str
) -> dict:
    from data_layer.event_store import read_customers
    from serving.launcher import start_server

    customers = read_customers(settings)["customer_id"].astype(str).tolist()
    streamed_events = int(args.rate * args.stream_seconds * 1.2)  # the sender may run late
    sizes = [args.events, args.rescore_events, args.events, streamed_events, 2 * streamed_events]
    events = live_events(customers, clock, sum(sizes), seed=args.seed)
    parts = iter(np.split(np.arange(len(events)), np.cumsum(sizes)[:-1]))

    def take() -> list[dict]:
        return [events[i] for i in next(parts)]

    result: dict = {"backend": name, "customers": len(customers), "clock": iso(clock)}
    machine = Machine()
    result["bootstrap_events"] = bootstrap(settings, clock)
    result["bootstrap"] = machine.done()
    result["fold_in_process"] = in_process(settings, clock, take(), args.batch, rescore=False)
    result["rescore_in_process"] = in_process(settings, clock, take(), args.batch, rescore=True)
    options = {"clock": iso(clock), "reload_interval": 0, "max_events": max(1000, args.batch)}
    with (
        start_server(settings, api_key=API_KEY, options=options) as server,
        httpx.Client(base_url=server.url, headers=server.headers(), timeout=120) as client,
        httpx.Client(base_url=trivial_url, timeout=120) as trivial,
    ):
        pid = server.process.pid
        result["score_idle"] = time_score(
            client, trivial, customers, args.requests, seed=1, server_pid=pid
        )
        result["post_events_http"] = post_all(client, take(), args.batch, pid)
        machine = Machine(pid)
        latencies: list[float] = []
        summary = stream(
            server.url,
            server.headers(),
            take(),
            work,
            args.rate,
            args.stream_seconds,
            lambda c, p, s: latencies.extend(visible_latency(c, p, s)),
        )
        result["event_to_visible_score"] = {
            "rate_asked": args.rate,
            "sender": summary,
            **percentiles(latencies),
            **machine.done(),
        }
        streamed: dict = {}

        def score_while(c, probes, stop) -> None:
            reader = threading.Thread(target=lambda: [None for _ in iter(probes.get, None)])
            reader.start()
            streamed.update(
                time_score(c, trivial, customers, args.requests // 2, seed=2, server_pid=pid)
            )
            reader.join()

        machine = Machine(pid)
        summary = stream(
            server.url, server.headers(), take(), work, args.rate, args.stream_seconds * 2,
            score_while,
        )  # fmt: skip
        result["score_while_streaming"] = {**streamed, "sender": summary, **machine.done()}
    ratio = {
        "idle_first": result["score_idle"]["first"]["p50_ratio_to_trivial"],
        "idle_again": result["score_idle"]["again"]["p50_ratio_to_trivial"],
        "streaming_first": streamed["first"]["p50_ratio_to_trivial"],
        "streaming_again": streamed["again"]["p50_ratio_to_trivial"],
    }
    result["score_p50_ratio_to_trivial"] = ratio
    visible = result["event_to_visible_score"]
    result["met"] = {
        "fold_in_process": result["fold_in_process"]["events_per_s"]
        >= TARGETS["fold_events_per_s"],
        "rescore_in_process": result["rescore_in_process"]["events_per_s"]
        >= TARGETS["rescore_events_per_s"],
        "post_events_http_rescoring": result["post_events_http"]["events_per_s"]
        >= TARGETS["rescore_events_per_s"],
        "visible_p99": visible["p99_ms"] <= TARGETS["visible_p99_ms"],
        "score_ratio_idle_again": ratio["idle_again"] <= TARGETS["score_ratio_to_trivial"],
        "score_ratio_streaming_again": ratio["streaming_again"]
        <= TARGETS["score_ratio_to_trivial"],
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--days", type=int, default=300)
    parser.add_argument("--events", type=int, default=20_000, help="events per throughput run")
    parser.add_argument("--rescore-events", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--stream-seconds", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seed", type=int, default=21)
    parser.add_argument("--backends", default="sqlite,redis")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/omniscore-bench-live"))
    parser.add_argument("--reuse", action="store_true", help="reuse a trained home in workdir")
    parser.add_argument("--send", nargs=2, metavar=("URL", "EVENTS"), help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=20.0, help=argparse.SUPPRESS)
    parser.add_argument("--probe-every", type=int, default=10, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.send:
        send(args.send[0], Path(args.send[1]), args.rate, args.seconds, args.probe_every)
        return

    work = args.workdir
    trained = work / "home"
    marker = trained / "bench-live-clock.txt"
    began = time.perf_counter()
    if args.reuse and marker.exists():
        settings, clock = Settings.from_env(trained), pd.Timestamp(marker.read_text().strip())
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        settings, clock = build_home(trained, args.customers, args.days)
        marker.write_text(iso(clock))
    result: dict = {"customers": args.customers, "prepare_seconds": None}
    result["prepare_seconds"] = round(time.perf_counter() - began, 1)
    with trivial_server(work) as trivial_url:
        for name in args.backends.split(","):
            result[name] = run_one_backend(settings, work, args, name, clock, trivial_url)
    if "redis" in args.backends:
        import redis

        redis.Redis.from_url(REDIS_URL).flushdb()
    result["targets"] = TARGETS
    print(json.dumps(result, default=str))


def run_one_backend(
    settings: Settings, work: Path, args, name: str, clock: pd.Timestamp, trivial_url: str
) -> dict:
    from data_layer.feast_store import apply, materialize

    # Each backend gets a fresh copy, so the events posted by the other are not in it.
    if name == "sqlite":
        home = work / "sqlite"
        shutil.rmtree(home, ignore_errors=True)
        shutil.copytree(settings.home, home)
        backend = Settings.from_env(home)
        apply(backend)
        materialize(backend)
    else:
        backend = redis_home(settings, work / "redis")
    return run_backend(backend, clock, work, args, name, trivial_url)


if __name__ == "__main__":
    main()
