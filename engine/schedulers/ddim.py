"""DDIM (https://huggingface.co/papers/2010.02502), AudioLDM's own scheduler: a port of diffusers' DDIMScheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..random import TorchGenerator
from .base import (
    BETA_SCHEDULES,
    TIMESTEP_SPACINGS,
    Scheduler,
    alphas_cumprod_from_config,
    check_indexable,
    discrete_timesteps,
    threshold_sample,
)


class DDIMScheduler(Scheduler):
    name = "DDIMScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "clip_sample": True,
        "set_alpha_to_one": True,
        "steps_offset": 0,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "clip_sample_range": 1.0,
        "sample_max_value": 1.0,
        "timestep_spacing": "leading",
        "rescale_betas_zero_snr": False,
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "sample", "v_prediction"),
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.alphas_cumprod = alphas_cumprod_from_config(self.config)
        self.final_alpha_cumprod = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.num_inference_steps = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        train_steps = int(self.config["num_train_timesteps"])
        if num_inference_steps > train_steps:
            raise ValueError(f"num_inference_steps={num_inference_steps} exceeds the {train_steps} training timesteps")
        self.num_inference_steps = num_inference_steps
        self.timesteps = discrete_timesteps(self.config, num_inference_steps)
        check_indexable(self.name, self.config, self.timesteps, num_inference_steps)

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        t = int(timestep)
        prev_t = t - int(self.config["num_train_timesteps"]) // self.num_inference_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_t_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = 1 - alpha_prod_t

        prediction_type = self.config["prediction_type"]
        if prediction_type == "epsilon":
            pred_original = (sample - beta_prod_t**0.5 * model_output) / alpha_prod_t**0.5
            pred_epsilon = model_output
        elif prediction_type == "sample":
            pred_original = model_output
            pred_epsilon = (sample - alpha_prod_t**0.5 * pred_original) / beta_prod_t**0.5
        else:  # v_prediction
            pred_original = alpha_prod_t**0.5 * sample - beta_prod_t**0.5 * model_output
            pred_epsilon = alpha_prod_t**0.5 * model_output + beta_prod_t**0.5 * sample
        if self.config["thresholding"]:
            ratio, limit = self.config["dynamic_thresholding_ratio"], self.config["sample_max_value"]
            pred_original = threshold_sample(np.asarray(pred_original, dtype=np.float32), ratio, limit)
        elif self.config["clip_sample"]:
            limit = self.config["clip_sample_range"]
            pred_original = np.clip(pred_original, -limit, limit)

        variance = (1 - alpha_prod_t_prev) / beta_prod_t * (1 - alpha_prod_t / alpha_prod_t_prev)
        std_dev_t = eta * variance**0.5
        direction = (1 - alpha_prod_t_prev - std_dev_t**2) ** 0.5 * pred_epsilon
        prev_sample = alpha_prod_t_prev**0.5 * pred_original + direction
        if eta > 0:
            if generator is None:
                raise ValueError("DDIMScheduler with eta > 0 needs a generator for its noise")
            prev_sample = prev_sample + std_dev_t * generator.randn(model_output.shape)
        return np.asarray(prev_sample, dtype=np.float32)
