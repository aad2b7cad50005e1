"""A replica's step loop: one thread owns the engine's ``start``/``step``/``decode`` and keeps every admitted
request in flight.

Each iteration: requests submitted since the last one start (one text-encoder call for all of them);
requests whose caller went away (disconnect, timeout) leave; the policy picks the requests of the next call,
which share a stage and an input shape: a UNet call (each chosen request's own scheduler steps), a VAE decoder
call (requests done denoising get their spectrograms), or a vocoder call (each gets its next chunk of audio,
an ``Audio`` event; the last chunk finishes it). Every job gets exactly one final event (``Finished`` or
``Failed``), so nothing half-done stays in the loop and no caller waits forever.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audioldm_trt.engine import (
    AudioChunk,
    Denoising,
    Engine,
    Generation,
    GenerationRequest,
    PartialFailureError,
    Vocoding,
)
from audioldm_trt.engine.decoding import vocoder_windows
from audioldm_trt.engine.manifest import ModelSpec

from .policy import Candidate, Policy, ServiceTimes

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A UNet call the request took part in: ``call`` of ``calls`` done."""

    call: int
    calls: int


@dataclass(frozen=True)
class Audio:
    """The next chunk of the request's waveforms, as the vocoder made it."""

    chunk: AudioChunk


@dataclass(frozen=True)
class Finished:
    generation: Generation
    #: Seconds from admission to the request's first UNet call.
    queue_seconds: float
    #: Seconds from the first UNet call to the decoded audio.
    compute_seconds: float


@dataclass(frozen=True)
class Failed:
    """The request ended without audio; ``status`` is the HTTP status it maps to."""

    status: int
    message: str


Event = Progress | Audio | Finished | Failed


@dataclass(frozen=True)
class CallRecord:
    """One engine call of the loop, for the metrics."""

    stage: str
    requests: int
    rows: int
    seconds: float


_ids = itertools.count()


class Job:
    """One admitted request and the callback its events go back by (called from the loop's thread)."""

    def __init__(self, request: GenerationRequest, notify: Callable[[Event], None]) -> None:
        self.id = next(_ids)
        self.request = request
        self._notify = notify
        self._ended = False
        self.admitted = time.monotonic()
        self.first_call: float | None = None
        #: Set when the loop starts the request (its text encoding and initial noise).
        self.state: Denoising | None = None
        #: Set when its spectrogram is made (the VAE decoder's call).
        self.vocoding: Vocoding | None = None
        self.cancelled = False
        #: Estimated seconds of the request alone, set when it starts (its deadline's measure).
        self.service_seconds = 0.0

    def notify(self, event: Event) -> None:
        """Send an event; nothing after the final one (a request given up on hears no more of its call)."""
        if self._ended:
            return
        self._ended = not isinstance(event, Progress | Audio)
        self._notify(event)

    @property
    def started(self) -> Denoising:
        """The loop state of a started request."""
        assert self.state is not None
        return self.state

    def candidate(self, times: ServiceTimes, model: ModelSpec, span_frames: int | None) -> Candidate:
        """What the policy sees of a started request: its next call and the seconds it has left."""
        request, state = self.request, self.started
        height, waveforms = request.latent_height, request.waveforms
        if self.vocoding is None:
            spans, window = vocoder_windows(
                model, height * model.vae_scale_factor, model.waveform_length(request.audio_length_in_s), span_frames
            )
            windows_left = len(spans)
        else:
            window, windows_left = self.vocoding.window_frames, self.vocoding.remaining_windows
        vocoder = windows_left * times.seconds("vocoder", waveforms * window)
        decoder = 0.0 if self.vocoding is not None else times.seconds("vae_decoder", waveforms * height)
        unet = state.remaining_calls * times.seconds("unet", request.unet_rows * height)
        if not state.done:
            key, rows = ("unet", height), request.unet_rows
        elif self.vocoding is None:
            key, rows = ("vae_decoder", height), waveforms
        else:
            key, rows = ("vocoder", window), waveforms
        if not self.service_seconds:
            self.service_seconds = unet + decoder + vocoder
        return Candidate(self.id, key, rows, self.admitted, self.service_seconds, unet + decoder + vocoder)


