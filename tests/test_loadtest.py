"""The load generator (``audioldm-trt loadtest``) and the batching comparison's driver, against a stand-in server.

What is under test is the client: its arrivals (seeded, Poisson, open loop), its accounting (every request sent
ends in exactly one outcome: ok, each HTTP error status, client timeout, connection error, invalid answer), its
statistics and its reports. So the server here is a small aiohttp app that answers like ``POST /v1/generate``
with delays and errors the test controls and records what it received; the real server is load-tested by the
command in ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from scipy import stats

from audioldm_trt.benchmarks import batching, loadtest
from audioldm_trt.benchmarks.loadtest import (
    DEFAULT_MIX,
    LoadClient,
    LoadSettings,
    Outcome,
    latency_summary,
    parse_mix,
    poisson_arrivals,
)

from test_cli import run_cli


class StandIn:
    """Answers like ``audioldm-trt serve``: a request takes ``steps x step_seconds``; the prompt ``status N``
    answers N, ``hang`` never answers, ``drop`` closes the connection, ``garbage`` answers 200 with no JSON;
    ``steps`` above ``max_steps`` is a 422. With ``serial`` it computes one request at a time (first come, first
    served), and the wait is the answer's queue time. It observes each request's batch size (the requests
    computing at once) in a Prometheus histogram, and keeps every body it received with the time."""

    def __init__(self, step_seconds: float = 0.005, max_steps: int = 100, serial: bool = False) -> None:
        self.step_seconds, self.max_steps = step_seconds, max_steps
        self.serial = asyncio.Lock() if serial else None
        self.received: list[tuple[float, dict[str, Any]]] = []
        self.queue_seconds: list[float] = []
        self.batch_sizes: list[int] = []
        self.computing = 0
        self.registry = CollectorRegistry()
        self.histogram = Histogram("standin_batch_size", "requests per compute call", registry=self.registry)
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/generate", self.generate)
        app.router.add_get("/readyz", lambda _: web.json_response({"ready": True}))
        app.router.add_get("/metrics", lambda _: web.Response(body=generate_latest(self.registry)))
        return app

    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.received.append((time.monotonic(), body))
        prompt, steps = body["prompt"], body.get("steps", 10)
        if prompt.startswith("status "):
            status = int(prompt.split()[1])
            headers = {"Retry-After": "1"} if status == 429 else {}
            return web.json_response({"error": f"stand-in answers {status}"}, status=status, headers=headers)
        if prompt == "hang":
            await asyncio.sleep(3600)
        if prompt == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if prompt == "garbage":
            return web.Response(text="not the API's answer")
        if steps > self.max_steps:
            return web.json_response({"error": f"steps: {steps} is above {self.max_steps}"}, status=422)
        arrived = time.monotonic()
        async with self.serial or contextlib.nullcontext():
            queue = time.monotonic() - arrived
            self.computing += 1
            self.batch_sizes.append(self.computing)
            self.histogram.observe(self.computing)
            await asyncio.sleep(steps * self.step_seconds)
            self.computing -= 1
        self.queue_seconds.append(queue)
        timings = {"queue": queue, "unet": 0.0, "vae_decoder": 0.0, "vocoder": 0.0, "total": queue}
        audio = ["UklGRg=="] * body.get("waveforms", 1)
        return web.json_response({"seed": body["seed"], "sampling_rate": 16000, "audio": audio, "timings": timings})


@contextlib.contextmanager
def stand_in(**options: Any) -> Iterator[StandIn]:
    """The stand-in serving on a free port from a thread of its own (its own event loop)."""
    server = StandIn(**options)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app(), access_log=None)
    listening = socket.create_server(("127.0.0.1", 0))
    server.url = f"http://127.0.0.1:{listening.getsockname()[1]}"

    async def start() -> None:
        await runner.setup()
        await web.SockSite(runner, listening, shutdown_timeout=0.1).start()

    async def stop() -> None:
        await runner.cleanup()
        handlers = asyncio.all_tasks() - {asyncio.current_task()}  # requests that hang, answered by no one
        for handler in handlers:
            handler.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()


def test_arrivals_are_a_seeded_poisson_process_with_the_mix_weights() -> None:
    mix = parse_mix(DEFAULT_MIX)
    rate, count = 4.0, 20000
    arrivals = poisson_arrivals(rate, mix, seed=7, count=count)
    times = np.array([a.time for a in arrivals])
    gaps = np.diff(times, prepend=0.0)
    assert np.all(gaps >= 0) and len(arrivals) == count
    # Exponential gaps of mean 1/rate (Kolmogorov-Smirnov), so Poisson counts per second: variance = mean = rate.
    assert stats.kstest(gaps, "expon", args=(0, 1 / rate)).pvalue > 0.01
    per_second = np.bincount(times.astype(int))[:-1]
    assert abs(per_second.mean() - rate) < 4 * np.sqrt(rate / len(per_second))
    assert 0.85 < per_second.var() / per_second.mean() < 1.15
    shares = np.mean([a.request_class == "short" for a in arrivals])
    assert abs(shares - 0.7) < 4 * np.sqrt(0.7 * 0.3 / count)
    # Seeded: the same seed gives the same requests; another rate the same ones with the gaps scaled.
    assert poisson_arrivals(rate, mix, seed=7, count=50) == arrivals[:50]
    assert poisson_arrivals(rate, mix, seed=8, count=50) != arrivals[:50]
    slower = poisson_arrivals(rate / 2, mix, seed=7, count=50)
    assert [(a.request_class, a.body) for a in slower] == [(a.request_class, a.body) for a in arrivals[:50]]
    np.testing.assert_allclose([a.time for a in slower], times[:50] * 2)
    # Each request its own seed; a duration bounds the arrival times instead of a count.
    assert len({a.body["seed"] for a in arrivals}) > 0.99 * count
    within = poisson_arrivals(rate, mix, seed=7, duration=100.0)
    assert within == [a for a in arrivals if a.time < 100.0]


def test_closed_loop_work_follows_the_weights_exactly() -> None:
    mix = parse_mix(["a=0.7:steps=2", "b=0.2", "c=0.1"])
    requests = loadtest.stratified_requests(mix, seed=3, count=23)
    counts = {name: sum(r.request_class == name for r in requests) for name in "abc"}
    assert counts == {"a": 16, "b": 5, "c": 2}
    assert requests == loadtest.stratified_requests(mix, seed=3, count=23)
    assert [r.request_class for r in requests] != sorted(r.request_class for r in requests)


def test_mix_from_the_command_line_or_a_file(tmp_path: Path) -> None:
    inline = parse_mix(["short=7:duration=2.5,steps=10,scheduler=EulerDiscreteScheduler", "long=3:duration=10"])
    assert [(c.name, c.weight) for c in inline] == [("short", 0.7), ("long", 0.3)]
    assert inline[0].body == {
        "prompt": loadtest.DEFAULT_PROMPT,
        "duration": 2.5,
        "steps": 10,
        "scheduler": "EulerDiscreteScheduler",
    }
    mix_file = tmp_path / "mix.json"
    mix_file.write_text(
        json.dumps(
            {
                "short": {"weight": 7, "duration": 2.5, "steps": 10, "scheduler": "EulerDiscreteScheduler"},
                "long": {"weight": 3, "duration": 10},
            }
        )
    )
    assert loadtest.load_mix(mix_file) == inline
    for items, message in [
        (["short"], "expected NAME=WEIGHT"),
        (["short=0"], "weight must be a positive number"),
        (["short=x"], "weight must be a positive number"),
        (["short=1:steps"], "expected FIELD=VALUE"),
        (["short=1:stream=true"], "unknown field 'stream'"),
        (["a=1", "a=2"], "names repeat"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_mix(items)


def test_percentiles_interpolate_between_order_statistics() -> None:
    summary = latency_summary(float(v) for v in range(1, 101))
    assert summary == pytest.approx({"p50": 50.5, "p95": 95.05, "p99": 99.01, "mean": 50.5})
    assert latency_summary([2.0]) == {"p50": 2.0, "p95": 2.0, "p99": 2.0, "mean": 2.0}
    assert latency_summary([]) is None
    outcomes = [Outcome("a", 0.0, 0.0, float(v), "ok", queue=v / 10) for v in range(1, 21)]
    outcomes += [Outcome("a", 0.0, 0.0, 99.0, "429"), Outcome("b", 0.0, 0.0, 5.0, "timeout")]
    record = loadtest.phase_record(outcomes, 10.0, parse_mix(["a=1", "b=1"]), rate=1.0, batch_size=None)
    assert record["outcomes"] == {"ok": 20, "429": 1, "timeout": 1} and record["throughput"] == 2.0
    a = record["classes"]["a"]
    assert a["sent"] == 21 and a["ok"] == 20 and a["outcomes"] == {"ok": 20, "429": 1}
    assert a["latency"]["p95"] == pytest.approx(19.05) and a["queue"]["mean"] == pytest.approx(1.05)
    assert record["classes"]["b"]["latency"] is None


def test_every_request_is_accounted_for_by_its_outcome() -> None:
    """Each class meets one kind of answer; every arrival is sent once and ends in exactly that outcome."""
    expected = {
        "ok": "ok",
        "full": "429",
        "unready": "503",
        "unauthorized": "401",
        "bad": "422",
        "hang": "timeout",
        "drop": "connection error",
        "garbage": "invalid response",
    }
    mix = parse_mix(
        [
            "ok=0.4:steps=2",
            "full=0.1:prompt=status 429",
            "unready=0.1:prompt=status 503",
            "unauthorized=0.05:prompt=status 401",
            "bad=0.1:steps=1000",
            "hang=0.1:prompt=hang",
            "drop=0.1:prompt=drop",
            "garbage=0.05:prompt=garbage",
        ]
    )
    with stand_in() as server:
        settings = LoadSettings(server.url, mix, rates=(40.0, 80.0), requests=60, timeout=1.0, seed=1)
        record = asyncio.run(loadtest.run_load(settings))
        received_seeds = sorted(body["seed"] for _, body in server.received)
    sent_seeds = []
    for index, phase in enumerate(record["phases"]):
        arrivals = poisson_arrivals(phase["rate"], mix, seed=1 + index, count=60)
        sent_seeds += [a.body["seed"] for a in arrivals]
        assert phase["sent"] == 60 and sum(phase["outcomes"].values()) == 60
        assert [(r["request_class"], r["scheduled"]) for r in phase["requests"]] == [
            (a.request_class, a.time) for a in arrivals
        ]
        for name, stats_ in phase["classes"].items():
            assert stats_["outcomes"] == ({expected[name]: stats_["sent"]} if stats_["sent"] else {}), name
        assert {r["status"] for r in phase["requests"] if r["request_class"] == "hang"} == {"timeout"}
        assert all(0.9 < r["latency"] < 2.0 for r in phase["requests"] if r["status"] == "timeout")
        assert all(r["error"] for r in phase["requests"] if r["status"] not in ("ok", "timeout"))
    assert received_seeds == sorted(sent_seeds)
    assert {name for phase in record["phases"] for name, s in phase["classes"].items() if s["sent"]} == set(expected)


def test_arrivals_do_not_wait_for_answers() -> None:
    """Open loop: a server that takes 2 s per request still receives each request at its scheduled time."""
    mix = parse_mix(["slow=1:steps=400"])
    arrivals = poisson_arrivals(10.0, mix, seed=0, count=12)
    with stand_in(step_seconds=0.005, max_steps=1000) as server:

        async def run() -> tuple[list[Outcome], float]:
            async with LoadClient(server.url) as client:
                return await loadtest.open_loop(client, arrivals)

        outcomes, elapsed = asyncio.run(run())
        received = np.array([t for t, _ in server.received])
    assert [o.status for o in outcomes] == ["ok"] * 12
    np.testing.assert_allclose(received - received[0], [a.time - arrivals[0].time for a in arrivals], atol=0.15)
    assert elapsed < arrivals[-1].time + 3.0
    assert all(1.95 < o.latency < 3.0 for o in outcomes)


def test_latency_queue_and_batch_size_are_the_servers() -> None:
    """One-at-a-time stand-in: the reported queue times are those the server sent, the mean batch size is
    that of the server's histogram over the run, and each class's latency is at least its compute time."""
    mix = parse_mix(["short=0.7:steps=2", "long=0.3:steps=8"])
    with stand_in(serial=True, step_seconds=0.01) as server:
        settings = LoadSettings(server.url, mix, rates=(30.0,), requests=40, seed=2)
        record = asyncio.run(loadtest.run_load(settings))
        queue_seconds, batch_sizes = list(server.queue_seconds), list(server.batch_sizes)
    (phase,) = record["phases"]
    assert phase["outcomes"] == {"ok": 40}
    reported = sorted(r["queue"] for r in phase["requests"])
    np.testing.assert_allclose(reported, sorted(queue_seconds))
    assert phase["mean_batch_size"] == pytest.approx(np.mean(batch_sizes)) and batch_sizes == [1] * 40
    for name, compute in (("short", 0.02), ("long", 0.08)):
        latencies = [r["latency"] for r in phase["requests"] if r["request_class"] == name]
        assert min(latencies) >= compute
        assert phase["classes"][name]["latency"] == pytest.approx(latency_summary(latencies))
    assert phase["throughput"] == pytest.approx(40 / phase["elapsed_s"])


def test_batch_size_histogram_is_read_from_prometheus_text() -> None:
    registry = CollectorRegistry()
    batch = Histogram("serve_batch_size", "rows", ["shape"], registry=registry)
    Histogram("other_batch_size_rows", "rows", registry=registry)
    before = generate_latest(registry).decode()
    for size, shape in ((1, "a"), (3, "a"), (4, "b")):
        batch.labels(shape).observe(size)
    after = generate_latest(registry).decode()
    totals = loadtest.batch_size_totals(after, "serve_batch_size")
    assert totals == (8.0, 3.0)
    start = loadtest.batch_size_totals(before, "serve_batch_size")
    assert loadtest.mean_batch_size(start, totals) == pytest.approx(8 / 3)
    assert loadtest.batch_size_totals(after) is None  # two histograms match "batch_size": ambiguous
    assert loadtest.batch_size_totals(after, "missing") is None and loadtest.batch_size_totals(None) is None
    assert loadtest.mean_batch_size(start, start) is None


def test_loadtest_command_prints_the_table_and_writes_the_record(tmp_path: Path) -> None:
    with stand_in() as server:
        result = run_cli(
            "loadtest", "--url", server.url, "--rate", "20", "40", "--requests", "20", "--seed", "5",
            "--output", str(tmp_path), "--mix", "short=0.7:steps=2", "long=0.3:steps=6", "broken=0.1:prompt=status 503",
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "loadtest.json").read_text())
    table = (tmp_path / "loadtest.md").read_text()
    assert table in result.stdout and "| 20 |" in table and "| 40 | long |" in table and "503:" in table
    assert [p["rate"] for p in record["phases"]] == [20.0, 40.0] and record["settings"]["seed"] == 5
    assert record["machine"]["logical_cores"] >= 1 and "audioldm-trt" in record["versions"]
    assert all(sum(p["outcomes"].values()) == p["sent"] == 20 for p in record["phases"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loadtest.json", "loadtest.md"]


def test_loadtest_command_errors_are_one_line(tmp_path: Path) -> None:
    bad_mix = run_cli("loadtest", "--url", "http://127.0.0.1:9", "--rate", "1", "--requests", "1", "--mix", "short=x")
    assert bad_mix.returncode == 2 and bad_mix.stderr.count("\n") == 1 and "weight" in bad_mix.stderr
    no_window = run_cli("loadtest", "--url", "http://127.0.0.1:9", "--rate", "1")
    assert no_window.returncode == 2 and no_window.stderr.count("\n") == 1, no_window.stderr
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    unreachable = run_cli("loadtest", "--url", url, "--rate", "1", "--requests", "1", "--output", str(tmp_path))
    assert unreachable.returncode == 1 and unreachable.stderr.count("\n") == 1, unreachable.stderr
    assert "not ready" in unreachable.stderr and not list(tmp_path.iterdir())


def test_batching_comparison_measures_capacity_and_loads_each_mode_at_its_fraction(tmp_path: Path) -> None:
    """The driver, with a stand-in per mode (one at a time; "none" computes twice as slowly): unloaded latency,
    a closed-loop capacity, then Poisson load at 80% of it, with the ratios against one at a time. A mode whose
    server fails is recorded as failed and the others go on."""
    servers: list[StandIn] = []

    @contextlib.asynccontextmanager
    async def server(mode: str) -> AsyncIterator[str]:
        if mode == "request":
            raise loadtest.LoadTestError("the server exited with status 1")
        with stand_in(serial=True, step_seconds=0.02 if mode == "none" else 0.01) as started:
            servers.append(started)
            yield started.url

    mix = parse_mix(["short=0.7:steps=1", "long=0.3:steps=5"])
    settings = batching.ComparisonSettings(engine=tmp_path, mix=mix, requests=30, capacity_requests=20, concurrency=3)
    record = asyncio.run(batching.compare_batching(settings, server))
    assert list(record["modes"]) == ["step", "request", "none"] and len(servers) == 2
    assert batching.failures(record) == {"request": "the server exited with status 1"}
    for mode, factor in (("step", 1), ("none", 2)):
        result = record["modes"][mode]
        unloaded = {name: u["median"] for name, u in result["unloaded"].items()}
        assert 0.01 * factor <= unloaded["short"] < unloaded["long"]
        # One at a time: capacity is 1 / mean compute time (14 short x 1 step + 6 long x 5 steps, 20 requests).
        compute = (14 * 1 + 6 * 5) * 0.01 * factor
        assert 0.5 * 20 / compute < result["capacity"] < 20 / compute
        assert result["loaded"]["rate"] == pytest.approx(0.8 * result["capacity"])
        assert result["loaded"]["outcomes"] == {"ok": 30} and result["capacity_run"]["outcomes"] == {"ok": 20}
        short = result["loaded"]["classes"]["short"]
        assert short["p95_over_unloaded"] == pytest.approx(short["latency"]["p95"] / unloaded["short"])
    none_p95 = record["modes"]["none"]["loaded"]["classes"]["short"]["latency"]["p95"]
    step_short = record["modes"]["step"]["loaded"]["classes"]["short"]
    assert step_short["baseline_p95_over_p95"] == pytest.approx(none_p95 / step_short["latency"]["p95"])
    text = batching.markdown(record)
    assert "| step-level | short |" in text and "| one at a time | long |" in text
    assert "| request-level | failed: the server exited with status 1 |" in text
    assert "Goal for `short` requests" in text and "- step-level: p95" in text and "- request-level" not in text


def stand_in_process(settings: batching.ComparisonSettings, mode: str, port: int) -> list[str]:
    """A server process that is ready at once; mode "broken" exits at once instead."""
    if mode == "broken":
        return [sys.executable, "-c", "raise SystemExit('no engine here')"]
    program = (
        "from aiohttp import web; app = web.Application(); "
        "app.router.add_get('/readyz', lambda request: web.json_response({})); "
        f"web.run_app(app, host='127.0.0.1', port={port})"
    )
    return [sys.executable, "-c", program]


def test_servers_are_started_until_ready_and_stopped(tmp_path: Path) -> None:
    settings = batching.ComparisonSettings(engine=tmp_path, mix=parse_mix(DEFAULT_MIX), ready_timeout=60)
    server = batching.serve_processes(settings, tmp_path / "logs", command=stand_in_process)

    async def run(mode: str) -> int:
        async with server(mode) as url, LoadClient(url) as client:
            assert await client.readiness() is None
            return int(url.rsplit(":", 1)[1])

    port = asyncio.run(run("step"))
    with socket.socket() as probe:  # the server is gone: its port is free again
        probe.bind(("127.0.0.1", port))
    with pytest.raises(loadtest.LoadTestError, match="exited with status 1: no engine here"):
        asyncio.run(run("broken"))
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["serve-broken.log", "serve-step.log"]


def test_serve_command_names_the_mode_and_limits(tmp_path: Path) -> None:
    settings = batching.ComparisonSettings(
        engine=tmp_path, mix=parse_mix(DEFAULT_MIX), max_batch=4, max_queue=16, serve_args=("--threads", "2")
    )
    command = batching.serve_command(settings, "request", 8123)
    assert command[:4] == [sys.executable, "-m", "audioldm_trt.engine.cli", "serve"]
    text = " ".join(command[4:])
    assert f"--engine {tmp_path}" in text and "--port 8123" in text and "--batching request" in text
    assert "--max-batch 4 --max-queue 16" in text and text.endswith("--threads 2")
