"""The DDIM, PNDM, LMS, Euler, Euler ancestral, Heun and KDPM2 ports stepped side by side with diffusers' classes.

A fixed random "model" (a float32 function of the UNet input, the timestep and the guidance half) drives both
schedulers through the pipeline's loop, classifier-free guidance's doubled batch included; timesteps, the
initial noise scale, every scaled input and every step's output must agree.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
import torch

from audioldm_trt.engine.random import TorchGenerator
from audioldm_trt.engine.schedulers import SCHEDULERS, Scheduler

RTOL = 1e-5
SHAPE = (1, 4, 5, 3)
GUIDANCE = 2.5
SEED = 7
#: The scheduler config every AudioLDM checkpoint ships.
AUDIOLDM = {"beta_start": 0.0015, "beta_end": 0.0195, "beta_schedule": "scaled_linear", "steps_offset": 1}

COMMON: list[dict[str, Any]] = [
    {"beta_schedule": "linear"},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"timestep_spacing": "leading"},
    {"timestep_spacing": "trailing"},
    {"prediction_type": "v_prediction"},
    {"trained_betas": np.linspace(0.001, 0.03, 1000).tolist()},
]
KARRAS: list[dict[str, Any]] = [
    {"use_karras_sigmas": True},
    {"use_exponential_sigmas": True},
    {"use_karras_sigmas": True, "timestep_spacing": "leading", "prediction_type": "v_prediction"},
]
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "DDIMScheduler": [
        *COMMON,
        {"prediction_type": "sample", "clip_sample": True, "clip_sample_range": 0.8},
        {"set_alpha_to_one": True, "timestep_spacing": "linspace"},
        {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.5},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    ],
    "PNDMScheduler": [
        *COMMON,
        {"skip_prk_steps": True},
        {"skip_prk_steps": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"skip_prk_steps": True, "timestep_spacing": "linspace"},
        {"set_alpha_to_one": True, "timestep_spacing": "linspace"},
    ],
    "LMSDiscreteScheduler": [*COMMON, *KARRAS, {"prediction_type": "sample"}],
    "EulerDiscreteScheduler": [
        *COMMON,
        *KARRAS,
        {"prediction_type": "sample"},
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing", "prediction_type": "v_prediction"},
        {"interpolation_type": "log_linear"},
        {"interpolation_type": "log_linear", "use_karras_sigmas": True},
        {"final_sigmas_type": "sigma_min"},
        {"timestep_type": "continuous", "prediction_type": "v_prediction"},
        {"use_karras_sigmas": True, "sigma_min": 0.05, "sigma_max": 10.0},
        {"use_exponential_sigmas": True, "sigma_max": 10.0},
    ],
    "EulerAncestralDiscreteScheduler": [
        *COMMON,
        {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
        {"rescale_betas_zero_snr": True, "beta_schedule": "squaredcos_cap_v2"},
    ],
    "HeunDiscreteScheduler": [
        *COMMON,
        *KARRAS,
        {"prediction_type": "sample"},
        {"beta_schedule": "exp"},
        {"clip_sample": True, "clip_sample_range": 0.5},
    ],
    "KDPM2DiscreteScheduler": [*COMMON, *KARRAS],
}
NAMES = sorted(CONFIGS)


def _model(sample: np.ndarray, timestep: float) -> np.ndarray:
    """A fixed float32 'UNet' whose two guidance halves differ, evaluated in numpy for both sides."""
    weights = np.random.default_rng(0).uniform(0.5, 1.0, sample.shape).astype(np.float32)
    return np.asarray(np.tanh(sample) * weights + np.float32(0.1) * np.sin(np.float32(timestep) / np.float32(90.0)))


def _guided(noise: np.ndarray) -> np.ndarray:
    uncond, text = noise[: SHAPE[0]], noise[SHAPE[0] :]
    return np.asarray(uncond + np.float32(GUIDANCE) * (text - uncond))


def _assert_close(actual: Any, expected: Any, what: str) -> None:
    expected = np.asarray(expected, dtype=np.float64)
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64), expected, rtol=RTOL, atol=RTOL * scale, err_msg=what
    )


def _run_side_by_side(name: str, config: dict[str, Any], steps: int, **step_kwargs: Any) -> None:
    import diffusers

    ours = SCHEDULERS[name](config)
    theirs = getattr(diffusers, name)(**config)
    ours.set_timesteps(steps)
    theirs.set_timesteps(steps)
    expected_timesteps = theirs.timesteps.numpy()
    assert ours.timesteps.dtype == expected_timesteps.dtype
    _assert_close(ours.timesteps, expected_timesteps, "timesteps")
    _assert_close(ours.init_noise_sigma, float(theirs.init_noise_sigma), "init_noise_sigma")

    start = np.random.default_rng(1).standard_normal(SHAPE, dtype=np.float32)
    latents = start * np.float32(ours.init_noise_sigma)
    reference = torch.from_numpy(start) * theirs.init_noise_sigma
    generator, torch_generator = TorchGenerator(SEED), torch.Generator().manual_seed(SEED)
    accepts = inspect.signature(theirs.step).parameters
    extra = {"generator": torch_generator} if "generator" in accepts else {}
    for i, (t, reference_t) in enumerate(zip(ours.timesteps, theirs.timesteps, strict=True)):
        scaled = ours.scale_model_input(np.concatenate([latents, latents]), t)
        reference_scaled = theirs.scale_model_input(torch.cat([reference, reference]), reference_t)
        _assert_close(scaled, reference_scaled.numpy(), f"scaled input at call {i}")
        noise = _guided(_model(scaled, float(t)))
        reference_noise = torch.from_numpy(_guided(_model(reference_scaled.numpy(), float(reference_t))))
        latents = ours.step(noise, t, latents, generator=generator, **step_kwargs)
        reference = theirs.step(reference_noise, reference_t, reference, **extra, **step_kwargs).prev_sample
        assert latents.dtype == np.float32
        _assert_close(latents, reference.numpy(), f"sample after call {i}")


CASES = [
    pytest.param(name, config, steps, id=f"{name}-{i}-{steps}")
    for name in NAMES
    for i, config in enumerate([AUDIOLDM, *({**AUDIOLDM, **c} for c in CONFIGS[name])])
    for steps in ((1, 5, 10, 25, 50) if i == 0 else (1, 10) if i % 2 else (5, 25))
    if not (name == "PNDMScheduler" and steps < 4 and not config.get("skip_prk_steps"))
]


@pytest.mark.parametrize(("name", "config", "steps"), CASES)
def test_matches_diffusers(name: str, config: dict[str, Any], steps: int) -> None:
    _run_side_by_side(name, config, steps)


@pytest.mark.parametrize("steps", [1, 10, 25])
def test_ddim_eta_matches_diffusers(steps: int) -> None:
    """DDIM's eta noise comes from the generator's stream, as diffusers draws it."""
    _run_side_by_side("DDIMScheduler", AUDIOLDM, steps, eta=0.7)


@pytest.mark.parametrize("steps", [1, 10, 25])
def test_euler_churn_matches_diffusers(steps: int) -> None:
    """Euler's stochastic churn draws its noise from the same generator stream as diffusers'."""
    _run_side_by_side("EulerDiscreteScheduler", AUDIOLDM, steps, s_churn=2.0, s_tmin=0.5, s_noise=1.003)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("EulerDiscreteScheduler", "use_beta_sigmas", True),
        ("LMSDiscreteScheduler", "use_beta_sigmas", True),
        ("HeunDiscreteScheduler", "use_beta_sigmas", True),
        ("KDPM2DiscreteScheduler", "use_beta_sigmas", True),
        ("KDPM2DiscreteScheduler", "prediction_type", "sample"),
        ("EulerAncestralDiscreteScheduler", "prediction_type", "sample"),
        ("PNDMScheduler", "prediction_type", "sample"),
        ("EulerDiscreteScheduler", "interpolation_type", "cubic"),
        ("EulerDiscreteScheduler", "final_sigmas_type", "sigma_max"),
        ("PNDMScheduler", "beta_schedule", "exp"),
        ("LMSDiscreteScheduler", "timestep_spacing", "uniform"),
        ("HeunDiscreteScheduler", "rescale_betas_zero_snr", True),
        ("PNDMScheduler", "timestep_type", "continuous"),
    ],
)
def test_unsupported_value_or_key_names_the_key(name: str, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=key):
        SCHEDULERS[name]({key: value})


@pytest.mark.parametrize("name", ["EulerDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_one_sigma_respacing_at_most(name: str) -> None:
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        SCHEDULERS[name]({"use_karras_sigmas": True, "use_exponential_sigmas": True})


def test_pndm_warm_up_needs_four_steps() -> None:
    scheduler: Scheduler = SCHEDULERS["PNDMScheduler"]({})
    with pytest.raises(ValueError, match="skip_prk_steps"):
        scheduler.set_timesteps(3)
