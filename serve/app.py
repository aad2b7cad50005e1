"""The Ray Serve application: an HTTP ingress (FastAPI) in front of N engine replicas.

- ``Ingress`` (one replica): the HTTP API, authentication, validation of the body against the server's
  limits, admission control (429 past ``replicas x (max_batch + max_queue)`` requests held), the request
  timeout (504), readiness (503 until an engine replica is loaded and warmed), the metrics, and the
  playground's files (``serve/playground/``).
- ``EngineReplica`` (``--replicas`` of them, on any node of the cluster): an ``Engine`` and its step loop.
  ``generate`` validates a request with ``Engine.request`` (422 before it is queued), hands it to the loop and
  streams its events back: ``accepted`` or ``error`` first, then ``progress`` per UNet call when asked, then
  ``result`` or ``error``.

The ingress calls a replica through a streaming ``DeploymentHandle``; when the client disconnects, Ray
cancels the ingress's handler and the replica's ``generate`` with it, and the replica's loop drops the
request at its next iteration. ``build_app`` is the entry point of a Ray Serve config file.
"""

# No ``from __future__ import annotations``: FastAPI reads the route methods' annotations at run time.
import asyncio
import hmac
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, cast

import ray
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from audioldm_trt.engine import Engine, GenerationRequest
from audioldm_trt.engine.tokenizer import PromptTokenizer

from .api import (
    AUDIO_MEDIA_TYPES,
    ENGINE_ARGUMENT_FIELDS,
    MAX_BODY_BYTES,
    ErrorBody,
    GenerateBody,
    GenerateResult,
    ServerInfo,
    base64_files,
    encode_audio,
    validation_message,
)
from .loop import CallRecord, Event, Failed, Finished, Job, Progress, StepLoop, first_line
from .metrics import IngressMetrics, ReplicaCollector, ReplicaMetrics
from .policy import default_policy, make_policy
from .settings import ServeSettings, replica_gpus

logger = logging.getLogger(__name__)

#: How long the ingress trusts its last look at the replicas before a generation request looks again.
READINESS_TTL_SECONDS = 1.0
#: Calls a replica takes beyond the requests it holds: the ingress's status looks (readiness, metrics).
STATUS_CALL_SLOTS = 4
#: How long a look at the replicas (readiness, metrics) may take before a replica counts as not answering.
STATUS_TIMEOUT_SECONDS = 5.0
#: What a stopping server's 503s tell clients to wait before they retry (elsewhere, or on its successor).
DRAINING_RETRY_SECONDS = 5
#: Seconds beyond the request timeout that Ray waits for a stopping replica's requests (redeploys, scale-down).
SHUTDOWN_MARGIN_SECONDS = 10.0
#: Seconds the request-level batcher waits for more requests before it starts a batch.
REQUEST_BATCH_WAIT_SECONDS = 0.05
#: The playground's files (``serve/playground/``) by the path that serves them, with their media types.
PLAYGROUND_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
#: The page loads nothing from elsewhere: its audio and spectrograms are made from the API's answers.
PLAYGROUND_POLICY = "default-src 'self'; media-src 'self' blob:; img-src 'self' blob: data:"

app = FastAPI(
    title="audioldm-trt",
    summary="AudioLDM text-to-audio on Ray Serve, with step-level batching across requests",
    description='`POST /v1/generate` turns a prompt into audio. Errors are JSON `{"error": "..."}`.',
)


