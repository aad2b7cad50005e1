"""Pseudo numerical methods (PNDM, https://huggingface.co/papers/2202.09778): diffusers' PNDMScheduler.

Runge-Kutta warm-up steps (four UNet calls per step, for the first three steps) then linear multistep (PLMS)
steps, or PLMS throughout with ``skip_prk_steps``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..random import TorchGenerator
from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS, Scheduler, check_indexable, discrete_timesteps
from .sigmas import train_alphas_cumprod

#: The order of the multistep method; the Runge-Kutta warm-up covers the last (earliest) this many timesteps.
_PNDM_ORDER = 4


class PNDMScheduler(Scheduler):
    name = "PNDMScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "skip_prk_steps": False,
        "set_alpha_to_one": False,
        "prediction_type": "epsilon",
        "timestep_spacing": "leading",
        "steps_offset": 0,
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "prediction_type": ("epsilon", "v_prediction"),
        "timestep_spacing": TIMESTEP_SPACINGS,
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        self.alphas_cumprod = train_alphas_cumprod(self.config)
        self.final_alpha_cumprod = np.float32(1.0) if self.config["set_alpha_to_one"] else self.alphas_cumprod[0]
        self.num_inference_steps = 0
        self.prk_timesteps = np.array([], dtype=np.int64)
        self._reset()

    def _reset(self) -> None:
        """Forget the previous run's model outputs (``ets``) and Runge-Kutta state."""
        self.ets: list[np.ndarray] = []
        self.counter = 0
        self.cur_model_output: np.ndarray | None = None
        self.cur_sample: np.ndarray | None = None

    def set_timesteps(self, num_inference_steps: int) -> None:
        """The Runge-Kutta timesteps (each step's start, midpoint twice and end) then the PLMS ones, descending.

        The listed timesteps are int64, as diffusers lists them.
        """
        skip_prk = self.config["skip_prk_steps"]
        if not skip_prk and num_inference_steps < _PNDM_ORDER:
            raise ValueError(
                f"{self.name} needs at least {_PNDM_ORDER} steps for its Runge-Kutta warm-up"
                f" (got {num_inference_steps}); set skip_prk_steps=True for fewer"
            )
        self.num_inference_steps = num_inference_steps
        train_steps = int(self.config["num_train_timesteps"])
        timesteps = discrete_timesteps(self.config, num_inference_steps)[::-1]  # ascending, as diffusers builds them
        if skip_prk:
            self.prk_timesteps = np.array([], dtype=np.int64)
            plms = np.concatenate([timesteps[:-1], timesteps[-2:-1], timesteps[-1:]])[::-1]
        else:
            half_step = train_steps // num_inference_steps // 2
            prk = timesteps[-_PNDM_ORDER:].repeat(2) + np.tile(np.array([0, half_step]), _PNDM_ORDER)
            self.prk_timesteps = prk[:-1].repeat(2)[1:-1][::-1]
            plms = timesteps[:-3][::-1]
        self.timesteps = np.concatenate([self.prk_timesteps, plms]).astype(np.int64)
        check_indexable(self.name, self.config, self.timesteps, num_inference_steps)
        self._reset()

    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        if self.counter < len(self.prk_timesteps) and not self.config["skip_prk_steps"]:
            return self._step_prk(model_output, int(timestep), sample)
        return self._step_plms(model_output, int(timestep), sample)

    def _step_prk(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        """One of the four evaluations of a Runge-Kutta step; all four start from the step's first sample."""
        ratio = int(self.config["num_train_timesteps"]) // self.num_inference_steps
        prev_timestep = timestep - (0 if self.counter % 2 else ratio // 2)
        start_timestep = int(self.prk_timesteps[self.counter // 4 * 4])
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output = np.float32(1 / 6) * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            assert self.cur_model_output is not None
            self.cur_model_output = self.cur_model_output + np.float32(1 / 3) * model_output
        else:
            assert self.cur_model_output is not None
            model_output = self.cur_model_output + np.float32(1 / 6) * model_output
            self.cur_model_output = None
        start = self.cur_sample if self.cur_sample is not None else sample
        self.counter += 1
        return self._prev_sample(start, start_timestep, prev_timestep, model_output)

    def _step_plms(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        """A linear multistep step from the last four model outputs (fewer at the start without warm-up)."""
        if not self.config["skip_prk_steps"] and len(self.ets) < 3:
            raise ValueError(f"{self.name} runs PLMS steps only after its 12 Runge-Kutta evaluations")
        ratio = int(self.config["num_train_timesteps"]) // self.num_inference_steps
        prev_timestep = timestep - ratio
        if self.counter != 1:
            self.ets = [*self.ets[-3:], model_output]
        else:
            # Without warm-up, the second call redoes the first step with the mean of both outputs.
            prev_timestep, timestep = timestep, timestep + ratio

        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            assert self.cur_sample is not None
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = np.float32(1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        self.counter += 1
        return self._prev_sample(sample, timestep, prev_timestep, model_output)

    def _prev_sample(
        self, sample: np.ndarray, timestep: int, prev_timestep: int, model_output: np.ndarray
    ) -> np.ndarray:
        """x_(t-δ) from x_t and the model output: formula (9) of the PNDM paper."""
        alpha_prod_t = self.alphas_cumprod[timestep]
        alpha_prod_t_prev = self.alphas_cumprod[prev_timestep] if prev_timestep >= 0 else self.final_alpha_cumprod
        beta_prod_t = np.float32(1.0) - alpha_prod_t
        beta_prod_t_prev = np.float32(1.0) - alpha_prod_t_prev
        if self.config["prediction_type"] == "v_prediction":
            model_output = np.sqrt(alpha_prod_t) * model_output + np.sqrt(beta_prod_t) * sample
        sample_coeff = np.sqrt(alpha_prod_t_prev / alpha_prod_t)
        denominator = alpha_prod_t * np.sqrt(beta_prod_t_prev) + np.sqrt(alpha_prod_t * beta_prod_t * alpha_prod_t_prev)
        prev_sample = sample_coeff * sample - (alpha_prod_t_prev - alpha_prod_t) * model_output / denominator
        return np.asarray(prev_sample, dtype=np.float32)
