"""Every numpy scheduler in the audio-to-audio loops against diffusers' class: the start that img2img takes
for a strength (``set_begin_index``, ``timesteps[t_start * order:]``), ``add_noise`` there, every step from
mid-schedule, and inpainting's ``add_noise`` of the kept region after each step, as diffusers' img2img and
inpaint pipelines call them."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch

from audioldm_trt.engine.random import TorchGenerator
from audioldm_trt.engine.schedulers import SCHEDULERS
from audioldm_trt.engine.schedulers.base import strength_start

RTOL = 1e-5
SHAPE = (2, 4, 5, 3)
SEED = 3
#: The scheduler config every AudioLDM checkpoint ships.
AUDIOLDM = {"beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear", "steps_offset": 1}
#: Configs beyond the defaults whose noise levels are found another way (respaced sigmas, v-prediction).
VARIANTS: dict[str, dict[str, Any]] = {
    "EulerDiscreteScheduler": {"use_karras_sigmas": True},
    "DPMSolverMultistepScheduler": {"use_karras_sigmas": True, "prediction_type": "v_prediction"},
    "UniPCMultistepScheduler": {"timestep_spacing": "trailing"},
    "PNDMScheduler": {"skip_prk_steps": True},
}


def _model(sample: np.ndarray, timestep: float) -> np.ndarray:
    weights = np.random.default_rng(0).uniform(0.5, 1.0, sample.shape).astype(np.float32)
    return np.asarray(np.tanh(sample) * weights + np.float32(0.1) * np.sin(np.float32(timestep) / np.float32(90.0)))


def _close(actual: Any, expected: Any, what: str) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        expected,
        rtol=RTOL,
        atol=RTOL * float(np.abs(expected).max()),
        err_msg=what,
    )


def _diffusers_start(scheduler: Any, steps: int, strength: float) -> tuple[torch.Tensor, int]:
    """``StableDiffusionImg2ImgPipeline.get_timesteps``, verbatim in what it does to the scheduler."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps, t_start * scheduler.order


def _run(name: str, config: dict[str, Any], steps: int, strength: float, inpaint: bool) -> None:
    import diffusers

    ours, theirs = SCHEDULERS[name].from_config(config), getattr(diffusers, name).from_config(config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    expected_timesteps, expected_start = _diffusers_start(theirs, steps, strength)
    start = strength_start(steps, strength, ours.order)
    assert start == expected_start
    ours.set_begin_index(start)
    _close(ours.timesteps[start:], expected_timesteps.numpy(), "timesteps kept")

    rng = np.random.default_rng(steps)
    clean = rng.standard_normal(SHAPE, dtype=np.float32)
    noise = rng.standard_normal(SHAPE, dtype=np.float32)
    mask = np.zeros(SHAPE, dtype=np.float32)
    mask[:, :, 2:4] = 1.0
    latents = ours.add_noise(clean, noise, start)
    reference = theirs.add_noise(torch.from_numpy(clean), torch.from_numpy(noise), expected_timesteps[:1])
    _close(latents, reference.numpy(), "add_noise at the start")
    generator, torch_generator = TorchGenerator(SEED), torch.Generator().manual_seed(SEED)
    extra = {"generator": torch_generator} if "generator" in inspect.signature(theirs.step).parameters else {}
    for i, t in enumerate(expected_timesteps):
        index = start + i
        latents = ours.step(
            _model(ours.scale_model_input(latents, ours.timesteps[index]), float(t)),
            ours.timesteps[index],
            latents,
            generator=generator,
        )
        scaled = theirs.scale_model_input(reference, t).numpy()
        reference = theirs.step(torch.from_numpy(_model(scaled, float(t))), t, reference, **extra).prev_sample
        _close(latents, reference.numpy(), f"sample after call {i}")
        if inpaint and i < len(expected_timesteps) - 1:
            # StableDiffusionInpaintPipeline's blend: the kept region is the input noised to the next timestep.
            proper = theirs.add_noise(
                torch.from_numpy(clean), torch.from_numpy(noise), torch.tensor([expected_timesteps[i + 1]])
            )
            reference = (1 - torch.from_numpy(mask)) * proper + torch.from_numpy(mask) * reference
            latents = (1 - mask) * ours.add_noise(clean, noise, index + 1) + mask * latents
            _close(latents, reference.numpy(), f"blended sample after call {i}")


CASES = [
    pytest.param(name, config, steps, strength, id=f"{name}-{variant}-{steps}-{strength}")
    for name in sorted(SCHEDULERS)
    for variant, config in (("audioldm", AUDIOLDM), ("variant", {**AUDIOLDM, **VARIANTS.get(name, {})}))
    if variant == "audioldm" or name in VARIANTS
    for steps, strength in ((10, 0.5), (25, 0.3), (7, 1.0), (12, 0.75))
    if not (name == "PNDMScheduler" and not config.get("skip_prk_steps") and strength < 1)
]


@pytest.mark.parametrize(("name", "config", "steps", "strength"), CASES)
def test_img2img_start_and_steps_match_diffusers(
    name: str, config: dict[str, Any], steps: int, strength: float
) -> None:
    _run(name, config, steps, strength, inpaint=False)


@pytest.mark.parametrize(("name", "config", "steps", "strength"), [c for c in CASES if c.values[3] in (1.0, 0.5)])
def test_inpaint_blend_matches_diffusers(name: str, config: dict[str, Any], steps: int, strength: float) -> None:
    _run(name, config, steps, strength, inpaint=True)


def test_strength_start_is_diffusers_get_timesteps() -> None:
    assert strength_start(10, 0.5, 1) == 5
    assert strength_start(10, 0.55, 2) == 10
    assert strength_start(10, 1.0, 1) == 0
    assert strength_start(10, 0.05, 1) == 10  # no step left: the request refuses it
