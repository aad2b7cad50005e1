"""A replica's step loop: one thread owns the engine's ``start``/``step``/``decode`` and keeps every admitted
request in flight.

Each iteration: requests submitted since the last one start (one text-encoder call for all of them);
requests whose caller went away (disconnect, timeout) leave; the policy picks the requests of the next UNet
call (one latent height); that call is made and each chosen request's own scheduler steps; the requests that
finished are decoded together. Every job gets exactly one final event (``Finished`` or ``Failed``), so
nothing half-done stays in the loop and no caller waits forever.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from audioldm_trt.engine import Denoising, Engine, Generation, GenerationRequest, PartialFailureError

from .policy import Candidate, Policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """A UNet call the request took part in: ``call`` of ``calls`` done."""

    call: int
    calls: int


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


Event = Progress | Finished | Failed


@dataclass(frozen=True)
class CallRecord:
    """One UNet call of the loop, for the metrics."""

    requests: int
    rows: int
    seconds: float


_ids = itertools.count()


class Job:
    """One admitted request and the callback its events go back by (called from the loop's thread)."""

    def __init__(self, request: GenerationRequest, notify: Callable[[Event], None]) -> None:
        self.id = next(_ids)
        self.request = request
        self.notify = notify
        self.admitted = time.perf_counter()
        self.first_call: float | None = None
        #: Set when the loop starts the request (its text encoding and initial noise).
        self.state: Denoising | None = None
        self.cancelled = False

    @property
    def started(self) -> Denoising:
        """The loop state of a started request."""
        assert self.state is not None
        return self.state

    def candidate(self) -> Candidate:
        return Candidate(
            id=self.id,
            latent_height=self.request.latent_height,
            rows=self.request.unet_rows,
            remaining_calls=self.started.remaining_calls,
            total_calls=self.request.unet_calls,
        )


class StepLoop:
    """The loop thread of one replica. ``submit`` and ``cancel`` may be called from any thread."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        on_call: Callable[[CallRecord], None] | None = None,
        max_decode_waveforms: int | None = None,
    ) -> None:
        """``max_decode_waveforms``: the most waveforms one VAE/vocoder call may take (TensorRT's profiles)."""
        self._engine = engine
        self._policy = policy
        self._on_call = on_call
        self._max_decode_waveforms = max_decode_waveforms
        self._wake = threading.Condition()
        self._inbox: list[Job] = []
        self._running: dict[int, Job] = {}
        self._closed = False
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
        self._thread.join()

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
        chosen_ids = {c.id for c in self._policy.choose([job.candidate() for job in self._running.values()])}
        chosen = [job for job in self._running.values() if job.id in chosen_ids]
        if not chosen:
            return
        clock = time.perf_counter()
        stepped = self._guarded(chosen, lambda: self._engine.step([job.started for job in chosen]))
        if self._on_call is not None and stepped:
            rows = sum(job.request.unet_rows for job in chosen)
            self._on_call(CallRecord(len(chosen), rows, time.perf_counter() - clock))
        chosen = [chosen[index] for index in stepped]
        for job in chosen:
            job.first_call = job.first_call or clock
            job.notify(Progress(job.started.calls_done, job.request.unet_calls))
        finished = [job for job in chosen if job.started.done]
        for group in self._decode_groups(finished):
            self._decode(group)

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

    def _decode_groups(self, jobs: list[Job]) -> list[list[Job]]:
        """The finished jobs in as few decoder calls as the waveform limit allows."""
        groups: list[list[Job]] = []
        size = 0
        for job in jobs:
            waveforms = job.request.waveforms
            if not groups or (self._max_decode_waveforms is not None and size + waveforms > self._max_decode_waveforms):
                groups.append([])
                size = 0
            groups[-1].append(job)
            size += waveforms
        return groups

    def _decode(self, jobs: list[Job]) -> None:
        generations = self._guarded(jobs, lambda: self._engine.decode([job.started for job in jobs]))
        for job in jobs:
            self._running.pop(job.id, None)
        now = time.perf_counter()
        for index, generation in generations.items():
            job = jobs[index]
            assert job.first_call is not None
            job.notify(Finished(generation, job.first_call - job.admitted, now - job.first_call))

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


def first_line(error: BaseException) -> str:
    """An error as the one line an HTTP answer carries."""
    return (str(error).splitlines() or [type(error).__name__])[0]
