"""A replica's step loop on a real engine (ONNX Runtime CPU, the tiny model), without Ray: requests that share
UNet calls each get Engine.generate's audio, cancelled requests leave at the next call, closing fails what is
held."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import Engine
from audioldm_trt.serve.loop import (
    Audio,
    CallRecord,
    Event,
    Failed,
    Finished,
    Job,
    Progress,
    StepLoop,
    measure_service_times,
)
from audioldm_trt.serve.policy import Candidate, Deadline, Fifo, Fill, Policy, ServiceTimes

from conftest import ModelUnderTest, relative_difference

#: Requests that differ in everything a request can: length (two share a latent height), steps, scheduler
#: (a second-order one among them), guidance (one without), waveforms, eta and seed.
MIXED_REQUESTS: list[dict[str, Any]] = [
    {"prompt": "a dog barking", "audio_length_in_s": 1.0, "num_inference_steps": 4, "seed": 1},
    {"prompt": "rain on a roof", "audio_length_in_s": 1.0, "num_inference_steps": 6, "seed": 2, "guidance_scale": 1.0},
    {
        "prompt": "a violin",
        "audio_length_in_s": 0.6,
        "num_inference_steps": 3,
        "seed": 3,
        "scheduler": "HeunDiscreteScheduler",
    },
    {
        "prompt": "thunder",
        "audio_length_in_s": 1.0,
        "num_inference_steps": 5,
        "seed": 4,
        "num_waveforms_per_prompt": 2,
        "negative_prompt": "noise",
    },
    {"prompt": "birds", "audio_length_in_s": 0.6, "num_inference_steps": 4, "seed": 5, "eta": 0.5},
    {"prompt": "a train", "num_inference_steps": 2, "seed": 6, "scheduler": "EulerAncestralDiscreteScheduler"},
]


class Recorder:
    """Collects a job's events as the loop's thread sends them."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()

    def final(self, timeout: float = 120.0) -> Event:
        while True:
            event = self.events.get(timeout=timeout)
            if not isinstance(event, Progress | Audio):
                return event


def submit(loop: StepLoop, engine: Any, arguments: dict[str, Any]) -> tuple[Job, Recorder]:
    recorder = Recorder()
    job = Job(engine.request(**arguments), recorder.events.put)
    loop.submit([job])
    return job, recorder


def reference_audio(model: ModelUnderTest, arguments: dict[str, Any]) -> np.ndarray:
    """Engine.generate's audio for these arguments, on an engine loaded with the request's scheduler."""
    arguments = dict(arguments)
    scheduler = arguments.pop("scheduler", None)
    engine = model.engine if scheduler is None else Engine.load(model.export, "onnxruntime-cpu", scheduler=scheduler)
    return engine.generate(**arguments)


@pytest.fixture(scope="module")
def times(tiny: ModelUnderTest) -> ServiceTimes:
    return measure_service_times(tiny.engine)


@pytest.fixture(scope="module")
def expected(tiny: ModelUnderTest) -> list[np.ndarray]:
    return [reference_audio(tiny, arguments) for arguments in MIXED_REQUESTS]


@pytest.mark.parametrize("policy", [Deadline(), Fill(max_requests=8), Fifo()], ids=lambda p: p.name)
def test_each_request_gets_its_own_audio_whatever_shares_its_calls(
    tiny: ModelUnderTest, expected: list[np.ndarray], times: ServiceTimes, policy: Policy
) -> None:
    """The vocoder runs in windows of 0.3 s, interleaved with other requests' calls."""
    calls: list[CallRecord] = []
    loop = StepLoop(tiny.engine, policy, times, on_call=calls.append, span_frames=30)
    try:
        # Half arrive together, half while the first ones are under way: they join at the next call.
        first = [submit(loop, tiny.engine, arguments) for arguments in MIXED_REQUESTS[:3]]
        time.sleep(0.05)
        later = [submit(loop, tiny.engine, arguments) for arguments in MIXED_REQUESTS[3:]]
        for (_, recorder), audio in zip(first + later, expected, strict=True):
            finished = recorder.final()
            assert isinstance(finished, Finished), finished
            assert relative_difference(finished.generation.audio, audio) < 1e-4
            assert finished.queue_seconds >= 0 and finished.compute_seconds > 0
        assert loop.held() == 0
    finally:
        loop.close()
    requests = [tiny.engine.request(**arguments) for arguments in MIXED_REQUESTS]
    unet_calls = [c for c in calls if c.stage == "unet"]
    assert sum(c.rows for c in unet_calls) == sum(r.unet_calls * r.unet_rows for r in requests)
    assert sum(c.rows for c in calls if c.stage == "vae_decoder") == sum(r.waveforms for r in requests)
    assert len([c for c in calls if c.stage == "vocoder"]) > len(requests)  # clips of 1 s took several windows
    if isinstance(policy, Fill):
        assert max(c.requests for c in unet_calls) > 1  # it did batch across requests
    else:
        assert all(c.requests == 1 for c in calls)


