"""Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2): diffusers' EulerDiscreteScheduler."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..random import TorchGenerator
from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .sigmas import (
    WITHOUT_BETA_SIGMAS,
    SigmaScheduler,
    converted_sigmas,
    f64_rounded,
    interpolated_sigmas,
    log_linear_sigmas,
    spaced_timesteps,
    train_sigmas,
)


class EulerDiscreteScheduler(SigmaScheduler):
    name = "EulerDiscreteScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "prediction_type": "epsilon",
        "interpolation_type": "linear",
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "sigma_min": None,
        "sigma_max": None,
        "timestep_spacing": "linspace",
        "timestep_type": "discrete",
        "steps_offset": 0,
        "rescale_betas_zero_snr": False,
        "final_sigmas_type": "zero",
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction", "sample", "original_sample"),
        "interpolation_type": ("linear", "log_linear"),
        "timestep_spacing": TIMESTEP_SPACINGS,
        "timestep_type": ("discrete", "continuous"),
        "final_sigmas_type": ("zero", "sigma_min"),
        "use_beta_sigmas": WITHOUT_BETA_SIGMAS,
    }

    def set_timesteps(self, num_inference_steps: int) -> None:
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        train = train_sigmas(self.alphas_cumprod)
        if self.config["interpolation_type"] == "linear":
            sigmas = interpolated_sigmas(timesteps, train)
        else:
            sigmas = log_linear_sigmas(train, num_inference_steps)
        converted = converted_sigmas(self.config, sigmas, np.log(train), num_inference_steps)
        if converted is not None:
            timesteps, sigmas = converted
        last = train[0] if self.config["final_sigmas_type"] == "sigma_min" else 0.0
        sigmas = np.append(sigmas, last).astype(np.float32)
        if self.config["timestep_type"] == "continuous" and self.config["prediction_type"] == "v_prediction":
            # EDM's c_noise: diffusers takes torch's float32 log of each sigma.
            timesteps = np.float32(0.25) * f64_rounded(np.log, sigmas[:-1])
        self._set_schedule(timesteps.astype(np.float32), sigmas)

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ) -> np.ndarray:
        """One Euler step; ``s_churn`` > 0 (diffusers' step argument) first adds fresh noise (needs ``generator``)."""
        index = self._index(timestep)
        sigma = np.float32(self.sigmas[index])
        gamma = min(s_churn / (len(self.sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * np.float32(gamma + 1)
        if gamma > 0:
            if generator is None:
                raise ValueError(f"{self.name} with s_churn > 0 needs a generator for its noise")
            noise = generator.randn(model_output.shape) * np.float32(s_noise)
            sample = sample + noise * np.sqrt(sigma_hat**2 - sigma**2)
        # diffusers scales epsilon by the churned sigma_hat but v_prediction's c_skip/c_out by sigma.
        sigma_in = sigma_hat if self.config["prediction_type"] == "epsilon" else sigma
        denoised = self._denoised(model_output, sample, sigma_in)
        derivative = (sample - denoised) / sigma_hat
        dt = np.float32(self.sigmas[index + 1]) - sigma_hat
        self._step_index = index + 1
        return np.asarray(sample + derivative * dt, dtype=np.float32)
