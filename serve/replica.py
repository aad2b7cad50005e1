"""An engine replica (``--replicas`` of them, on any node of the cluster): an ``Engine`` and its step loop.

``generate`` validates a request with ``Engine.request`` (422 before it is queued), hands it to the loop and
streams its events back: ``accepted`` or ``error`` first; when the client streams, ``progress`` per UNet call
and ``audio`` per vocoder chunk (16-bit PCM, the samples of the final file); then ``result`` or ``error``.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray
from ray import serve

from audioldm_trt.engine import Engine, GenerationRequest
from audioldm_trt.engine.decoding import chunk_frames

from .api import REPLICA_LOST_MESSAGE, encode_audio, encode_pcm16, http_field_names
from .loop import (
    Audio,
    CallRecord,
    Event,
    Failed,
    Finished,
    Job,
    Progress,
    StepLoop,
    first_line,
    measure_service_times,
)
from .metrics import ReplicaMetrics
from .policy import default_policy, make_policy
from .settings import ServeSettings

logger = logging.getLogger(__name__)

#: Seconds the request-level batcher waits for more requests before it starts a batch.
REQUEST_BATCH_WAIT_SECONDS = 0.05


def runs_on_gpu(engine: Engine) -> bool:
    from audioldm_trt.engine.backends.onnxruntime import CUDA

    return engine.backend.name == "tensorrt" or getattr(engine.backend, "providers", [None])[0] == CUDA


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
        if not isinstance(event, Progress | Audio):
            self.finished.set()

    def batch_ended(self, batch: "asyncio.Future[Any]") -> None:
        """Request-level batching: a batch that failed answers its requests now, not at their timeout."""
        if not batch.cancelled() and (error := batch.exception()) is not None:
            self._deliver(Failed(500, f"the request batch failed: {first_line(error)}"))


@serve.deployment(name="EngineReplica")
class EngineReplica:
    """An Engine, warmed, and its step loop (or, with ``batching="request"``, whole-request batches)."""

    def __init__(self, settings: ServeSettings) -> None:
        self._settings = settings
        # As many threads per graph call as the CPUs Ray gave the replica, so that replicas sharing a node do not
        # oversubscribe its cores.
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        threads = settings.threads or max(1, int(cpus))
        self._engine = Engine.load(settings.engine, backend=settings.backend, verify=settings.verify, threads=threads)
        span_frames = chunk_frames(self._engine.manifest.model, settings.vocoder_chunk)
        service_times = measure_service_times(self._engine)
        on_gpu = runs_on_gpu(self._engine)
        name = {"none": "fifo", "request": "fill"}.get(settings.batching, settings.policy)
        name = default_policy(on_gpu) if name == "auto" else name
        # --max-batch requests per call, both sides of guidance each, within the engines' profiles (TensorRT).
        backend = self._engine.backend
        rows = [2 * settings.max_batch, backend.max_rows("unet") or 2 * settings.max_batch]
        max_rows = {
            "unet": min(rows),
            "vae_decoder": backend.max_rows("vae_decoder"),
            "vocoder": backend.max_rows("vocoder"),
        }
        policy = make_policy(name, settings.max_batch, max_rows)
        self.metrics = ReplicaMetrics()
        self._loop = StepLoop(self._engine, policy, service_times, on_call=self._record_call, span_frames=span_frames)
        batcher: Any = self._batch_whole_requests  # @serve.batch's wrapper, untyped
        batcher.set_max_batch_size(settings.max_batch)
        batcher.set_batch_wait_timeout_s(REQUEST_BATCH_WAIT_SECONDS)
        self._id = serve.get_replica_context().replica_id.unique_id
        logger.info("replica %s ready: %s, policy %s", self._id, self._engine.backend.describe(), policy.name)

    def status(self, metrics: bool = False) -> dict[str, Any]:
        """``live`` is false once the replica gave up on a wedged engine: the ingress admits for the others and
        is not ready on its account while Ray replaces it."""
        held = self._loop.held()
        self.metrics.held.set(held)
        exposition = self.metrics.exposition() if metrics else ""
        live = not self._loop.abandoned
        return {"replica": self._id, "policy": self._loop.policy, "held": held, "metrics": exposition, "live": live}

    def check_health(self) -> None:
        """Ray replaces a replica whose loop thread died or whose engine call has hung past ``stall_timeout``.
        A wedged replica answers the requests it holds 503 at once (rather than when Ray's graceful stop, which
        waits for them, gives up), so that its stop is quick too."""
        if self._loop.abandoned:
            raise RuntimeError("the engine is wedged")
        if not self._loop.alive():
            raise RuntimeError("the step loop thread stopped")
        stalled = self._loop.stalled_seconds()
        if stalled > self._settings.stall_timeout:
            logger.error("replica %s: an engine call has not returned for %.0f s; giving up on it", self._id, stalled)
            self._loop.abandon(REPLICA_LOST_MESSAGE)
            raise RuntimeError(f"an engine call has not returned for {stalled:.0f} s: the engine is wedged")

    async def generate(
        self, arguments: dict[str, Any], audio_format: str, stream: bool
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            self._engine.check_prompt_lengths(arguments["prompt"], arguments["negative_prompt"])
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
                yield {"event": "error", "status": 503, "error": self._closed_message()}
                return
        try:
            yield {"event": "accepted"}
            while True:
                event = await ticket.events.get()
                if isinstance(event, Progress):
                    if stream:
                        yield {"event": "progress", "step": event.call, "steps": event.calls}
                elif isinstance(event, Audio):
                    if stream:
                        for waveform, pcm16 in enumerate(encode_pcm16(event.chunk.audio)):
                            yield {"event": "audio", "waveform": waveform, "offset": event.chunk.offset, "pcm16": pcm16}
                elif isinstance(event, Failed):
                    yield {"event": "error", "status": event.status, "error": event.message}
                    return
                else:
                    yield await asyncio.to_thread(self._result, event, audio_format)
                    return
        finally:
            if not ticket.finished.is_set():
                self._loop.cancel(ticket.job)

    @serve.batch(max_batch_size=8)
    async def _batch_whole_requests(self, tickets: list[Ticket]) -> list[None]:
        """Request-level batching: requests that arrive together run together to their ends (``fill`` policy),
        and the next batch starts when this one is done."""
        try:
            self._loop.submit([ticket.job for ticket in tickets])
        except RuntimeError:  # closed: Ray is stopping this replica
            for ticket in tickets:
                ticket.job.notify(Failed(503, self._closed_message()))
            return [None] * len(tickets)
        await asyncio.gather(*(ticket.finished.wait() for ticket in tickets))
        return [None] * len(tickets)

    def _closed_message(self) -> str:
        """Why a closed loop refuses a request: the replica gave up on its engine, or Ray is stopping it."""
        return REPLICA_LOST_MESSAGE if self._loop.abandoned else "the engine replica is shutting down; retry"

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
        if call.stage != "unet":
            self.metrics.decode_calls.labels(call.stage).inc()
            self.metrics.decode_seconds.labels(call.stage).inc(call.seconds)
            return
        self.metrics.unet_calls.inc()
        self.metrics.unet_rows.inc(call.rows)
        self.metrics.unet_seconds.inc(call.seconds)
        self.metrics.batch_size.observe(call.requests)

    def __del__(self) -> None:
        loop = getattr(self, "_loop", None)
        if loop is not None:
            loop.close()
            if not loop.abandoned:  # a wedged call still uses the engine: the process's exit frees it
                self._engine.close()