def test_audio_modes_share_filled_calls_with_text_to_audio(
    tiny: ModelUnderTest, times: ServiceTimes, tmp_path: Path
) -> None:
    """Style transfer (starting later in its schedule), inpainting and super-resolution (masked) are loop states
    like text-to-audio's: the fill policy puts them in the same UNet calls, and each gets its own audio."""
    clip = tmp_path / "clip.wav"
    t = np.arange(16000) / 16000
    soundfile.write(clip, 0.4 * np.sin(2 * np.pi * 330 * t) * np.exp(-t), 16000)
    requests: list[dict[str, Any]] = [
        {"prompt": "a dog barking", "audio_length_in_s": 1.0, "num_inference_steps": 8, "seed": 1},
        {"prompt": "a cat", "audio": clip, "strength": 0.5, "num_inference_steps": 8, "seed": 2},
        {"prompt": "a cat", "audio": clip, "inpaint": (0.2, 0.5), "num_inference_steps": 8, "seed": 3},
        {"prompt": "a cat", "audio": clip, "super_resolution": 3000.0, "num_inference_steps": 8, "seed": 4},
    ]
    expected = [reference_audio(tiny, arguments) for arguments in requests]
    calls: list[CallRecord] = []
    loop = StepLoop(tiny.engine, Fill(max_requests=8), times, on_call=calls.append)
    try:
        submitted = [submit(loop, tiny.engine, arguments) for arguments in requests]
        for (_, recorder), audio in zip(submitted, expected, strict=True):
            finished = recorder.final()
            assert isinstance(finished, Finished), finished
            assert relative_difference(finished.generation.audio, audio) < 1e-4
    finally:
        loop.close()
    unet_calls = [c for c in calls if c.stage == "unet"]
    assert sum(c.requests for c in unet_calls) == 8 + 4 + 8 + 8
    assert max(c.requests for c in unet_calls) == 4  # all four in one call
    assert relative_difference(expected[1], expected[2]) > 0.1


def test_different_seeds_give_different_audio(expected: list[np.ndarray]) -> None:
    """The parity above would be void if the random model ignored its inputs."""
    assert relative_difference(expected[0][:, :8000], expected[1][:, :8000]) > 0.1


def test_progress_counts_every_unet_call_and_audio_chunks_join_to_the_result(
    tiny: ModelUnderTest, times: ServiceTimes
) -> None:
    loop = StepLoop(tiny.engine, Deadline(), times, span_frames=25)
    try:
        _, recorder = submit(loop, tiny.engine, {**MIXED_REQUESTS[2]})  # Heun: 2 x 3 - 1 calls
        events = []
        while not isinstance(event := recorder.events.get(timeout=60), Finished | Failed):
            events.append(event)
        assert isinstance(event, Finished)
        steps = [(e.call, e.calls) for e in events if isinstance(e, Progress)]
        assert steps == [(i, 5) for i in range(1, 6)]
        chunks = [e.chunk for e in events if isinstance(e, Audio)]
        assert events[len(steps) :] == [Audio(chunk) for chunk in chunks]  # audio after the denoising
        assert len(chunks) > 1 and [c.offset for c in chunks] == sorted(c.offset for c in chunks)
        assert np.array_equal(np.concatenate([c.audio for c in chunks], axis=1), event.generation.audio)
    finally:
        loop.close()


def test_a_cancelled_request_leaves_at_the_next_call_and_the_others_go_on(
    tiny: ModelUnderTest, expected: list[np.ndarray], times: ServiceTimes
) -> None:
    calls: list[CallRecord] = []
    loop = StepLoop(tiny.engine, Fill(max_requests=8), times, on_call=calls.append)
    try:
        long_job, long_recorder = submit(loop, tiny.engine, {"prompt": "a long one", "num_inference_steps": 200})
        assert isinstance(long_recorder.events.get(timeout=60), Progress)  # it is under way
        _, recorder = submit(loop, tiny.engine, MIXED_REQUESTS[0])
        loop.cancel(long_job)
        failed = long_recorder.final()
        assert failed == Failed(499, "the client went away")
        done_when_cancelled = len([c for c in calls if c.stage == "unet"])
        finished = recorder.final()
        assert isinstance(finished, Finished)
        assert relative_difference(finished.generation.audio, expected[0]) < 1e-4
        assert loop.held() == 0
        assert long_job.state is not None and long_job.state.calls_done < 200
        unet_calls = len([c for c in calls if c.stage == "unet"])
        assert unet_calls - done_when_cancelled <= MIXED_REQUESTS[0]["num_inference_steps"] + 1
    finally:
        loop.close()


