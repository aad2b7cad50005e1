"""Every numpy scheduler inside the real loop against diffusers' AudioLDMPipeline with the same scheduler."""

from __future__ import annotations

from typing import Any

import pytest

from audioldm_trt.engine import Engine
from audioldm_trt.engine.schedulers import SCHEDULERS

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference

STEPS = (5, 10, 25, 50)
PREDICTION_TYPES = ("epsilon", "v_prediction")
LENGTH = 0.5  # seconds: a short clip keeps 50-step runs fast; its latent height (25) is odd
SEED = 11

_engines: dict[tuple[str, str], Engine] = {}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for name, scheduler in sorted(SCHEDULERS.items()):
        supported = scheduler.supported_values.get("prediction_type", PREDICTION_TYPES)
        cases += [(name, p) for p in PREDICTION_TYPES if p in supported]
    return cases


def _diffusers_scheduler(model: ModelUnderTest, name: str, overrides: dict[str, Any]) -> Any:
    import diffusers

    return getattr(diffusers, name).from_config(model.pipeline.scheduler.config, **overrides)


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize(("name", "prediction_type"), _cases())
def test_scheduler_matches_diffusers(tiny: ModelUnderTest, name: str, prediction_type: str, steps: int) -> None:
    overrides = {"prediction_type": prediction_type}
    key = (name, prediction_type)
    if key not in _engines:
        _engines[key] = Engine.load(
            tiny.export, backend="onnxruntime-cpu", scheduler=name, scheduler_config=overrides, verify=False
        )
    latents = tiny.latents(1, LENGTH, seed=steps)
    ours = _engines[key].generate(
        "a dog barking", audio_length_in_s=LENGTH, num_inference_steps=steps, latents=latents, seed=SEED
    )

    original = tiny.pipeline.scheduler
    tiny.pipeline.scheduler = _diffusers_scheduler(tiny, name, overrides)
    try:
        expected = tiny.diffusers_audio(
            prompt="a dog barking", audio_length_in_s=LENGTH, num_inference_steps=steps, latents=latents, seed=SEED
        )
    finally:
        tiny.pipeline.scheduler = original
    assert relative_difference(ours, expected) < AUDIO_TOLERANCE
