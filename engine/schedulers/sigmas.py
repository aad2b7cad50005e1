"""What diffusers' sigma-parameterised (k-diffusion style) schedulers share, in numpy.

LMS, Euler, Euler ancestral, Heun and KDPM2 all derive their noise levels ``sigma = sqrt((1 - a) / a)`` from the
training ``alphas_cumprod``, space the inference timesteps the same three ways, optionally respace the sigmas
(Karras, exponential) and find a timestep back from a sigma, and find their place in ``timesteps`` the same way.
The dtypes follow diffusers: training quantities are float32 tensors there, spacing and respacing are float64
numpy, the final sigmas float32.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from .base import Scheduler, _linspace_f32, alphas_cumprod_from_config

#: The config keys that replace the interpolated sigmas, at most one of which may be set.
SIGMA_CONVERSIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")
#: ``use_beta_sigmas`` needs scipy's beta distribution, which the runtime does without; None reads as False.
WITHOUT_BETA_SIGMAS = (False, None)
#: The smallest positive fp16 subnormal: diffusers' stand-in for a zero terminal ``alphas_cumprod``.
_ZERO_SNR_ALPHA_CUMPROD = np.float32(2.0**-24)


def train_alphas_cumprod(config: Mapping[str, Any]) -> np.ndarray:
    """The training ``alphas_cumprod`` (float32), with the sigma-based schedulers' handling of
    ``rescale_betas_zero_snr``: a last value close to 0 without being 0, so that the first sigma is finite."""
    alphas_cumprod = alphas_cumprod_from_config(config)
    if config.get("rescale_betas_zero_snr"):
        alphas_cumprod[-1] = _ZERO_SNR_ALPHA_CUMPROD
    return alphas_cumprod


def train_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The float32 noise level of every training timestep, ascending in t."""
    return np.asarray(np.sqrt((np.float32(1.0) - alphas_cumprod) / alphas_cumprod))


def spaced_timesteps(config: Mapping[str, Any], num_inference_steps: int) -> np.ndarray:
    """The float32 inference timesteps, descending, for ``timestep_spacing`` (Table 2 of arXiv:2305.08891)."""
    train_steps = int(config["num_train_timesteps"])
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, num_inference_steps, dtype=np.float32)[::-1].copy()
    if spacing == "leading":
        ratio = train_steps // num_inference_steps
        timesteps = (np.arange(0, num_inference_steps) * ratio).round()[::-1].astype(np.float32)
        return timesteps + np.float32(config["steps_offset"])
    if spacing == "trailing":
        timesteps = np.arange(train_steps, 0, -train_steps / num_inference_steps).round().astype(np.float32)
        return timesteps - np.float32(1.0)
    raise ValueError(f"timestep_spacing {spacing!r} is not one of 'linspace', 'leading', 'trailing'")


def interpolated_sigmas(timesteps: np.ndarray, train: np.ndarray) -> np.ndarray:
    """The float64 sigmas at (possibly fractional) ``timesteps``, linear in t between training sigmas."""
    return np.asarray(np.interp(timesteps, np.arange(len(train)), train))


def log_linear_sigmas(train: np.ndarray, num_inference_steps: int) -> np.ndarray:
    """Euler's ``interpolation_type="log_linear"``: float32 sigmas evenly spaced in log from max to min.

    diffusers takes numpy's float32 ``log`` of the ends, then ``torch.linspace(...).exp()`` in float32 makes
    ``num_inference_steps + 1`` of them.
    """
    log_max, log_min = np.log(train[[-1, 0]])
    return f64_rounded(np.exp, _linspace_f32(float(log_max), float(log_min), num_inference_steps + 1))


def converted_sigmas(
    config: Mapping[str, Any], sigmas: np.ndarray, log_train: np.ndarray, num_inference_steps: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """Timesteps and sigmas (float64) respaced as ``use_karras_sigmas``/``use_exponential_sigmas`` ask, or None.

    The ends are ``config["sigma_min"]``/``["sigma_max"]`` where the scheduler has them (Euler), else those
    of ``sigmas``; the timesteps are found back from the new sigmas by ``sigma_to_t``.
    """
    sigma_min = config.get("sigma_min")
    sigma_max = config.get("sigma_max")
    low = float(sigmas[-1]) if sigma_min is None else sigma_min
    high = float(sigmas[0]) if sigma_max is None else sigma_max
    if config.get("use_karras_sigmas"):
        rho = 7.0  # Karras et al. 2022, the paper's value
        ramp = np.linspace(0, 1, num_inference_steps)
        min_inv_rho, max_inv_rho = low ** (1 / rho), high ** (1 / rho)
        converted = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    elif config.get("use_exponential_sigmas"):
        converted = np.exp(np.linspace(math.log(high), math.log(low), num_inference_steps))
    else:
        return None
    return sigma_to_t(converted, log_train), converted


def sigma_to_t(sigmas: np.ndarray, log_train: np.ndarray) -> np.ndarray:
    """diffusers' ``_sigma_to_t`` for an array: the fractional training timestep of each sigma, linear in log.

    It computes in the dtype of ``sigmas`` (float64 numpy there, float32 torch for KDPM2's interpolated
    sigmas); ``log_train`` is the float32 ``log`` of the training sigmas.
    """
    log_sigma = f64_rounded(np.log, np.maximum(sigmas, sigmas.dtype.type(1e-10)))
    dists = log_sigma[np.newaxis, :] - log_train[:, np.newaxis]
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_train.shape[0] - 2)
    low, high = log_train[low_idx], log_train[low_idx + 1]
    w = np.clip((low - log_sigma) / (low - high), 0, 1)
    index = low_idx.astype(w.dtype)
    return np.asarray((1 - w) * index + w * (index + 1))


