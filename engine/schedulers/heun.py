"""Heun's second-order method (Karras et al. 2022, Algorithm 1): a port of diffusers' HeunDiscreteScheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..random import TorchGenerator
from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .sigmas import (
    WITHOUT_BETA_SIGMAS,
    SigmaScheduler,
    converted_sigmas,
    interpolated_sigmas,
    spaced_timesteps,
    train_sigmas,
)


class HeunDiscreteScheduler(SigmaScheduler):
    name = "HeunDiscreteScheduler"
    order = 2
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    supported_values = {
        "beta_schedule": (*BETA_SCHEDULES, "exp"),
        "prediction_type": ("epsilon", "v_prediction", "sample"),
        "timestep_spacing": TIMESTEP_SPACINGS,
        "use_beta_sigmas": WITHOUT_BETA_SIGMAS,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        # The first-order half-step's derivative, step size and sample; None between full steps.
        self._first: tuple[np.ndarray, np.float32, np.ndarray] | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Every timestep but the first is listed twice: the Euler half and the correction of each step."""
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        train = train_sigmas(self.alphas_cumprod)
        sigmas = interpolated_sigmas(timesteps, train)
        converted = converted_sigmas(self.config, sigmas, np.log(train), num_inference_steps)
        if converted is not None:
            timesteps, sigmas = converted
        sigmas = np.append(sigmas, 0.0).astype(np.float32)
        sigmas = np.concatenate([sigmas[:1], sigmas[1:-1].repeat(2), sigmas[-1:]])
        timesteps = np.concatenate([timesteps[:1], timesteps[1:].repeat(2)]).astype(np.float32)
        self._set_schedule(timesteps, sigmas)
        self._first = None

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        """The Euler step when in first order; else the trapezoidal correction of the previous Euler step."""
        index = self._index(timestep)
        first_order = self._first is None
        if first_order:
            sigma, sigma_next = np.float32(self.sigmas[index]), np.float32(self.sigmas[index + 1])
        else:
            sigma, sigma_next = np.float32(self.sigmas[index - 1]), np.float32(self.sigmas[index])
        denoised = self._denoised(model_output, sample, sigma if first_order else sigma_next)
        if self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            denoised = np.clip(denoised, np.float32(-limit), np.float32(limit))

        if self._first is None:
            derivative = (sample - denoised) / sigma
            dt = sigma_next - sigma
            self._first = (derivative, dt, sample)
        else:
            first_derivative, dt, first_sample = self._first
            derivative = (first_derivative + (sample - denoised) / sigma_next) / 2
            sample = first_sample
            self._first = None
        self._step_index = index + 1
        return np.asarray(sample + derivative * dt, dtype=np.float32)
