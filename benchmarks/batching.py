"""``audioldm-trt loadtest-batching``: the server's batching modes side by side, in one run on one machine.

For each mode the driver starts ``audioldm-trt serve`` on the same engine, then measures, in order:

1. **Unloaded latency** of each request class: one warm-up request, then ``unloaded_runs`` sent one after the
   other to the idle server; the median.
2. **Capacity**: a closed loop (``concurrency`` users, each sending its next request when the last is answered)
   over ``capacity_requests`` requests whose classes follow the mix's weights exactly; completed requests per
   second. The server is never idle, so this is the rate it sustains on the mix.
3. **The load**: open-loop Poisson arrivals at ``load`` x that capacity (the same seeded arrivals for every mode,
   scaled to its rate), ``requests`` of them; per class p50/p95/p99 against the unloaded latency and against
   one-at-a-time, the queue time, the mean batch size and every error.

Then it stops the server (its whole process group) before the next mode. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from .loadtest import (
    Arrival,
    LoadClient,
    LoadTestError,
    RequestClass,
    closed_loop,
    describe_mix,
    errors_cell,
    latency_cells,
    machine_line,
    measured_phase,
    poisson_arrivals,
    record_header,
    stratified_requests,
)

logger = logging.getLogger(__name__)

#: The server's batching modes (``serve --batching MODE``) and how the tables name them.
MODES = {"step": "step-level", "request": "request-level", "none": "one at a time"}
#: The mode the others are compared with.
BASELINE = "none"
#: A ratio the issue sets as the goal: short requests' p95 at most this times their unloaded latency, and at
#: least this times lower than one at a time.
GOAL_RATIO = 2.0


@dataclass(frozen=True)
class ComparisonSettings:
    """The engine, the mix and the measurements of each mode (see the module's docstring)."""

    engine: Path
    mix: Sequence[RequestClass]
    modes: Sequence[str] = tuple(MODES)
    load: float = 0.8
    requests: int = 80
    capacity_requests: int = 20
    concurrency: int = 4
    unloaded_runs: int = 3
    max_batch: int = 8
    max_queue: int = 64
    timeout: float = 1800.0
    seed: int = 0
    #: More ``audioldm-trt serve`` arguments, e.g. ``--threads 2``.
    serve_args: Sequence[str] = ()
    batch_size_metric: str | None = None
    #: Seconds the server may take to answer ``/readyz`` (Ray's start, the engine's load and warm-up).
    ready_timeout: float = 900.0


#: Starts the server for a batching mode and stops it on exit; yields its URL.
ServerFactory = Callable[[str], contextlib.AbstractAsyncContextManager[str]]


async def compare_batching(settings: ComparisonSettings, server: ServerFactory) -> dict[str, Any]:
    """Measure every mode (``server(mode)`` runs it) and return the record. A mode whose server fails to start
    or to answer is recorded as ``{"error": ...}`` and the run goes on with the next: an hour's run is not lost
    to its last mode."""
    for mode in settings.modes:
        if mode not in MODES:
            raise ValueError(f"unknown batching mode {mode!r}; choose from {', '.join(MODES)}")
    modes: dict[str, dict[str, Any]] = {}
    for mode in settings.modes:
        logger.info("batching %s: starting the server", mode)
        try:
            async with server(mode) as url, LoadClient(url, timeout=settings.timeout) as client:
                modes[mode] = await measure_mode(client, settings)
        except LoadTestError as error:
            logger.warning("batching %s failed: %s", mode, error)
            modes[mode] = {"error": str(error)}
    record = {**record_header({**asdict(settings), "engine": str(settings.engine)}), "modes": modes}
    add_ratios(record)
    return record


async def measure_mode(client: LoadClient, settings: ComparisonSettings) -> dict[str, Any]:
    await client.check_ready()
    unloaded = {c.name: await unloaded_latency(client, c, settings.unloaded_runs) for c in settings.mix}
    logger.info("unloaded: %s", ", ".join(f"{name} {u['median']:.2f} s" for name, u in unloaded.items()))
    capacity_run = await measured_phase(
        client,
        stratified_requests(settings.mix, settings.seed, settings.capacity_requests),
        settings.mix,
        concurrency=settings.concurrency,
        batch_size_metric=settings.batch_size_metric,
    )
    capacity = capacity_run["throughput"]
    if capacity <= 0:
        raise LoadTestError(f"no request succeeded in the capacity run: {capacity_run['outcomes']}")
    rate = settings.load * capacity
    minutes = settings.requests / rate / 60
    logger.info(
        "capacity %.3g requests/s; %d arrivals at %.3g/s: about %.1f min", capacity, settings.requests, rate, minutes
    )
    arrivals = poisson_arrivals(rate, settings.mix, settings.seed, count=settings.requests)
    loaded = await measured_phase(
        client, arrivals, settings.mix, rate=rate, batch_size_metric=settings.batch_size_metric
    )
    return {"unloaded": unloaded, "capacity": capacity, "capacity_run": capacity_run, "loaded": loaded}


async def unloaded_latency(client: LoadClient, request_class: RequestClass, runs: int) -> dict[str, Any]:
    """Median latency of the class on the idle server, after one warm-up request (a new shape may allocate)."""
    requests = [Arrival(0.0, request_class.name, {"seed": i, **request_class.body}) for i in range(runs + 1)]
    outcomes, _ = await closed_loop(client, requests, concurrency=1)
    failed = [o for o in outcomes if o.status != "ok"]
    if failed:
        raise LoadTestError(
            f"class {request_class.name!r} failed on the idle server: {failed[0].status} {failed[0].error}"
        )
    samples = [o.latency for o in outcomes[1:]]
    return {"median": float(np.median(samples)), "samples": samples, "warmup": outcomes[0].latency}


def failures(record: Mapping[str, Any]) -> dict[str, str]:
    """The modes that failed, with their errors."""
    return {mode: result["error"] for mode, result in record["modes"].items() if "error" in result}


def add_ratios(record: dict[str, Any]) -> None:
    """Per mode and class: p95 / unloaded median, and the baseline's p95 / this p95 (when it ran)."""
    measured = {mode: result for mode, result in record["modes"].items() if mode not in failures(record)}
    baseline = measured.get(BASELINE)
    for result in measured.values():
        for name, stats in result["loaded"]["classes"].items():
            p95 = (stats["latency"] or {}).get("p95")
            base = (baseline["loaded"]["classes"][name]["latency"] or {}).get("p95") if baseline else None
            stats["p95_over_unloaded"] = p95 / result["unloaded"][name]["median"] if p95 else None
            stats["baseline_p95_over_p95"] = base / p95 if p95 and base else None


def markdown(record: dict[str, Any]) -> str:
    """Per mode: capacity, the load and what came of it; per mode and class: latency against unloaded and
    against one at a time; then the issue's goal for the class that is fastest unloaded."""
    settings, modes = record["settings"], record["modes"]
    lines = [
        f"Batching modes compared on `{settings['engine']}`: mix {describe_mix(settings['mix'])}. Capacity: a "
        f"closed loop of {settings['concurrency']} users over {settings['capacity_requests']} requests; load: "
        f"{settings['requests']} Poisson arrivals at {settings['load']:.0%} of each mode's capacity (seed "
        f"{settings['seed']}); server --max-batch {settings['max_batch']} --max-queue {settings['max_queue']}"
        f"{' ' + ' '.join(settings['serve_args']) if settings['serve_args'] else ''}.",
        "",
        machine_line(record["machine"]).replace("Client machine", "Machine (server and client)"),
        "",
        "| batching | capacity (req/s) | load (req/s) | throughput (completed/s) | mean batch size | errors |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for mode, result in modes.items():
        if "error" in result:
            lines.append(f"| {MODES[mode]} | failed: {result['error']} | | | | |")
            continue
        loaded = result["loaded"]
        batch = loaded["mean_batch_size"]
        lines.append(
            f"| {MODES[mode]} | {result['capacity']:#.3g} | {loaded['rate']:#.3g} | {loaded['throughput']:#.3g} "
            f"| {'-' if batch is None else f'{batch:.2f}'} | {errors_cell(loaded['outcomes'])} |"
        )
    lines += [
        "",
        "Latency under the load (seconds; ok answers), against the unloaded median and against one at a time:",
        "",
        "| batching | class | unloaded | p50 | p95 | p99 | mean queue | p95 queue | p95 / unloaded "
        "| one-at-a-time p95 / p95 |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    measured = {mode: result for mode, result in modes.items() if "error" not in result}
    for mode, result in measured.items():
        for name, stats in result["loaded"]["classes"].items():
            lines.append(
                f"| {MODES[mode]} | {name} | {result['unloaded'][name]['median']:.2f} | {latency_cells(stats)} "
                f"| {_ratio(stats['p95_over_unloaded'])} | {_ratio(stats['baseline_p95_over_p95'])} |"
            )
    lines += ["", *goal_lines(measured)]
    return "\n".join(lines) + "\n"


def goal_lines(measured: Mapping[str, Any]) -> list[str]:
    """Issue 8's goal, per measured mode, for the class that is fastest unloaded (the mix's short requests)."""
    if not measured:
        return []
    first = next(iter(measured.values()))
    short = min(first["unloaded"], key=lambda name: first["unloaded"][name]["median"])
    lines = [
        f"Goal for `{short}` requests: p95 at most {GOAL_RATIO:g}x the unloaded latency, and at least "
        f"{GOAL_RATIO:g}x lower than one at a time."
    ]
    for mode, result in measured.items():
        stats = result["loaded"]["classes"][short]
        over, under = stats["p95_over_unloaded"], stats["baseline_p95_over_p95"]
        verdicts = [f"p95 {_ratio(over)} unloaded ({_met(over is not None and over <= GOAL_RATIO)})"]
        if mode != BASELINE and BASELINE in measured:
            verdicts.append(
                f"{_ratio(under)} lower than one at a time ({_met(under is not None and under >= GOAL_RATIO)})"
            )
        lines.append(f"- {MODES[mode]}: {'; '.join(verdicts)}")
    return lines


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(met: bool) -> str:
    return "met" if met else "not met"


def serve_command(settings: ComparisonSettings, mode: str, port: int) -> list[str]:
    """``audioldm-trt serve`` for a mode, with this Python (the same installation)."""
    return [
        sys.executable,
        "-m",
        "audioldm_trt.engine.cli",
        "serve",
        "--engine",
        str(settings.engine),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--batching",
        mode,
        "--max-batch",
        str(settings.max_batch),
        "--max-queue",
        str(settings.max_queue),
        *settings.serve_args,
    ]


def serve_processes(
    settings: ComparisonSettings,
    logs: Path,
    command: Callable[[ComparisonSettings, str, int], list[str]] = serve_command,
) -> ServerFactory:
    """A :data:`ServerFactory` that runs ``command`` (``audioldm-trt serve``) in a process group of its own, its
    output in ``logs/serve-MODE.log``."""

    @contextlib.asynccontextmanager
    async def server(mode: str) -> AsyncIterator[str]:
        port = free_port()
        logs.mkdir(parents=True, exist_ok=True)
        with open(logs / f"serve-{mode}.log", "wb") as log:
            process = subprocess.Popen(
                command(settings, mode, port), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                url = f"http://127.0.0.1:{port}"
                await wait_until_ready(process, url, settings.ready_timeout, log)
                yield url
            finally:
                stop_process_group(process)

    return server


async def wait_until_ready(process: subprocess.Popen[bytes], url: str, timeout: float, log: IO[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with LoadClient(url, timeout=10) as client:
        while (problem := await client.readiness()) is not None:
            if process.poll() is not None:
                last = (Path(log.name).read_text(errors="replace").strip().splitlines() or [""])[-1]
                raise LoadTestError(f"the server exited with status {process.returncode}: {last} (see {log.name})")
            if loop.time() > deadline:
                raise LoadTestError(f"the server was not ready after {timeout:g} s: {problem} (see {log.name})")
            await asyncio.sleep(1.0)


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    """Ctrl-C to the server (Ray Serve shuts down), then, after ``grace`` seconds or once it exited, SIGKILL to
    whatever is left of its process group."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