def test_closing_fails_what_the_loop_holds(tiny: ModelUnderTest, times: ServiceTimes) -> None:
    loop = StepLoop(tiny.engine, Fifo(), times)
    _, first = submit(loop, tiny.engine, {"prompt": "a", "num_inference_steps": 200})
    _, second = submit(loop, tiny.engine, {"prompt": "b", "num_inference_steps": 200})
    assert isinstance(first.events.get(timeout=60), Progress)
    loop.close()
    assert first.final() == Failed(503, "the server is shutting down")
    assert second.final() == Failed(503, "the server is shutting down")
    with pytest.raises(RuntimeError, match="closed"):
        loop.submit([])


class FailsOnce(Fifo):
    """A policy with a bug that shows once."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def choose(self, candidates: Sequence[Candidate], now: float) -> list[Candidate]:
        if not self.failed:
            self.failed = True
            raise RuntimeError("a bug in the policy")
        return super().choose(candidates, now)


def test_a_failure_inside_the_loop_answers_what_it_holds_and_the_loop_goes_on(
    tiny: ModelUnderTest, times: ServiceTimes
) -> None:
    loop = StepLoop(tiny.engine, FailsOnce(), times)
    try:
        _, first = submit(loop, tiny.engine, {"prompt": "a", "num_inference_steps": 2})
        assert first.final() == Failed(500, "the step loop failed: a bug in the policy")
        assert loop.held() == 0
        _, second = submit(loop, tiny.engine, {"prompt": "b", "num_inference_steps": 2})
        assert isinstance(second.final(), Finished)
    finally:
        loop.close()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the poison itself
def test_a_poisoned_request_in_a_filled_batch_fails_alone(
    tiny: ModelUnderTest, expected: list[np.ndarray], times: ServiceTimes
) -> None:
    """``fill`` batches every request of one height into each UNet call: the one whose rows turn NaN (guidance
    past float32, which the API refuses but the engine's Python API takes) fails with 500 and a message that
    names the stage; the requests in its calls finish with their own audio."""
    loop = StepLoop(tiny.engine, Fill(max_requests=8), times)
    try:
        poisoned = {**MIXED_REQUESTS[0], "prompt": "poison", "guidance_scale": 1e38, "num_inference_steps": 5}
        jobs = [submit(loop, tiny.engine, arguments) for arguments in (MIXED_REQUESTS[0], poisoned, MIXED_REQUESTS[3])]
        (_, first), (_, bad), (_, last) = jobs
        failed = bad.final()
        assert isinstance(failed, Failed) and failed.status == 500
        assert failed.message.startswith("generation failed: unet produced NaN or infinity"), failed
        for recorder, audio in ((first, expected[0]), (last, expected[3])):
            finished = recorder.final()
            assert isinstance(finished, Finished), finished
            assert relative_difference(finished.generation.audio, audio) < 1e-4
        assert loop.held() == 0
    finally:
        loop.close()


class HangingEngine:
    """The engine with a UNet step that waits for ``release``, as a call on a hung GPU never returns."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.entered = threading.Event()
        self.release = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def step(self, states: Sequence[Any]) -> None:
        self.entered.set()
        self.release.wait()
        self._engine.step(states)


def test_a_hung_engine_call_shows_in_stalled_seconds(tiny: ModelUnderTest, times: ServiceTimes) -> None:
    """What the replica's health check reads: how long the call under way has lasted, 0 between calls."""
    engine = HangingEngine(tiny.engine)
    loop = StepLoop(engine, Fifo(), times)  # type: ignore[arg-type]
    try:
        _, recorder = submit(loop, tiny.engine, {"prompt": "a", "num_inference_steps": 2})
        assert engine.entered.wait(60)
        time.sleep(0.5)
        assert loop.stalled_seconds() >= 0.5
        engine.release.set()
        assert isinstance(recorder.final(), Finished)
        assert loop.stalled_seconds() == 0.0
    finally:
        engine.release.set()
        loop.close()


def test_a_loop_given_up_on_answers_what_it_holds_at_once_and_nothing_after(
    tiny: ModelUnderTest, times: ServiceTimes
) -> None:
    """What a replica does when its health check finds the engine wedged: the requests held (in the hung call
    and waiting behind it) are answered 503 at once, new ones are refused, ``close`` does not wait for the hung
    thread, and if the call ever returns its requests hear nothing more."""
    engine = HangingEngine(tiny.engine)
    loop = StepLoop(engine, Fifo(), times)  # type: ignore[arg-type]
    try:
        _, stuck = submit(loop, tiny.engine, {"prompt": "a", "num_inference_steps": 2})
        assert engine.entered.wait(60)
        _, behind = submit(loop, tiny.engine, {"prompt": "b", "num_inference_steps": 2})
        loop.abandon("given up")
        assert stuck.final(timeout=1) == Failed(503, "given up") == behind.final(timeout=1)
        with pytest.raises(RuntimeError, match="closed"):
            submit(loop, tiny.engine, {"prompt": "c", "num_inference_steps": 2})
        loop.close()
        assert loop.alive()
        engine.release.set()
        deadline = time.monotonic() + 60
        while loop.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not loop.alive()
        assert stuck.events.empty() and behind.events.empty()
    finally:
        engine.release.set()
        loop.close()
