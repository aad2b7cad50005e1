"""DPM-Solver-2 as k-diffusion's ``sample_dpm_2`` (Karras et al. 2022): diffusers' KDPM2DiscreteScheduler."""

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
    f64_rounded,
    interpolated_sigmas,
    sigma_to_t,
    spaced_timesteps,
    train_sigmas,
)


class KDPM2DiscreteScheduler(SigmaScheduler):
    name = "KDPM2DiscreteScheduler"
    order = 2
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "linear",
        "trained_betas": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "linspace",
        "steps_offset": 0,
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction"),  # diffusers raises NotImplementedError for "sample"
        "timestep_spacing": TIMESTEP_SPACINGS,
        "use_beta_sigmas": WITHOUT_BETA_SIGMAS,
    }

    sigmas_interpol: np.ndarray

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        # The sample the first-order half-step started from; None between full steps.
        self._first_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Each step but the first gets two timesteps: that of the log-midpoint sigma, then its own.

        Timesteps keep diffusers' dtype: float64 after Karras or exponential respacing, float32 otherwise.
        """
        self.num_inference_steps = num_inference_steps
        timesteps = spaced_timesteps(self.config, num_inference_steps)
        train = train_sigmas(self.alphas_cumprod)
        log_train = np.log(train)
        sigmas = interpolated_sigmas(timesteps, train)
        converted = converted_sigmas(self.config, sigmas, log_train, num_inference_steps)
        if converted is not None:
            timesteps, sigmas = converted
            if self.config["use_karras_sigmas"]:
                timesteps = timesteps.round()
        sigmas = np.append(sigmas, 0.0).astype(np.float32)
        # torch's float32 lerp(log s, log s_prev, 0.5) = end - (end - start) * 0.5; the first is NaN (the
        # previous sigma wraps round to the final 0), the last 0, and neither is used as a midpoint.
        log_sigmas = f64_rounded(np.log, sigmas)
        log_previous = np.roll(log_sigmas, 1)
        with np.errstate(invalid="ignore"):
            interpol = f64_rounded(np.exp, log_previous - (log_previous - log_sigmas) * np.float32(0.5))
        midpoint_timesteps = sigma_to_t(interpol[1:-1], log_train).astype(timesteps.dtype)

        self.sigmas_interpol = np.concatenate([interpol[:1], interpol[1:].repeat(2), interpol[-1:]])
        self._set_schedule(
            np.concatenate([timesteps[:1], np.stack([midpoint_timesteps, timesteps[1:]], axis=-1).reshape(-1)]),
            np.concatenate([sigmas[:1], sigmas[1:].repeat(2), sigmas[-1:]]),
        )
        self._first_sample = None

    def _input_sigma(self, index: int) -> np.float32:
        return np.float32((self.sigmas if self._first_sample is None else self.sigmas_interpol)[index])

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        """An Euler step to the midpoint sigma; then, from the same start, a step to the next sigma with the
        derivative taken at the midpoint."""
        index = self._index(timestep)
        if self._first_sample is None:
            sigma = np.float32(self.sigmas[index])
            sigma_interpol = np.float32(self.sigmas_interpol[index + 1])
            derivative = (sample - self._denoised(model_output, sample, sigma)) / sigma
            dt = sigma_interpol - sigma
            self._first_sample = sample
        else:
            sigma = np.float32(self.sigmas[index - 1])
            sigma_interpol = np.float32(self.sigmas_interpol[index])
            derivative = (sample - self._denoised(model_output, sample, sigma_interpol)) / sigma_interpol
            dt = np.float32(self.sigmas[index]) - sigma
            sample, self._first_sample = self._first_sample, None
        self._step_index = index + 1
        return np.asarray(sample + derivative * dt, dtype=np.float32)