class Refusal(Exception):
    """A request answered with an error status and a one-line JSON message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.message}, status_code=self.status, headers=self.headers)


@app.exception_handler(Exception)
async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """Even a bug answers JSON, with one line and no traceback (which is logged)."""
    logger.error("%s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"error": f"internal error ({type(error).__name__})"}, status_code=500)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in {
        401: "no or wrong `Authorization: Bearer KEY` (with `--api-key-file`)",
        422: "a bad field, a body too large, or a request the engine cannot run",
        429: "the queue is full; `Retry-After` says when to try again",
        503: "no engine replica is loaded and warmed yet, or the one serving the request stopped",
        504: "the request took longer than `--request-timeout`",
    }.items()
}


def read_api_key(path: str) -> bytes:
    try:
        key = Path(path).read_bytes().strip()
    except OSError as error:
        raise ValueError(f"cannot read the API key file {path}: {error.strerror}") from None
    if not key:
        raise ValueError(f"the API key file {path} is empty")
    return key


def read_playground() -> dict[str, bytes]:
    """The playground's files by the path that serves them, read once."""
    directory = resources.files("audioldm_trt.serve") / "playground"
    return {path: (directory / name).read_bytes() for path, (name, _) in PLAYGROUND_FILES.items()}


async def read_body(request: Request) -> bytes:
    """The body, refused (413) past MAX_BODY_BYTES without reading further."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise Refusal(413, f"body: {declared} bytes is larger than the limit of {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise Refusal(413, f"body: larger than the limit of {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(data: bytes) -> GenerateBody:
    try:
        return GenerateBody.model_validate_json(data)
    except ValidationError as error:
        raise Refusal(422, validation_message(error)) from None


def raw_audio_format(accept: str, body: GenerateBody) -> str | None:
    """``wav``/``flac`` when the client accepts that audio type rather than JSON, else None (JSON)."""
    wanted = [fmt for fmt, media in AUDIO_MEDIA_TYPES.items() if media in accept]
    if not wanted or "application/json" in accept:
        return None
    if body.stream:
        raise Refusal(422, "stream: a stream answers text/event-stream, not the Accept header's audio")
    if body.waveforms != 1:
        raise Refusal(422, f"waveforms: a raw audio answer holds one waveform, not {body.waveforms}: ask for JSON")
    return body.format if body.format in wanted else wanted[0]


def http_field_names(message: str) -> str:
    """An engine error in the HTTP API's words: its argument names become the body's field names."""
    for argument, name in ENGINE_ARGUMENT_FIELDS.items():
        message = message.replace(argument, name)
    return message


def result_json(result: dict[str, Any], total: float) -> dict[str, Any]:
    timings = {key: result["timings"][key] for key in ("queue", "unet", "vae_decoder", "vocoder")}
    return {
        "seed": result["seed"],
        "sampling_rate": result["sampling_rate"],
        "audio": base64_files(result["audio"]),
        "timings": {**timings, "total": total},
    }


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def runs_on_gpu(engine: Engine) -> bool:
    from audioldm_trt.engine.backends.onnxruntime import CUDA

    return engine.backend.name == "tensorrt" or getattr(engine.backend, "providers", [None])[0] == CUDA


@dataclass
class Call:
    """One streaming call to an engine replica, read up to its deadline; every failure becomes a Refusal."""

    response: DeploymentResponseGenerator[dict[str, Any]]
    #: ``time.perf_counter()`` at which the request is answered 504.
    deadline: float
    _finished: bool = field(default=False, init=False)

    async def accepted(self) -> None:
        event = await self._next()
        if event["event"] != "accepted":
            raise Refusal(500, f"the engine replica answered {event['event']!r} first")

    async def result(self) -> dict[str, Any]:
        async for event in self.events():
            if event["event"] == "result":
                return event
        raise Refusal(500, "the engine replica ended the request without a result")

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Progress events, then the result; an error event raises its Refusal."""
        while not self._finished:
            event = await self._next()
            yield event

    def cancel(self) -> None:
        """Stop the request on its replica (it leaves the loop at the next UNet call); nothing once it ended."""
        if not self._finished:
            self._finished = True
            self.response.cancel()  # type: ignore[no-untyped-call]

    def abandon(self, admission: "Admission") -> None:
        """A stream nobody reads: the request stops and its admission ends (499)."""
        self.cancel()
        admission.end(499)

    async def _next(self) -> dict[str, Any]:
        try:
            event: dict[str, Any] = await asyncio.wait_for(
                self.response.__anext__(), timeout=max(0.0, self.deadline - time.perf_counter())
            )
        except TimeoutError:
            self.response.cancel()  # type: ignore[no-untyped-call]
            raise Refusal(504, "the request took longer than the server's request timeout") from None
        except StopAsyncIteration:
            raise Refusal(500, "the engine replica ended the request without a result") from None
        except asyncio.CancelledError:
            self.response.cancel()  # type: ignore[no-untyped-call]
            raise
        except (RayActorError, RequestCancelledError, DeploymentUnavailableError) as error:
            logger.warning("engine replica lost during a request: %s", first_line(error))
            raise Refusal(503, "the engine replica serving this request stopped; retry") from None
        except Exception as error:
            logger.exception("engine replica call failed")
            raise Refusal(500, f"the engine replica failed ({type(error).__name__})") from None
        if event["event"] == "error":
            raise Refusal(event["status"], event["error"])
        self._finished = event["event"] == "result"
        return event


