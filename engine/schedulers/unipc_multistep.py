"""UniPC (https://huggingface.co/papers/2302.04867): a port of diffusers' UniPCMultistepScheduler, a multistep
predictor (UniP) whose every step is first corrected (UniC) with the model output at the point it reached."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .base import BETA_SCHEDULES, TIMESTEP_SPACINGS
from .multistep import PREDICTION_TYPES, MultistepScheduler

if TYPE_CHECKING:
    from ..random import TorchGenerator


class UniPCMultistepScheduler(MultistepScheduler):
    name = "UniPCMultistepScheduler"
    config_defaults = {
        "num_train_timesteps": 1000,
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
        "trained_betas": None,
        "solver_order": 2,
        "prediction_type": "epsilon",
        "thresholding": False,
        "dynamic_thresholding_ratio": 0.995,
        "sample_max_value": 1.0,
        "predict_x0": True,
        "solver_type": "bh2",
        "lower_order_final": True,
        "disable_corrector": [],
        "solver_p": None,
        "use_karras_sigmas": False,
        "use_exponential_sigmas": False,
        "use_beta_sigmas": False,
        "use_flow_sigmas": False,
        "flow_shift": 1.0,
        "timestep_spacing": "linspace",
        "steps_offset": 0,
        "final_sigmas_type": "zero",
        "rescale_betas_zero_snr": False,
        "use_dynamic_shifting": False,
        "time_shift_type": "exponential",
        "sigma_min": None,
        "sigma_max": None,
        "shift_terminal": None,
    }
    supported_values = {
        "beta_schedule": BETA_SCHEDULES,
        "solver_order": (1, 2, 3),
        "prediction_type": PREDICTION_TYPES,
        "solver_type": ("bh1", "bh2", "midpoint", "heun", "logrho"),
        "solver_p": (None,),
        "use_beta_sigmas": (False,),
        "use_flow_sigmas": (False,),
        "timestep_spacing": TIMESTEP_SPACINGS,
        "final_sigmas_type": ("zero", "sigma_min"),
        "use_dynamic_shifting": (False,),
        "shift_terminal": (None,),
    }

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        if self.config["solver_type"] not in ("bh1", "bh2"):
            self.config["solver_type"] = "bh2"  # diffusers takes the other solvers' names for its default
        if self.config["final_sigmas_type"] == "zero":
            # The last step's log-SNR is infinite there, which diffusers turns into NaN or a singular system
            # (with a higher order at the last step).
            failing = {
                "solver_type='bh1'": self.config["solver_type"] == "bh1",
                "predict_x0=False": not self.config["predict_x0"],
                "lower_order_final=False": self.config["solver_order"] > 1 and not self.config["lower_order_final"],
            }
            for setting, fails in failing.items():
                if fails:
                    raise ValueError(
                        f"{self.name}: {setting} fails in diffusers with final_sigmas_type='zero'; use 'sigma_min'"
                    )
        self.disable_corrector = {int(step) for step in self.config["disable_corrector"]}
        self.last_sample: np.ndarray | None = None
        self.this_order = 0

    def set_timesteps(self, num_inference_steps: int) -> None:
        timesteps = self._spaced(num_inference_steps)
        respaced = self._respaced(num_inference_steps, round_timesteps=True)
        if respaced is None:
            sigmas = self._interpolated(timesteps)
            final = float(self.train_sigmas[0])
        else:
            timesteps, sigmas = respaced
            final = float(sigmas[-1])
        self._set_schedule(timesteps, sigmas, final if self.config["final_sigmas_type"] == "sigma_min" else 0.0)
        self.last_sample = None

    def _advance(self, model_output: np.ndarray, sample: np.ndarray, generator: TorchGenerator | None) -> np.ndarray:
        assert self.step_index is not None
        index = self.step_index
        if self.config["predict_x0"]:
            converted = self._data_prediction(model_output, sample)
        else:
            converted = self._noise_prediction(model_output, sample, threshold=False)
        if index > 0 and index - 1 not in self.disable_corrector and self.last_sample is not None:
            sample = self._corrected(converted, self.last_sample, sample)
        self._remember(converted)

        solver_order = int(self.config["solver_order"])
        order = min(solver_order, len(self.timesteps) - index) if self.config["lower_order_final"] else solver_order
        self.this_order = min(order, self.lower_order_nums + 1)  # warm up on the first steps
        self.last_sample = sample
        prev_sample = self._predicted(sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, solver_order)
        return prev_sample

    def _predicted(self, sample: np.ndarray) -> np.ndarray:
        """UniP-``this_order`` (B(h) variant) from the current level to the next."""
        assert self.step_index is not None
        order = self.this_order
        start, scale, differences, rows, b = self._bh_terms(self.step_index + 1, self.step_index, order, sample)
        if not differences:
            return start
        rhos = np.array([0.5]) if order == 2 else np.linalg.solve(rows[:-1, :-1], b[:-1])
        return start - scale * _contract(rhos, differences)

    def _corrected(self, converted: np.ndarray, last_sample: np.ndarray, sample: np.ndarray) -> np.ndarray:
        """UniC-``this_order``: ``sample`` (what the last predictor reached) redone with its model output."""
        assert self.step_index is not None
        order = self.this_order
        start, scale, differences, rows, b = self._bh_terms(self.step_index, self.step_index - 1, order, last_sample)
        rhos = np.array([0.5]) if order == 1 else np.linalg.solve(rows, b)
        outputs = self._history(1)
        correction: np.ndarray = rhos[-1] * (converted - outputs[0])
        if differences:
            correction = _contract(rhos[:-1], differences) + correction
        return start - scale * correction

    def _bh_terms(
        self, target_index: int, base_index: int, order: int, sample: np.ndarray
    ) -> tuple[np.ndarray, np.float64, list[np.ndarray], np.ndarray, np.ndarray]:
        """What UniP and UniC share for a step from ``base_index`` to ``target_index``: the first-order
        update, the weight of the higher-order correction, the scaled output differences, and the system
        ``rows @ rhos = b`` the correction's weights solve."""
        target, base = self._level(target_index), self._level(base_index)
        h = target.lam - base.lam
        outputs = self._history(order)
        ratios, differences = [], []
        for k in range(1, order):
            ratio = (self._level(base_index - k).lam - base.lam) / h
            ratios.append(ratio)
            differences.append((outputs[k] - outputs[0]) / ratio)
        ratios.append(np.float64(1.0))

        predict_x0 = self.config["predict_x0"]
        hh = -h if predict_x0 else h
        h_phi_1 = np.expm1(hh)  # h * phi_1(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.config["solver_type"] == "bh1" else np.expm1(hh)
        factorial = 1
        b = []
        for k in range(1, order + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        powers = [np.ones(order)]
        for _ in range(1, order):
            powers.append(powers[-1] * np.array(ratios))
        rows = np.stack(powers)

        if predict_x0:
            start = (target.sigma / base.sigma) * sample - (target.alpha * h_phi_1) * outputs[0]
            scale = target.alpha * b_h
        else:
            start = (target.alpha / base.alpha) * sample - (target.sigma * h_phi_1) * outputs[0]
            scale = target.sigma * b_h
        return start, scale, differences, rows, np.array(b)


def _contract(weights: np.ndarray, differences: list[np.ndarray]) -> np.ndarray:
    """diffusers' ``einsum("k,bkc...->bc...")``: the weighted sum of the output differences."""
    return np.asarray(sum(w * d for w, d in zip(weights, differences, strict=True)))
