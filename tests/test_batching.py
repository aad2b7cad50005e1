"""Requests stepped together (the server's step-level batching) give the audio each gives alone.

Every request has its own scheduler, step count, guidance, seed and prompts; requests join while others are
half-way through, and finish at different iterations. Batched kernels may round differently, nothing more.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import Denoising, Engine, Generation

from conftest import ModelUnderTest, relative_difference

#: A request's audio in a batch against the same request alone (the serving issue's bound).
BATCH_TOLERANCE = 1e-4

REQUESTS: list[dict[str, Any]] = [
    {"prompt": "a dog barking", "seed": 1, "num_inference_steps": 6},
    {"prompt": "rain", "seed": 2, "num_inference_steps": 4, "guidance_scale": 1.0, "num_waveforms_per_prompt": 2},
    {"prompt": ["birds", "wind"], "negative_prompt": "noise", "seed": 3, "scheduler": "EulerDiscreteScheduler"},
    {"prompt": "a bell", "seed": 4, "eta": 0.7, "num_inference_steps": 3, "guidance_scale": 4.0},
    {"prompt": "thunder", "seed": 5, "num_inference_steps": 5, "scheduler": "HeunDiscreteScheduler"},
    {"prompt": "a car", "seed": 6, "num_inference_steps": 7, "scheduler": "DPMSolverMultistepScheduler"},
]


def _alone(engine: Engine, arguments: dict[str, Any]) -> np.ndarray:
    """The request through ``Engine.run``; a per-request scheduler is the engine's scheduler for it."""
    arguments = dict(arguments)
    scheduler = arguments.pop("scheduler", None)
    if scheduler is None:
        return engine.generate(**arguments)
    with Engine.load(engine.directory, backend="onnxruntime-cpu", scheduler=scheduler, verify=False) as own:
        return own.generate(**arguments)


def _batched(engine: Engine, requests: list[dict[str, Any]], joins: list[int]) -> list[Generation]:
    """Step all requests in flight together; request i joins at iteration ``joins[i]``; finished ones are
    decoded together at the end of the iteration they finish in."""
    pending = [engine.request(**{"audio_length_in_s": 1.0, **arguments}) for arguments in requests]
    results: dict[int, Generation] = {}
    flying: list[tuple[int, Denoising]] = []
    iteration = 0
    while len(results) < len(requests):
        joining = [i for i, join in enumerate(joins) if join == iteration]
        flying += zip(joining, engine.start([pending[i] for i in joining]), strict=True)
        if flying:
            engine.step([state for _, state in flying])
        finished = [(i, state) for i, state in flying if state.done]
        if finished:
            for (i, _), generation in zip(finished, engine.decode([s for _, s in finished]), strict=True):
                results[i] = generation
        flying = [(i, state) for i, state in flying if not state.done]
        iteration += 1
    return [results[i] for i in range(len(requests))]


def test_requests_stepped_together_equal_requests_alone(tiny: ModelUnderTest) -> None:
    engine = tiny.engine
    batched = _batched(engine, REQUESTS, joins=[0, 0, 1, 1, 3, 4])
    for arguments, generation in zip(REQUESTS, batched, strict=True):
        alone = _alone(engine, {**arguments, "audio_length_in_s": 1.0})
        assert generation.seed == arguments["seed"]
        assert generation.audio.shape == alone.shape
        assert relative_difference(generation.audio, alone) < BATCH_TOLERANCE, arguments


def test_batch_sizes_change_nothing_beyond_rounding(tiny: ModelUnderTest) -> None:
    """The bound above is far below what a different request changes: the comparison is sensitive."""
    engine = tiny.engine
    first, second = (
        engine.generate("a dog barking", seed=s, num_inference_steps=6, audio_length_in_s=1.0) for s in (1, 7)
    )
    assert relative_difference(first, second) > 1000 * BATCH_TOLERANCE


def test_one_request_alone_through_the_steps_is_run(tiny: ModelUnderTest) -> None:
    engine = tiny.engine
    arguments: dict[str, Any] = {"prompt": "a dog", "seed": 11, "num_inference_steps": 4, "audio_length_in_s": 1.0}
    (generation,) = _batched(engine, [arguments], joins=[0])
    np.testing.assert_array_equal(generation.audio, engine.generate(**arguments))
    assert generation.unet_calls == 4 and set(generation.timings) >= {"unet", "vae_decoder", "vocoder", "total"}