class Admission:
    """An admitted request: counted in flight until its answer, then counted by status; ``end`` counts once
    however often it is called. As a context manager it ends on every path: 200, a Refusal's status, 499 when
    the handler is cancelled (the client left), 500 for anything else; unless ``hand_off`` gave the ending to a
    stream."""

    def __init__(self, ingress: "Ingress") -> None:
        self._ingress = ingress
        self._ended = False
        self._handed_off = False
        ingress.held += 1
        ingress.metrics.in_flight.inc()

    def __enter__(self) -> "Admission":
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, traceback: Any) -> None:
        if kind is None and self._handed_off:
            return
        if kind is None:
            self.end(200)
        elif isinstance(error, Refusal):
            self.end(error.status)
        else:
            self.end(499 if issubclass(kind, asyncio.CancelledError) else 500)

    def hand_off(self) -> None:
        """The stream that answers the request ends it."""
        self._handed_off = True

    def end(self, status: int) -> None:
        if self._ended:
            return
        self._ended = True
        self._ingress.held -= 1
        self._ingress.metrics.in_flight.dec()
        self._ingress.metrics.requests.labels(str(status)).inc()


class Ticket:
    """A replica's handle on one request in its loop: the events for ``generate`` and a flag for the batcher.
    Events come from the loop's thread and are handed to the replica's event loop."""

    def __init__(self, request: GenerationRequest) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.finished = asyncio.Event()
        #: With request-level batching: the batch this request runs in (kept so that it is not collected).
        self.batch: asyncio.Future[Any] | None = None
        self._loop = asyncio.get_running_loop()
        self.job = Job(request, self._send)

    def _send(self, event: Event) -> None:
        """Called from the loop's thread."""
        self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: Event) -> None:
        if self.finished.is_set():  # one final event, whoever sends a second
            return
        self.events.put_nowait(event)
        if not isinstance(event, Progress):
            self.finished.set()

    def batch_ended(self, batch: "asyncio.Future[Any]") -> None:
        """Request-level batching: a batch that failed answers its requests now, not at their timeout."""
        if not batch.cancelled() and (error := batch.exception()) is not None:
            self._deliver(Failed(500, f"the request batch failed: {first_line(error)}"))


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    """The HTTP API; holds the request-level metrics and admission counts of the whole application."""

    def __init__(self, engine_replicas: DeploymentHandle[Any], settings: ServeSettings) -> None:
        self._replicas = engine_replicas
        self._streaming = engine_replicas.options(stream=True)
        self._settings = settings
        self._key = read_api_key(settings.api_key_file) if settings.api_key_file else None
        self._playground = read_playground() if settings.playground else {}
        self._capacity = settings.replicas * settings.replica_capacity
        self.held = 0
        self._draining = False
        self._ready_at = -math.inf
        #: The last look at the replicas of each kind (with metrics or without): when, and its future.
        self._status_looks: dict[bool, tuple[float, asyncio.Future[list[dict[str, Any]]]]] = {}
        self._seconds_per_request = 1.0
        self.metrics = IngressMetrics()
        self._replica_metrics = ReplicaCollector()
        self.metrics.registry.register(self._replica_metrics)

    @app.get("/healthz", summary="the server process answers")
    async def healthz(self) -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/readyz", summary="an engine replica is loaded and warmed", responses={503: ERROR_RESPONSES[503]})
    async def readyz(self) -> Response:
        if self._draining:
            return Refusal(503, "the server is stopping", {"Retry-After": str(DRAINING_RETRY_SECONDS)}).response()
        statuses = await self._replica_statuses()
        if not statuses:
            return Refusal(503, "no engine replica is loaded and warmed yet").response()
        return JSONResponse({"status": "ready", "replicas": len(statuses), "target_replicas": self._settings.replicas})

    @app.get("/metrics", summary="Prometheus metrics of the ingress and of every engine replica")
    async def metrics_text(self) -> Response:
        statuses = await self._replica_statuses(metrics=True)
        self._replica_metrics.expositions = [(s["replica"], s["metrics"]) for s in statuses]
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    @app.get("/playground.js", include_in_schema=False)
    @app.get("/playground.css", include_in_schema=False)
    async def playground(self, request: Request) -> Response:
        """The playground: a page that drives the API from a browser, open like /docs (its API calls carry the
        key)."""
        path = request.url.path
        if not self._playground:
            return Refusal(404, "the playground is off on this server (--no-playground)").response()
        headers = {"Content-Security-Policy": PLAYGROUND_POLICY, "Cache-Control": "no-cache"}
        return Response(self._playground[path], media_type=PLAYGROUND_FILES[path][1], headers=headers)

    @app.get(
        "/v1/info",
        summary="the schedulers, limits and defaults of the generate body's fields",
        response_model=ServerInfo,
        responses={401: ERROR_RESPONSES[401]},
    )
    async def info(self, request: Request) -> Response:
        try:
            self._authorize(request.headers.get("authorization"))
        except Refusal as refusal:
            return refusal.response()
        return JSONResponse(ServerInfo.of(self._settings.limits).model_dump())

    @app.post(
        "/v1/generate",
        summary="text to audio",
        description=(
            "Answers JSON (base64 audio files), the raw file with `Accept: audio/wav` or `audio/flac` (one waveform;"
            ' the seed in `X-Seed`), or with `"stream": true` a `text/event-stream` of `progress` events'
            " (`step` and `steps` count UNet calls) and one `result` event."
        ),
        response_model=GenerateResult,
        responses={
            200: {"content": {"audio/wav": {}, "audio/flac": {}, "text/event-stream": {}}},
            **ERROR_RESPONSES,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": GenerateBody.model_json_schema()}},
            }
        },
    )
    async def generate(self, request: Request) -> Response:
        arrived = time.perf_counter()
        admission: Admission | None = None
        try:
            self._authorize(request.headers.get("authorization"))
            body = parse_body(await read_body(request))
            try:
                body.check(self._settings.limits)
            except ValueError as error:
                raise Refusal(422, str(error)) from None
            raw_format = raw_audio_format(request.headers.get("accept", ""), body)
            if self._draining:
                raise Refusal(503, "the server is stopping; retry", {"Retry-After": str(DRAINING_RETRY_SECONDS)})
            # Full: refused at once. Replicas that hold all they take answer the readiness look only after a
            # timeout (their status calls wait for a slot), which would turn the 429 into a late 503.
            self._refuse_when_full()
            if not await self._ready():
                raise Refusal(503, "no engine replica is loaded and warmed yet; retry shortly")
            self._refuse_when_full()  # again: others may have been admitted while it looked
            with Admission(self) as admission:
                replies = self._streaming.generate.remote(
                    body.engine_arguments(), raw_format or body.format, body.stream
                )
                deadline = arrived + self._settings.request_timeout
                call = Call(cast(DeploymentResponseGenerator[dict[str, Any]], replies), deadline)
                await call.accepted()
                if body.stream:
                    events = self._stream(call, arrived, admission)
                    admission.hand_off()
                    # A stream that never starts (the client left at once) still ends: its request stops
                    # computing and its admission is counted.
                    weakref.finalize(events, call.abandon, admission)
                    return StreamingResponse(events, media_type="text/event-stream")
                return self._answer(await call.result(), arrived, raw_format)
        except Refusal as refusal:
            if admission is None:  # refused before admission; an admission counts itself
                self.metrics.requests.labels(str(refusal.status)).inc()
            return refusal.response()
        except asyncio.CancelledError:
            if admission is None:
                self.metrics.requests.labels("499").inc()
            raise

    def _refuse_when_full(self) -> None:
        if self.held >= self._capacity:
            retry = max(1, math.ceil(self._seconds_per_request))
            raise Refusal(429, f"the queue is full ({self.held} requests)", {"Retry-After": str(retry)})

    def drain(self) -> int:
        """Stop admitting: new requests get 503 with Retry-After and /readyz turns 503, while the requests held
        go on to their answers. How many are held."""
        self._draining = True
        return self.held

    def held_requests(self) -> int:
        return self.held

    def _authorize(self, header: str | None) -> None:
        """Constant-time comparison of the bearer key; the key and the header are never logged."""
        if self._key is None:
            return
        scheme, _, given = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self._key):
            raise Refusal(401, "missing or wrong Authorization: Bearer key", {"WWW-Authenticate": "Bearer"})

    async def _ready(self) -> bool:
        if time.monotonic() - self._ready_at < READINESS_TTL_SECONDS:
            return True
        return bool(await self._replica_statuses())

    async def _replica_statuses(self, metrics: bool = False) -> list[dict[str, Any]]:
        """The status of every engine replica that answers (none while they load), looked at most once per
        READINESS_TTL_SECONDS for each kind, once for all the callers of that time: probes and scrapes do not
        become a broadcast each."""
        looked_at, look = self._status_looks.get(metrics, (-math.inf, None))
        if look is None or time.monotonic() - looked_at >= READINESS_TTL_SECONDS:
            look = asyncio.ensure_future(self._look_at_replicas(metrics))
            self._status_looks[metrics] = (time.monotonic(), look)
        return await asyncio.shield(look)  # a caller that leaves does not cancel the others' look

    async def _look_at_replicas(self, metrics: bool) -> list[dict[str, Any]]:
        try:
            answers = await self._replicas.broadcast("status", metrics).results_async(
                timeout_s=STATUS_TIMEOUT_SECONDS, return_exceptions=True
            )
        except (TimeoutError, DeploymentUnavailableError):  # none answers in time; none is running
            answers = []
        statuses = [a for a in answers if isinstance(a, dict)]
        self.metrics.replicas_ready.set(len(statuses))
        if statuses:
            self._ready_at = time.monotonic()
        return statuses

    def _answer(self, result: dict[str, Any], arrived: float, raw_format: str | None) -> Response:
        total = time.perf_counter() - arrived
        self._observe(result, total)
        if raw_format is not None:
            headers = {"X-Seed": str(result["seed"])}
            return Response(result["audio"][0], media_type=AUDIO_MEDIA_TYPES[raw_format], headers=headers)
        return JSONResponse(result_json(result, total))

    async def _stream(self, call: Call, arrived: float, admission: Admission) -> AsyncIterator[str]:
        status = 499  # unless it gets further
        try:
            async for event in call.events():
                if event["event"] == "progress":
                    yield sse("progress", {"step": event["step"], "steps": event["steps"]})
                    continue
                total = time.perf_counter() - arrived
                self._observe(event, total)
                status = 200
                yield sse("result", result_json(event, total))
        except Refusal as refusal:
            status = refusal.status
            yield sse("error", {"error": refusal.message, "status": refusal.status})
        finally:
            if status == 499:  # the client left, or the stream was closed before its end
                call.cancel()
            admission.end(status)

    def _observe(self, result: dict[str, Any], total: float) -> None:
        timings = result["timings"]
        self.metrics.queue_seconds.observe(timings["queue"])
        self.metrics.compute_seconds.observe(timings["compute"])
        self.metrics.request_seconds.observe(total)
        self._seconds_per_request += 0.2 * (total - self._seconds_per_request)


