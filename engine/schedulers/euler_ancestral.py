"""Euler ancestral sampling (k-diffusion's ``sample_euler_ancestral``): diffusers' EulerAncestralDiscreteScheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..random import TorchGenerator
from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .sigmas import (
    SigmaScheduler,
    interpolated_sigmas,
    spaced_timesteps,
    train_sigmas,
)


class EulerAncestralDiscreteScheduler(SigmaScheduler):
    name = "EulerAncestralDiscreteScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction"),  # diffusers raises NotImplementedError for "sample"
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        sigmas = interpolated_sigmas(timesteps, train_sigmas(self.alphas_cumprod))
        self._set_schedule(timesteps, np.append(sigmas, 0.0).astype(np.float32))

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        """An Euler step down to ``sigma_down``, then fresh noise of std ``sigma_up`` (drawn on the last step too,
        as diffusers does, so that the generator advances the same)."""
        if generator is None:
            raise ValueError(f"{self.name} needs a generator for its noise")
        index = self._index(timestep)
        sigma_from, sigma_to = np.float32(self.sigmas[index]), np.float32(self.sigmas[index + 1])
        denoised = self._denoised(model_output, sample, sigma_from)
        sigma_up = np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2)
        sigma_down = np.sqrt(sigma_to**2 - sigma_up**2)
        derivative = (sample - denoised) / sigma_from
        prev_sample = sample + derivative * (sigma_down - sigma_from)
        noise = generator.randn(model_output.shape)
        self._step_index = index + 1
        return np.asarray(prev_sample + noise * sigma_up, dtype=np.float32)
