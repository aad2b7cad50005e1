"""``generate(seed=s)`` against diffusers with ``generator=torch.Generator().manual_seed(s)``: no latents given,
so the noise is the numpy generator's own."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference

CASES = [
    pytest.param({"prompt": "a dog barking", "seed": 0}, id="one-waveform"),
    pytest.param(
        {"prompt": ["rain on a roof", "a bell"], "num_waveforms_per_prompt": 3, "seed": 2**32 + 17},
        id="several-waveforms",
    ),
    pytest.param({"prompt": "birds singing", "eta": 0.7, "seed": 123456789}, id="ddim-eta-0.7"),
    pytest.param(
        {"prompt": "wind", "eta": 0.7, "num_waveforms_per_prompt": 2, "seed": 2**63 - 1, "audio_length_in_s": 1.3},
        id="ddim-eta-0.7-two-waveforms",
    ),
]


@pytest.mark.parametrize("kwargs", CASES)
def test_seed_gives_diffusers_audio(model: ModelUnderTest, kwargs: dict[str, Any]) -> None:
    arguments = {"audio_length_in_s": 0.9, "num_inference_steps": 6, **kwargs}
    ours = model.engine.generate(**arguments)
    expected = model.diffusers_audio(**arguments)
    assert relative_difference(ours, expected) < AUDIO_TOLERANCE


def test_seeds_matter(tiny: ModelUnderTest) -> None:
    """A different seed, or eta's noise, changes the audio by far more than the tolerance."""
    arguments: dict[str, Any] = {"prompt": "a dog barking", "audio_length_in_s": 0.9, "num_inference_steps": 6}
    base = tiny.engine.generate(**arguments, seed=0)
    assert relative_difference(tiny.engine.generate(**arguments, seed=1), base) > 100 * AUDIO_TOLERANCE
    with_eta = tiny.engine.generate(**arguments, seed=0, eta=0.7)
    other_eta_noise = tiny.engine.generate(**arguments, seed=0, eta=0.7, latents=tiny.latents(1, 0.9, seed=0) * 0)
    assert relative_difference(with_eta, base) > 100 * AUDIO_TOLERANCE
    assert relative_difference(other_eta_noise, with_eta) > 100 * AUDIO_TOLERANCE


def test_drawn_seed_is_reported_and_reproduces(tiny: ModelUnderTest) -> None:
    arguments: dict[str, Any] = {"prompt": "a bell", "audio_length_in_s": 0.9, "num_inference_steps": 4}
    first = tiny.engine.run(**arguments)
    again = tiny.engine.generate(**arguments, seed=first.seed)
    assert relative_difference(again, first.audio) == 0.0
