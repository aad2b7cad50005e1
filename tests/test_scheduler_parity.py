"""Every numpy scheduler inside the real loop against diffusers' AudioLDMPipeline with the same scheduler."""

from __future__ import annotations

import inspect
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


#: The schedulers AudioLDM users pick (issue 3), each registered under diffusers' class name.
NAMES = (
    "DDIMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "HeunDiscreteScheduler",
    "KDPM2DiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "UniPCMultistepScheduler",
    "DEISMultistepScheduler",
)


@pytest.mark.parametrize("name", NAMES)
def test_config_defaults_are_diffusers(name: str) -> None:
    """Every config key diffusers' class takes, with diffusers' default: the input users already have."""
    import diffusers

    parameters = inspect.signature(getattr(diffusers, name).__init__).parameters
    expected = {key: p.default for key, p in parameters.items() if key != "self"}
    assert SCHEDULERS[name].name == name
    assert SCHEDULERS[name].config_defaults == expected


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