def f64_rounded(function: Callable[[np.ndarray], np.ndarray], values: np.ndarray) -> np.ndarray:
    """``function`` (``np.log``, ``np.exp``) evaluated in float64 and rounded back to the dtype of ``values``.

    torch's float32 ``log``/``exp`` are within an ulp of the correctly rounded result; numpy's float32 SIMD
    ones are further off, enough to move KDPM2's midpoint sigmas by an ulp in most places.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(function(values.astype(np.float64)), dtype=values.dtype)


def input_scale(sample: np.ndarray, sigma: np.float32) -> np.ndarray:
    """``sample / sqrt(sigma**2 + 1)``: the UNet input at noise level ``sigma`` (unit variance)."""
    return np.asarray(sample / np.sqrt(sigma**2 + np.float32(1.0)), dtype=np.float32)


class SigmaScheduler(Scheduler):
    """The state and the bookkeeping the sigma-based schedulers share.

    ``sigmas`` (float32) is indexed by the step index, which diffusers finds on the first ``scale_model_input``
    or ``step`` from where the first timestep sits in ``timesteps`` (the second match when it repeats) and
    then advances by one per ``step``.
    """

    sigmas: np.ndarray

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        super().__init__(config)
        chosen = [key for key in SIGMA_CONVERSIONS if self.config.get(key)]
        if len(chosen) > 1:
            raise ValueError(f"{self.name}: only one of {', '.join(chosen)} can be set")
        self.alphas_cumprod = train_alphas_cumprod(self.config)
        self.num_inference_steps = 0
        self._step_index: int | None = None

    def _set_schedule(self, timesteps: np.ndarray, sigmas: np.ndarray) -> None:
        """Install a new schedule and ``init_noise_sigma``, the std of the initial noise, and restart (from the
        first timestep, as diffusers' ``set_timesteps`` forgets the begin index)."""
        self.timesteps = timesteps
        self.sigmas = sigmas
        self._step_index = None
        self.begin_index = None
        max_sigma = sigmas.max()
        if self.config["timestep_spacing"] not in ("linspace", "trailing"):
            max_sigma = np.sqrt(max_sigma**2 + np.float32(1.0))
        self.init_noise_sigma = float(max_sigma)

    def _index(self, timestep: float) -> int:
        """The current step index, found from ``timestep`` on the first call of a run as diffusers does."""
        if self._step_index is None and self.begin_index is not None:
            self._step_index = self.begin_index
        if self._step_index is None:
            matches = np.flatnonzero(self.timesteps == timestep)
            if not len(matches):
                raise ValueError(f"{self.name}: timestep {timestep} is not one of the scheduler's timesteps")
            self._step_index = int(matches[1 if len(matches) > 1 else 0])
        return self._step_index

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """``x + sigma noise`` at the sigma of step ``index`` (see ``Scheduler.add_noise``)."""
        return np.asarray(original + noise * np.float32(self.sigmas[index]), dtype=np.float32)

    def _input_sigma(self, index: int) -> np.float32:
        """The noise level of the UNet input at step ``index``."""
        return np.float32(self.sigmas[index])

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        return input_scale(sample, self._input_sigma(self._index(timestep)))

    def _denoised(self, model_output: np.ndarray, sample: np.ndarray, sigma: np.float32) -> np.ndarray:
        """The predicted clean sample from the model output at noise level ``sigma``, per ``prediction_type``."""
        prediction_type = self.config["prediction_type"]
        if prediction_type == "epsilon":
            return np.asarray(sample - sigma * model_output)
        if prediction_type == "v_prediction":
            variance = sigma**2 + np.float32(1.0)
            return np.asarray(model_output * (-sigma / np.sqrt(variance)) + sample / variance)
        return model_output  # "sample" (and Euler's legacy "original_sample")