class StepLoop:
    """The loop thread of one replica. ``submit`` and ``cancel`` may be called from any thread."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        service_times: ServiceTimes,
        on_call: Callable[[CallRecord], None] | None = None,
        span_frames: int | None = None,
    ) -> None:
        """``span_frames``: the audio of one vocoder call, in mel frames (``chunk_frames``; None: whole clips);
        ``service_times``: the engine's speed (``measure_service_times``), refined by every call."""
        self._engine = engine
        self._policy = policy
        self._times = service_times
        self._on_call = on_call
        self._span_frames = span_frames
        self._wake = threading.Condition()
        self._inbox: list[Job] = []
        self._running: dict[int, Job] = {}
        self._closed = False
        #: Given up on (``abandon``): its thread is stuck in an engine call and is never waited for.
        self.abandoned = False
        #: ``time.monotonic()`` when the engine call under way began; None between calls.
        self._call_started: float | None = None
        self._thread = threading.Thread(target=self._run, name="audioldm-step-loop", daemon=True)
        self._thread.start()

    @property
    def policy(self) -> str:
        return self._policy.name

    def held(self) -> int:
        """Requests in the loop: submitted, started or in a call."""
        with self._wake:
            return len(self._inbox) + len(self._running)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def stalled_seconds(self) -> float:
        """How long the engine call under way has lasted (0 between calls): a call that never returns (a hung
        GPU) shows here while the replica still answers."""
        started = self._call_started
        return 0.0 if started is None else time.monotonic() - started

    def submit(self, jobs: Sequence[Job]) -> None:
        """Add requests; they join at the next iteration."""
        with self._wake:
            if self._closed:
                raise RuntimeError("the step loop is closed")
            self._inbox.extend(jobs)
            self._wake.notify()

    def cancel(self, job: Job) -> None:
        """Drop a request at the next iteration (its caller is gone); its work stops there."""
        with self._wake:
            job.cancelled = True
            self._wake.notify()

    def close(self) -> None:
        """Stop after the current iteration; requests still held fail with 503."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if not self.abandoned:
            self._thread.join()

    def abandon(self, message: str) -> None:
        """Give up on a wedged engine: every request held is answered 503 with ``message`` now and new ones are
        refused. The loop's thread, stuck in its call, is left behind (a daemon; it goes with the process), and
        anything it sends if the call ever returns reaches no one (a request hears one final event)."""
        with self._wake:
            self._closed = self.abandoned = True
            held = [*self._inbox, *self._running.values()]
        for job in held:
            job.notify(Failed(503, message))

    def _run(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._running or self._closed):
                    self._wake.wait()
                if self._closed:
                    break
                new, self._inbox = self._inbox, []
            try:
                self._iterate(new)
            except Exception as error:  # a bug: answer what the loop holds rather than leave it waiting
                logger.exception("the step loop failed")
                held = {job.id: job for job in [*new, *self._running.values()]}
                self._running = {}
                for job in held.values():
                    job.notify(Failed(500, f"the step loop failed: {first_line(error)}"))
        for job in [*self._inbox, *self._running.values()]:
            job.notify(Failed(503, "the server is shutting down"))
        self._inbox, self._running = [], {}

    def _iterate(self, new: list[Job]) -> None:
        self._start([job for job in new if not self._dropped(job)])
        for job in [job for job in self._running.values() if self._dropped(job)]:
            del self._running[job.id]
        model = self._engine.manifest.model
        candidates = [job.candidate(self._times, model, self._span_frames) for job in self._running.values()]
        chosen = self._policy.choose(candidates, time.monotonic())
        if not chosen:
            return
        jobs = [self._running[c.id] for c in chosen]
        stage, length = chosen[0].key
        clock = time.monotonic()
        if stage == "unet":
            done = self._step(jobs)
        elif stage == "vae_decoder":
            done = self._spectrogram(jobs)
        else:
            done = self._vocode(jobs)
        seconds = time.monotonic() - clock
        if done:
            rows = sum(c.rows for c in chosen)
            self._times.observe(stage, rows * length, seconds)
            if self._on_call is not None:
                self._on_call(CallRecord(stage, len(chosen), rows, seconds))

    def _step(self, jobs: list[Job]) -> bool:
        """One UNet call; each request that stepped hears of its progress."""
        clock = time.monotonic()
        stepped = self._guarded(jobs, lambda: self._engine.step([job.started for job in jobs]))
        for index in stepped:
            job = jobs[index]
            job.first_call = job.first_call or clock
            job.notify(Progress(job.started.calls_done, job.request.unet_calls))
        return bool(stepped)

    def _spectrogram(self, jobs: list[Job]) -> bool:
        """One VAE decoder call for requests done denoising: their spectrograms, to be vocoded."""
        call = lambda: self._engine.spectrogram([job.started for job in jobs], self._span_frames)  # noqa: E731
        vocodings = self._guarded(jobs, call)
        for index, vocoding in vocodings.items():
            jobs[index].vocoding = vocoding
        return bool(vocodings)

    def _vocode(self, jobs: list[Job]) -> bool:
        """One vocoder call: each request's next chunk of audio; a request with all of its audio finishes."""
        vocodings = [job.vocoding for job in jobs if job.vocoding is not None]
        chunks = self._guarded(jobs, lambda: self._engine.vocode(vocodings))
        now = time.monotonic()
        for index, chunk in chunks.items():
            job, vocoding = jobs[index], vocodings[index]
            job.notify(Audio(chunk))
            if vocoding.done:
                del self._running[job.id]
                assert job.first_call is not None
                job.notify(Finished(vocoding.generation(), job.first_call - job.admitted, now - job.first_call))
        return bool(chunks)

    def _dropped(self, job: Job) -> bool:
        if job.cancelled:
            job.notify(Failed(499, "the client went away"))
        return job.cancelled

    def _start(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        for index, state in self._guarded(jobs, lambda: self._engine.start([job.request for job in jobs])).items():
            jobs[index].state = state
            self._running[jobs[index].id] = jobs[index]

    def _guarded(self, jobs: Sequence[Job], call: Callable[[], Sequence[Any] | None]) -> dict[int, Any]:
        """Run an engine call for ``jobs``; what it gave for each job that did not fail, by the job's position.
        A job whose own rows failed (PartialFailureError) fails alone; any other failure fails them all. A
        failed job gets its error's first line (500) and leaves the loop; the loop goes on with the others."""
        self._call_started = time.monotonic()
        try:
            results = call()
        except PartialFailureError as error:
            for index, own in error.failed.items():
                self._fail(jobs[index], own)
            return {index: result for index, result in enumerate(error.results) if index not in error.failed}
        except Exception as error:
            logger.exception("engine call failed for %d request(s)", len(jobs))
            for job in jobs:
                self._fail(job, error)
            return {}
        finally:
            self._call_started = None
        return dict(enumerate(results)) if results is not None else dict.fromkeys(range(len(jobs)))

    def _fail(self, job: Job, error: Exception) -> None:
        self._running.pop(job.id, None)
        job.notify(Failed(500, f"generation failed: {first_line(error)}"))


def measure_service_times(engine: Engine) -> ServiceTimes:
    """The engine's speed per unit of each stage, from a short generation at the model's default length; it
    warms the engine too (the first calls allocate, and on TensorRT capture), so that no request pays for it."""
    generation = engine.run("warm-up", num_inference_steps=2, seed=0)
    model = engine.manifest.model
    height = model.latent_height(model.default_audio_length_in_s)
    units = {
        "unet": generation.unet_calls * 2 * height,  # both sides of the default guidance
        "vae_decoder": height,
        "vocoder": height * model.vae_scale_factor,
    }
    return ServiceTimes({stage: generation.timings[stage] / units[stage] for stage in units})


def first_line(error: BaseException) -> str:
    """An error as the one line an HTTP answer carries."""
    return (str(error).splitlines() or [type(error).__name__])[0]
