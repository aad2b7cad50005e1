"""``audioldm-trt loadtest``: open-loop Poisson load on a running ``audioldm-trt serve``, every request accounted for.

Open loop: arrival times are drawn before the run (exponential gaps, the request class drawn by its weight) and
each request is sent at its time whatever the earlier ones are doing, so a slow server meets the load it would
meet from independent users rather than a load that politely slows down with it. The draw is seeded, so two
runs (or two servers) get the same arrivals; at another rate the same seed gives the same sequence, its gaps
scaled. Every request sent ends in exactly one outcome: ``ok``, the HTTP status of an error answer, ``timeout``
(the client's ``--timeout``), ``connection error`` or ``invalid response`` (a 200 that is not the API's JSON).
Latency is the client's, from sending to the last byte of the answer; the queue time is the server's own
(``timings.queue`` of the answer); the mean batch size comes from the server's ``/metrics`` (its batch-size
histogram, scraped before and after each rate). See ``benchmarks/README.md``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ..engine.files import write_atomically
from . import machine

logger = logging.getLogger(__name__)
#: The fields of ``POST /v1/generate`` a request class may set. ``stream`` is not one: the load test reads the
#: JSON answer's timings.
API_FIELDS = (
    "prompt",
    "negative_prompt",
    "duration",
    "steps",
    "guidance",
    "seed",
    "eta",
    "scheduler",
    "waveforms",
    "format",
)
DEFAULT_PROMPT = "A dog barking in the distance while rain falls on a tin roof"
#: Issue 8's mix on the full-size s preset: 70% short requests, 30% long ones.
DEFAULT_MIX = ("short=0.7:duration=2.5,steps=10", "long=0.3:duration=10,steps=25")
#: Outcomes that are not an HTTP status.
OK, TIMEOUT, CONNECTION_ERROR, INVALID_RESPONSE = "ok", "timeout", "connection error", "invalid response"
PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class RequestClass:
    """A kind of request in the mix: its share of the arrivals and its body (API fields)."""

    name: str
    weight: float
    body: Mapping[str, Any]


@dataclass(frozen=True)
class Arrival:
    """One request of a run: when it is sent (seconds from the run's start), its class and its body."""

    time: float
    request_class: str
    body: Mapping[str, Any]


@dataclass
class Outcome:
    """What became of one request. ``latency`` is from sending to the end of the answer (or of the failure);
    ``queue`` is the server's ``timings.queue`` (ok answers only)."""

    request_class: str
    scheduled: float
    sent: float
    latency: float
    status: str
    queue: float | None = None
    error: str | None = None


def parse_mix(items: Sequence[str], prompt: str = DEFAULT_PROMPT) -> list[RequestClass]:
    """``NAME=WEIGHT[:FIELD=VALUE,...]`` items, e.g. ``short=0.7:duration=2.5,steps=10``. Weights are shares of
    the arrivals (normalised to sum to 1); values are read as JSON where they parse (numbers, true/false), else
    as text."""
    classes = []
    for item in items:
        head, _, fields = item.partition(":")
        name, equals, weight = head.partition("=")
        if not equals:
            raise ValueError(f"mix item {item!r}: expected NAME=WEIGHT[:FIELD=VALUE,...]")
        body: dict[str, Any] = {}
        for assignment in filter(None, fields.split(",")):
            key, equals, value = assignment.partition("=")
            if not equals:
                raise ValueError(f"mix item {item!r}: expected FIELD=VALUE, got {assignment!r}")
            body[key.strip()] = _scalar(value.strip())
        classes.append(_request_class(name.strip(), _scalar(weight), body, prompt))
    return _normalised(classes)


def load_mix(path: Path, prompt: str = DEFAULT_PROMPT) -> list[RequestClass]:
    """A JSON mix file: ``{"short": {"weight": 0.7, "duration": 2.5, "steps": 10}, "long": {...}}``."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"mix file {path}: {error}") from None
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise ValueError(f"mix file {path}: expected an object of request classes, each an object of fields")
    classes = []
    for name, fields in document.items():
        body = dict(fields)
        classes.append(_request_class(name, body.pop("weight", None), body, prompt))
    return _normalised(classes)


def _scalar(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _request_class(name: str, weight: Any, body: dict[str, Any], prompt: str) -> RequestClass:
    if not name:
        raise ValueError("mix: a request class has no name")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not (math.isfinite(weight) and weight > 0):
        raise ValueError(f"mix class {name!r}: the weight must be a positive number, got {weight!r}")
    unknown = sorted(set(body) - set(API_FIELDS))
    if unknown:
        raise ValueError(f"mix class {name!r}: unknown field {unknown[0]!r}; fields are {', '.join(API_FIELDS)}")
    return RequestClass(name, float(weight), {"prompt": prompt, **body})


def _normalised(classes: list[RequestClass]) -> list[RequestClass]:
    if not classes:
        raise ValueError("mix: no request classes")
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise ValueError(f"mix: request class names repeat: {', '.join(names)}")
    total = sum(c.weight for c in classes)
    return [RequestClass(c.name, c.weight / total, c.body) for c in classes]


def poisson_arrivals(
    rate: float,
    mix: Sequence[RequestClass],
    seed: int,
    *,
    duration: float | None = None,
    count: int | None = None,
) -> list[Arrival]:
    """Arrivals of a Poisson process of ``rate`` per second over ``duration`` seconds, or ``count`` of them.

    Each arrival's class is drawn by weight and, unless its class fixes one, it gets a seed of its own, so the
    server's work is repeatable too. The gaps are standard exponential draws divided by ``rate``: the same
    seed at another rate gives the same requests in the same order, closer together or further apart.
    """
    if (duration is None) == (count is None):
        raise ValueError("give a duration or a count of arrivals, not both")
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
    draws = _draws(mix, seed)
    arrivals: list[Arrival] = []
    clock = 0.0
    while count is None or len(arrivals) < count:
        gap, request_class, body = next(draws)
        clock += gap / rate
        if duration is not None and clock >= duration:
            break
        arrivals.append(Arrival(clock, request_class, body))
    return arrivals


def stratified_requests(mix: Sequence[RequestClass], seed: int, count: int) -> list[Arrival]:
    """``count`` requests, all due at once (the work of a closed-loop run), each class's share as close to its
    weight as whole requests allow, in a seeded random order: a short run's mix is the mix, not a draw from it."""
    shares = np.array([c.weight for c in mix]) * count
    counts = np.floor(shares).astype(int)
    counts[np.argsort(counts - shares)[: count - counts.sum()]] += 1  # largest remainders get the rest
    generator = np.random.default_rng(seed)
    order = generator.permutation(np.repeat(np.arange(len(mix)), counts))
    return [Arrival(0.0, mix[i].name, {"seed": int(generator.integers(2**31)), **mix[i].body}) for i in order]


def _draws(mix: Sequence[RequestClass], seed: int) -> Iterator[tuple[float, str, dict[str, Any]]]:
    """(standard exponential gap, class name, body) without end, from one seeded generator."""
    generator = np.random.default_rng(seed)
    weights = np.array([c.weight for c in mix])
    while True:
        gap = float(generator.standard_exponential())
        chosen = mix[int(generator.choice(len(mix), p=weights))]
        request_seed = int(generator.integers(2**31))
        yield gap, chosen.name, {"seed": request_seed, **chosen.body}


class LoadTestError(RuntimeError):
    """The server cannot be load-tested: not reachable, not ready, or it failed."""


class LoadClient:
    """An HTTP client for the server under test: no limit on open connections (an open loop must not queue
    on the client's side), one timeout per request, each answer turned into an :class:`Outcome`."""

    def __init__(self, url: str, api_key: str | None = None, timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers=self._headers, timeout=self._timeout
        )

    async def close(self) -> None:
        await self._session.close()

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def send(self, arrival: Arrival, start: float) -> Outcome:
        """Send one request now; ``start`` is the run's start on the event loop's clock."""
        loop = asyncio.get_running_loop()
        sent = loop.time()
        outcome = Outcome(arrival.request_class, arrival.time, sent - start, 0.0, OK)
        try:
            async with self._session.post(f"{self.url}/v1/generate", json=dict(arrival.body)) as response:
                data = await response.read()
                outcome.status, outcome.queue, outcome.error = _read_answer(response.status, data, arrival.body)
        except TimeoutError:
            outcome.status = TIMEOUT
        except aiohttp.ClientError as error:
            outcome.status, outcome.error = CONNECTION_ERROR, f"{type(error).__name__}: {error}"
        outcome.latency = loop.time() - sent
        return outcome

    async def metrics(self) -> str | None:
        """The server's ``/metrics`` text; None when it does not answer 200."""
        try:
            async with self._session.get(f"{self.url}/metrics") as response:
                return await response.text() if response.status == 200 else None
        except (TimeoutError, aiohttp.ClientError):
            return None

    async def readiness(self) -> str | None:
        """None when ``GET /readyz`` answers 200, else what it answered."""
        try:
            async with self._session.get(f"{self.url}/readyz") as response:
                return None if response.status == 200 else f"GET /readyz answered {response.status}"
        except (TimeoutError, aiohttp.ClientError) as error:
            return f"GET /readyz failed: {type(error).__name__}: {error}".rstrip(": ")

    async def check_ready(self) -> None:
        if (problem := await self.readiness()) is not None:
            raise LoadTestError(f"the server at {self.url} is not ready ({problem})")


def _read_answer(status: int, data: bytes, body: Mapping[str, Any]) -> tuple[str, float | None, str | None]:
    """(outcome, queue seconds, error message) of an HTTP answer."""
    try:
        answer = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        answer = None
    if status != 200:
        message = answer.get("error") if isinstance(answer, dict) else None
        return str(status), None, str(message) if message is not None else data[:200].decode(errors="replace")
    try:
        queue = float(answer["timings"]["queue"])
        complete = len(answer["audio"]) == body.get("waveforms", 1)
    except (KeyError, TypeError, ValueError):
        complete = False
    if not complete:
        return INVALID_RESPONSE, None, data[:200].decode(errors="replace")
    return OK, queue, None


async def open_loop(client: LoadClient, arrivals: Sequence[Arrival]) -> tuple[list[Outcome], float]:
    """Send each arrival at its time without waiting for answers; return the outcomes (in arrival order) and the
    seconds from the start to the last answer."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    tasks = []
    for arrival in arrivals:
        delay = start + arrival.time - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(client.send(arrival, start)))
    outcomes = list(await asyncio.gather(*tasks))
    return outcomes, loop.time() - start


async def closed_loop(client: LoadClient, requests: Sequence[Arrival], concurrency: int) -> tuple[list[Outcome], float]:
    """``concurrency`` users, each sending the next request of ``requests`` as soon as its last one is answered:
    the server is never idle, so completions per second is what it sustains on this mix."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = iter(requests)
    outcomes: list[Outcome] = []

    async def user() -> None:
        for request in pending:
            outcomes.append(await client.send(request, start))

    await asyncio.gather(*(user() for _ in range(concurrency)))
    return outcomes, loop.time() - start


def batch_size_totals(metrics_text: str | None, metric: str | None = None) -> tuple[float, float] | None:
    """(sum, count) of the server's batch-size histogram, over all its label sets; None when absent.

    ``metric`` names the histogram; by default the one histogram whose name contains ``batch_size``.
    """
    if metrics_text is None:
        return None
    families = [f for f in text_string_to_metric_families(metrics_text) if f.type == "histogram"]
    matching = [f for f in families if f.name == metric] if metric else [f for f in families if "batch_size" in f.name]
    if len(matching) != 1:
        return None
    family = matching[0]
    sums = sum(s.value for s in family.samples if s.name == f"{family.name}_sum")
    counts = sum(s.value for s in family.samples if s.name == f"{family.name}_count")
    return sums, counts


def mean_batch_size(before: tuple[float, float] | None, after: tuple[float, float] | None) -> float | None:
    """The mean of the batch sizes observed between two scrapes; None without both or without a batch."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def latency_summary(values: Iterable[float]) -> dict[str, float] | None:
    """Mean and percentiles (numpy's linear interpolation between order statistics); None without values."""
    array = np.asarray(list(values), dtype=float)
    if array.size == 0:
        return None
    summary = {f"p{p}": float(np.percentile(array, p)) for p in PERCENTILES}
    return {**summary, "mean": float(array.mean())}


def class_statistics(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    """Counts by outcome, latency of the ok answers and their queue time."""
    ok = [o for o in outcomes if o.status == OK]
    return {
        "sent": len(outcomes),
        "ok": len(ok),
        "outcomes": dict(Counter(o.status for o in outcomes)),
        "latency": latency_summary(o.latency for o in ok),
        "queue": latency_summary(o.queue for o in ok if o.queue is not None),
    }


def phase_record(
    outcomes: Sequence[Outcome],
    elapsed: float,
    mix: Sequence[RequestClass],
    *,
    rate: float | None,
    batch_size: float | None,
) -> dict[str, Any]:
    """Statistics of one run of the load (one rate, or one closed-loop run), per class and over all, with
    every request's outcome. Raises if any request is missing from the accounting."""
    counted = Counter(o.status for o in outcomes)
    if sum(counted.values()) != len(outcomes):
        raise AssertionError("a request was lost from the accounting")
    window = max((o.scheduled for o in outcomes), default=0.0)
    ok = counted.get(OK, 0)
    return {
        "rate": rate,
        "sent": len(outcomes),
        "outcomes": dict(counted),
        "elapsed_s": elapsed,
        "throughput": ok / elapsed if elapsed > 0 else 0.0,
        "max_send_lag_s": max((o.sent - o.scheduled for o in outcomes), default=0.0),
        "arrival_window_s": window,
        "mean_batch_size": batch_size,
        "all": class_statistics(outcomes),
        "classes": {c.name: class_statistics([o for o in outcomes if o.request_class == c.name]) for c in mix},
        "requests": [asdict(o) for o in outcomes],
    }


@dataclass(frozen=True)
class LoadSettings:
    """A load test: the server, the mix, and one run per rate of ``duration`` seconds or ``requests`` arrivals."""

    url: str
    mix: Sequence[RequestClass]
    rates: Sequence[float]
    duration: float | None = None
    requests: int | None = None
    timeout: float = 600.0
    seed: int = 0
    api_key: str | None = field(default=None, repr=False)
    batch_size_metric: str | None = None


async def measured_phase(
    client: LoadClient,
    arrivals: Sequence[Arrival],
    mix: Sequence[RequestClass],
    *,
    rate: float | None = None,
    concurrency: int | None = None,
    batch_size_metric: str | None = None,
) -> dict[str, Any]:
    """One run, open loop at ``rate`` (the arrivals' times) or closed loop with ``concurrency`` users, with the
    server's batch-size histogram scraped before and after it."""
    before = batch_size_totals(await client.metrics(), batch_size_metric)
    if concurrency is None:
        outcomes, elapsed = await open_loop(client, arrivals)
    else:
        outcomes, elapsed = await closed_loop(client, arrivals, concurrency)
    after = batch_size_totals(await client.metrics(), batch_size_metric)
    return phase_record(outcomes, elapsed, mix, rate=rate, batch_size=mean_batch_size(before, after))


async def run_load(settings: LoadSettings) -> dict[str, Any]:
    """Each rate in turn, each run to its last answer before the next starts; the record (see README)."""
    phases = []
    async with LoadClient(settings.url, settings.api_key, settings.timeout) as client:
        await client.check_ready()
        for index, rate in enumerate(settings.rates):
            arrivals = poisson_arrivals(
                rate, settings.mix, settings.seed + index, duration=settings.duration, count=settings.requests
            )
            phases.append(
                await measured_phase(
                    client, arrivals, settings.mix, rate=rate, batch_size_metric=settings.batch_size_metric
                )
            )
    described = {key: value for key, value in asdict(settings).items() if key != "api_key"}
    return {**record_header(described), "phases": phases}


def record_header(settings: Mapping[str, Any]) -> dict[str, Any]:
    """What every load-test record starts with: when, where (this client's machine), and the settings."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine.describe_machine(),
        "versions": machine.versions(),
        "settings": dict(settings),
    }


def markdown(record: dict[str, Any]) -> str:
    """Per rate: throughput, mean batch size and every outcome; then per rate and class, latency and queue."""
    settings = record["settings"]
    window = f"{settings['duration']:g} s" if settings["duration"] is not None else f"{settings['requests']} requests"
    lines = [
        f"Load test of {settings['url']}: mix {describe_mix(settings['mix'])}; Poisson arrivals, {window} per rate, "
        f"seed {settings['seed']}, client timeout {settings['timeout']:g} s.",
        "",
        machine_line(record["machine"]),
        "",
        "| rate (req/s) | sent | ok | throughput (completed/s) | mean batch size | errors | max send lag (ms) |",
        "|--:|--:|--:|--:|--:|---|--:|",
    ]
    for phase in record["phases"]:
        lines.append(
            f"| {phase['rate']:g} | {phase['sent']} | {phase['outcomes'].get(OK, 0)} | {phase['throughput']:.3f} "
            f"| {_or_dash(phase['mean_batch_size'], '{:.2f}')} | {errors_cell(phase['outcomes'])} "
            f"| {phase['max_send_lag_s'] * 1e3:.0f} |"
        )
    lines += [
        "",
        "Latency (client, ok answers) and queue time (server's `timings.queue`), seconds:",
        "",
        "| rate (req/s) | class | sent | ok | p50 | p95 | p99 | mean queue | p95 queue |",
        "|--:|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for phase in record["phases"]:
        for name, stats in phase["classes"].items():
            lines.append(f"| {phase['rate']:g} | {name} | {stats['sent']} | {stats['ok']} | {latency_cells(stats)} |")
    return "\n".join(lines) + "\n"


def describe_mix(mix: Sequence[Mapping[str, Any]]) -> str:
    """``short 70% (duration 2.5, steps 10); ...``: the fields each class sets, its prompt if not the default."""

    def fields(body: Mapping[str, Any]) -> str:
        shown = [f"{k} {v}" for k, v in body.items() if k != "prompt" or v != DEFAULT_PROMPT]
        return f" ({', '.join(shown)})" if shown else ""

    return "; ".join(f"{c['name']} {c['weight']:.0%}{fields(c['body'])}" for c in mix)


def machine_line(description: Mapping[str, Any]) -> str:
    gpu = f"{description['gpu']} ({description['gpu_memory_mib']} MiB)" if description["gpu"] else "no GPU"
    return (
        f"Client machine: {description['cpu']}, {description['logical_cores']} logical cores, "
        f"{description['ram_gib']} GiB RAM, {gpu}; {description['os']}; Python {description['python']}."
    )


def errors_cell(outcomes: Mapping[str, int]) -> str:
    errors = [f"{status}: {count}" for status, count in sorted(outcomes.items()) if status != OK]
    return ", ".join(errors) or "none"


def latency_cells(stats: Mapping[str, Any]) -> str:
    latency, queue = stats["latency"] or {}, stats["queue"] or {}
    cells = [latency.get(f"p{p}") for p in PERCENTILES] + [queue.get("mean"), queue.get("p95")]
    return " | ".join(_or_dash(value, "{:.2f}") for value in cells)


def write_report(record: dict[str, Any], text: str, output: Path, name: str) -> list[Path]:
    """``output/NAME.json`` (the record) and ``output/NAME.md`` (the tables), each complete or not at all."""
    output.mkdir(parents=True, exist_ok=True)
    paths = [output / f"{name}.json", output / f"{name}.md"]
    write_atomically(paths[0], json.dumps(record, indent=2).encode() + b"\n")
    write_atomically(paths[1], text.encode())
    return paths


def _or_dash(value: float | None, template: str) -> str:
    return "-" if value is None else template.format(value)
