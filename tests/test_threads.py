"""One Engine shared by server threads: concurrent calls give what sequential calls give."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference

REQUESTS: list[dict[str, Any]] = [
    {"prompt": "a dog barking", "seed": 1},
    {"prompt": ["rain", "thunder"], "seed": 2, "num_waveforms_per_prompt": 2},
    {"prompt": "a bell", "seed": 3, "guidance_scale": 1.0, "audio_length_in_s": 0.5},
    {"prompt": "birds", "seed": 4, "negative_prompt": "wind", "eta": 0.5},
    {"prompt": "a car engine", "seed": 5, "num_inference_steps": 7},
    {"prompt": "applause", "seed": 6, "audio_length_in_s": 1.3},
]


def test_concurrent_calls_equal_sequential_calls(tiny: ModelUnderTest) -> None:
    engine = tiny.engine
    sequential = [engine.generate(**request) for request in REQUESTS]
    with ThreadPoolExecutor(max_workers=4) as pool:
        concurrent = list(pool.map(lambda request: engine.generate(**request), REQUESTS * 2))
    for i, audio in enumerate(concurrent):
        np.testing.assert_array_equal(audio, sequential[i % len(REQUESTS)])


def test_a_single_threaded_engine_gives_diffusers_audio(tiny: ModelUnderTest) -> None:
    """``threads=1`` (a host that keeps the other cores) changes the speed, not the audio."""
    from audioldm_trt.engine import Engine

    engine = Engine.load(tiny.export, backend="onnxruntime-cpu", threads=1, verify=False)
    arguments: dict[str, Any] = {"prompt": "a dog barking", "seed": 1, "num_inference_steps": 5}
    ours = engine.generate(**arguments)
    assert relative_difference(ours, tiny.diffusers_audio(**arguments)) < AUDIO_TOLERANCE