def test_steps_take_one_latent_height_and_unfinished_requests(tiny: ModelUnderTest) -> None:
    engine = tiny.engine
    short, long = engine.start([engine.request("a", audio_length_in_s=1.0), engine.request("b", audio_length_in_s=2.0)])
    with pytest.raises(ValueError, match="one latent height"):
        engine.step([short, long])
    with pytest.raises(ValueError, match="finished"):
        engine.decode([short])
    with pytest.raises(ValueError, match="at least one"):
        engine.step([])


def test_request_checks_a_per_request_scheduler(tiny: ModelUnderTest) -> None:
    engine = tiny.engine
    with pytest.raises(ValueError, match="unknown scheduler"):
        engine.request("a", scheduler="NoSuchScheduler")
    with pytest.raises(ValueError, match="no_such_key"):
        engine.request("a", scheduler_config={"no_such_key": 1})
    request = engine.request("a", scheduler="HeunDiscreteScheduler", num_inference_steps=5)
    assert request.unet_calls == 9 and request.unet_rows == 2 and request.waveforms == 1


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the poison itself
def test_a_request_that_overflows_fails_alone(tiny: ModelUnderTest) -> None:
    """A request whose guidance drives the latents past float32 (the UNet gives NaN or infinity for its rows)
    fails alone, naming the stage; the requests batched with it step on and give their audio alone's."""
    from audioldm_trt.engine import NonFiniteOutputError, PartialFailureError

    engine = tiny.engine
    good = [{"prompt": "a dog barking", "seed": 1, "num_inference_steps": 4}, {"prompt": "rain", "seed": 2}]
    bad = {"prompt": "wind", "seed": 3, "guidance_scale": 1e38, "num_inference_steps": 4}
    requests = [engine.request(**{"audio_length_in_s": 1.0, **a}) for a in (good[0], bad, good[1])]
    states = engine.start(requests)
    failures = []
    while not all(s.done for s in states):
        flying = [s for s in states if not s.done]
        try:
            engine.step(flying)
        except PartialFailureError as error:
            failures += [(flying[i].request.prompts, own) for i, own in error.failed.items()]
            states = [s for i, s in enumerate(flying) if i not in error.failed] + [s for s in states if s.done]
    assert [prompts for prompts, _ in failures] == [("wind",)]
    assert isinstance(failures[0][1], NonFiniteOutputError) and "unet produced NaN or infinity" in str(failures[0][1])
    states.sort(key=lambda s: s.request.seed)
    for arguments, generation in zip(good, engine.decode(states), strict=True):
        alone = engine.generate(**{"audio_length_in_s": 1.0, **arguments})
        assert relative_difference(generation.audio, alone) < BATCH_TOLERANCE
    with pytest.raises(NonFiniteOutputError, match="unet produced NaN or infinity"):
        engine.generate(**{"audio_length_in_s": 1.0, **bad})


def test_audio_modes_stepped_with_text_to_audio(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """Audio-to-audio requests are loop states like any other: started later in their schedule, with a mask,
    they share UNet calls with text-to-audio requests and give the audio each gives alone."""
    clip = tmp_path / "clip.flac"
    t = np.arange(16000) / 16000
    soundfile.write(clip, 0.4 * np.sin(2 * np.pi * 330 * t) * np.exp(-t), 16000)
    requests: list[dict[str, Any]] = [
        {"prompt": "a dog barking", "seed": 1, "num_inference_steps": 6},
        {"prompt": "a cat", "seed": 2, "audio": clip, "strength": 0.5, "num_inference_steps": 8},
        {
            "prompt": "a cat",
            "seed": 3,
            "audio": clip,
            "inpaint": (0.2, 0.5),
            "scheduler": "DPMSolverMultistepScheduler",
        },
        {"prompt": "a cat", "seed": 4, "audio": clip, "super_resolution": 2500.0, "num_inference_steps": 5},
        {"prompt": "a cat", "seed": 5, "audio": clip, "strength": 0.3, "scheduler": "HeunDiscreteScheduler"},
    ]
    engine = tiny.engine
    batched = _batched(engine, requests, joins=[0, 0, 1, 2, 2])
    assert [g.unet_calls for g in batched] == [6, 4, 10, 5, 5]
    assert "vae_encoder" in batched[1].timings and "vae_encoder" not in batched[0].timings
    for arguments, generation in zip(requests, batched, strict=True):
        alone = _alone(engine, {**arguments, "audio_length_in_s": 1.0})
        assert relative_difference(generation.audio, alone) < BATCH_TOLERANCE, arguments
