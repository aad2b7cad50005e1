"""The HTTP ingress (one replica): the API, authentication, validation of the body against the server's
limits, admission control (429 past ``max_batch + max_queue`` requests held per live engine replica, or when
Ray Serve's own queue limit pushes back), the request timeout
(504), readiness (503 until an engine replica is loaded and warmed, and while the server drains), the metrics,
and the playground's files (``serve/playground/``).

It calls an engine replica through a streaming ``DeploymentHandle``; when the client disconnects, Ray cancels
the ingress's handler and the replica's ``generate`` with it, and the replica's loop drops the request at its
next iteration.
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

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, RequestCancelledError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from .api import (
    AUDIO_MEDIA_TYPES,
    MAX_BODY_BYTES,
    REPLICA_LOST_MESSAGE,
    ErrorBody,
    GenerateBody,
    GenerateResult,
    ServerInfo,
    base64_files,
    validation_message,
)
from .loop import first_line
from .metrics import IngressMetrics, ReplicaCollector
from .settings import ServeSettings

logger = logging.getLogger(__name__)

#: How long the ingress trusts its last look at the replicas before a generation request looks again.
READINESS_TTL_SECONDS = 1.0
#: How long a look at the replicas (readiness, metrics) may take before a replica counts as not answering.
STATUS_TIMEOUT_SECONDS = 5.0
#: What a stopping server's 503s tell clients to wait before they retry (elsewhere, or on its successor).
DRAINING_RETRY_SECONDS = 5
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


@dataclass
class Call:
    """One streaming call to an engine replica, read up to its deadline; every failure becomes a Refusal."""

    response: DeploymentResponseGenerator[dict[str, Any]]
    #: ``time.perf_counter()`` at which the request is answered 504.
    deadline: float
    #: What a 429 answer's Retry-After says, when Ray Serve's queue limit (``max_queued_requests``) pushes back.
    retry_after: int = 1
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
        except BackPressureError:
            raise Refusal(429, "the engine replicas' queue is full", {"Retry-After": str(self.retry_after)}) from None
        except (RayActorError, RequestCancelledError, DeploymentUnavailableError) as error:
            logger.warning("engine replica lost during a request: %s", first_line(error))
            raise Refusal(503, REPLICA_LOST_MESSAGE) from None
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
        #: Engine replicas that answered the last look: admission follows them (autoscaling, a replica lost).
        self._live_replicas = 0
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
        return JSONResponse({"status": "ready", "replicas": len(statuses)})

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
                response = cast(DeploymentResponseGenerator[dict[str, Any]], replies)
                call = Call(response, deadline, self._retry_after())
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
        """429 once the live replicas hold all they take (before the first look: one replica's worth)."""
        if self.held >= max(1, self._live_replicas) * self._settings.replica_capacity:
            retry = str(self._retry_after())
            raise Refusal(429, f"the queue is full ({self.held} requests)", {"Retry-After": retry})

    def _retry_after(self) -> int:
        return max(1, math.ceil(self._seconds_per_request))

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
        statuses = [a for a in answers if isinstance(a, dict) and a["live"]]
        self._live_replicas = len(statuses)
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
                if event["event"] in ("progress", "audio"):
                    yield sse(event["event"], {key: value for key, value in event.items() if key != "event"})
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