@serve.deployment(name="EngineReplica")
class EngineReplica:
    """An Engine, warmed, and its step loop (or, with ``batching="request"``, whole-request batches)."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        self._engine = Engine.load(
            settings.engine, backend=settings.backend, verify=settings.verify, threads=settings.threads
        )
        self._tokenizer = PromptTokenizer.from_directory(Path(settings.engine) / "tokenizer")
        model = self._engine.manifest.model
        self._token_limits = {
            "prompt": self._tokenizer.max_length,
            "negative_prompt": min(model.embedding_dim, self._tokenizer.max_length),
        }
        # The first calls allocate and (TensorRT) capture; a request should not pay for them.
        self._engine.run("warm-up", num_inference_steps=2, seed=0)
        on_gpu = runs_on_gpu(self._engine)
        name = {"none": "fifo", "request": "fill"}.get(settings.batching, settings.policy)
        name = default_policy(on_gpu) if name == "auto" else name
        # --max-batch requests per call, both sides of guidance each, within the engines' profiles (TensorRT).
        backend = self._engine.backend
        rows = [2 * settings.max_batch, backend.max_rows("unet") or 2 * settings.max_batch]
        policy = make_policy(name, settings.max_batch, max_rows=min(rows))
        self.metrics = ReplicaMetrics()
        self._loop = StepLoop(
            self._engine, policy, on_call=self._record_call, max_decode_waveforms=backend.max_rows("vae_decoder")
        )
        batcher: Any = self._batch_whole_requests  # @serve.batch's wrapper, untyped
        batcher.set_max_batch_size(settings.max_batch)
        batcher.set_batch_wait_timeout_s(REQUEST_BATCH_WAIT_SECONDS)
        self._id = serve.get_replica_context().replica_id.unique_id
        logger.info("replica %s ready: %s, policy %s", self._id, self._engine.backend.describe(), policy.name)

    def status(self, metrics: bool = False) -> dict[str, Any]:
        held = self._loop.held()
        self.metrics.held.set(held)
        exposition = self.metrics.exposition() if metrics else ""
        return {"replica": self._id, "policy": self._loop.policy, "held": held, "metrics": exposition}

    def check_health(self) -> None:
        """Ray restarts a replica whose loop thread died or whose engine call has hung past ``stall_timeout``
        (the requests it held are answered 503 by the ingress when the replica goes)."""
        if not self._loop.alive():
            raise RuntimeError("the step loop thread stopped")
        stalled = self._loop.stalled_seconds()
        if stalled > self._settings.stall_timeout:
            raise RuntimeError(f"an engine call has not returned for {stalled:.0f} s: the engine is wedged")

    async def generate(
        self, arguments: dict[str, Any], audio_format: str, progress: bool
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            self._check_prompt_lengths(arguments)
            request = self._engine.request(**arguments)
        except ValueError as error:
            yield {"event": "error", "status": 422, "error": http_field_names(first_line(error))}
            return
        ticket = Ticket(request)
        if self._settings.batching == "request":
            ticket.batch = asyncio.ensure_future(self._batch_whole_requests(ticket))
            ticket.batch.add_done_callback(ticket.batch_ended)
        else:
            try:
                self._loop.submit([ticket.job])
            except RuntimeError:  # closed: Ray is stopping this replica
                yield {"event": "error", "status": 503, "error": "the engine replica is shutting down; retry"}
                return
        try:
            yield {"event": "accepted"}
            while True:
                event = await ticket.events.get()
                if isinstance(event, Progress):
                    if progress:
                        yield {"event": "progress", "step": event.call, "steps": event.calls}
                elif isinstance(event, Failed):
                    yield {"event": "error", "status": event.status, "error": event.message}
                    return
                else:
                    yield await asyncio.to_thread(self._result, event, audio_format)
                    return
        finally:
            if not ticket.finished.is_set():
                self._loop.cancel(ticket.job)

    def _check_prompt_lengths(self, arguments: dict[str, Any]) -> None:
        """Refuse what the text encoder would truncate (diffusers truncates with a warning; a server's client
        would not see it): prompts past the tokenizer's limit, negative prompts past the embedding size (the
        limit diffusers applies to them)."""
        for argument, limit in self._token_limits.items():
            text = arguments[argument]
            if text is not None:
                (tokens,) = self._tokenizer.count([text])
                if tokens > limit:
                    raise ValueError(f"{argument}: {tokens} tokens is more than the model reads ({limit})")

    @serve.batch(max_batch_size=8)
    async def _batch_whole_requests(self, tickets: list[Ticket]) -> list[None]:
        """Request-level batching: requests that arrive together run together to their ends (``fill`` policy),
        and the next batch starts when this one is done."""
        try:
            self._loop.submit([ticket.job for ticket in tickets])
        except RuntimeError:  # closed: Ray is stopping this replica
            for ticket in tickets:
                ticket.job.notify(Failed(503, "the engine replica is shutting down; retry"))
            return [None] * len(tickets)
        await asyncio.gather(*(ticket.finished.wait() for ticket in tickets))
        return [None] * len(tickets)

    def _result(self, finished: Finished, audio_format: str) -> dict[str, Any]:
        generation = finished.generation
        stages = generation.timings
        return {
            "event": "result",
            "seed": generation.seed,
            "sampling_rate": self._engine.sampling_rate,
            "audio": encode_audio(generation.audio, self._engine.sampling_rate, audio_format),
            "timings": {
                "queue": finished.queue_seconds,
                "compute": finished.compute_seconds,
                **{stage: stages[stage] for stage in ("unet", "vae_decoder", "vocoder")},
            },
        }

    def _record_call(self, call: CallRecord) -> None:
        self.metrics.unet_calls.inc()
        self.metrics.unet_rows.inc(call.rows)
        self.metrics.unet_seconds.inc(call.seconds)
        self.metrics.batch_size.observe(call.requests)

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()
            self._engine.close()


def build_app(args: ServeSettings) -> Any:
    """The application for ``serve.run`` and for a Ray Serve config file (``import_path:
    audioldm_trt.serve.app:build_app``, ``args:`` the fields of ``ServeSettings``)."""
    settings = ServeSettings.model_validate(args)
    actor = {
        "num_cpus": 1.0 if settings.replica_cpus is None else settings.replica_cpus,
        "num_gpus": replica_gpus(settings, ray.cluster_resources().get("GPU", 0.0) if ray.is_initialized() else 0.0),
    }
    replicas = (
        cast(Any, EngineReplica)
        .options(
            num_replicas=settings.replicas,
            # The ingress admits the requests; the slots beyond them are for its status calls, which a full
            # replica would otherwise answer only once a request left (a busy server reported not ready).
            max_ongoing_requests=settings.replica_capacity + STATUS_CALL_SLOTS,
            ray_actor_options=actor,
            health_check_period_s=10,
            graceful_shutdown_timeout_s=settings.request_timeout + SHUTDOWN_MARGIN_SECONDS,
            graceful_shutdown_wait_loop_s=0.5,
        )
        .bind(settings)
    )
    total = settings.replicas * settings.replica_capacity
    # The ingress answers refusals itself: it takes every request up to far past the capacity it admits.
    return (
        cast(Any, Ingress)
        .options(
            max_ongoing_requests=4 * total + 64,
            ray_actor_options={"num_cpus": 0},
            graceful_shutdown_timeout_s=settings.request_timeout + SHUTDOWN_MARGIN_SECONDS,
            graceful_shutdown_wait_loop_s=0.5,
        )
        .bind(replicas, settings)
    )
