"""The one interface the denoising loop uses for every scheduler, and what the schedulers share.

Each scheduler is a numpy port of the diffusers class of the same name: it takes that class's
``scheduler_config.json`` keys, with diffusers' defaults, and gives the same timesteps, input scaling and
steps. A key diffusers accepts but this port does not implement is an error naming the key, never silently
ignored.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from ..random import TorchGenerator


#: The ``beta_schedule`` values diffusers' schedulers share (Heun's also takes "exp").
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
#: The ``timestep_spacing`` values of Table 2 of https://huggingface.co/papers/2305.08891.
TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")


class Scheduler(ABC):
    """A diffusion sampler in numpy, one instance per generation (it keeps per-run state).

    The loop is, for every scheduler::

        scheduler.set_timesteps(n)
        latents = latents * scheduler.init_noise_sigma
        for t in scheduler.timesteps:  # 2nd-order schedulers list most timesteps twice: one UNet call each
            noise = unet(scheduler.scale_model_input(latents, t), t)
            latents = scheduler.step(noise, t, latents, eta=eta, generator=generator)
    """

    #: diffusers' class name, the name users pick a scheduler by.
    name: ClassVar[str]
    #: diffusers' ``order``: 2 for schedulers that call the UNet twice per step.
    order: ClassVar[int] = 1
    #: Every config key diffusers' class accepts, with diffusers' default.
    config_defaults: ClassVar[dict[str, Any]]
    #: The values this port implements, for keys where it does not implement all of diffusers'.
    supported_values: ClassVar[dict[str, Collection[Any]]] = {}

    timesteps: np.ndarray
    #: The training schedule's cumulative alpha products (float32), which every scheduler derives its levels from.
    alphas_cumprod: np.ndarray
    init_noise_sigma: float = 1.0
    #: diffusers' ``begin_index``: the index in ``timesteps`` a run that starts mid-schedule (audio-to-audio)
    #: starts at, or None for a run from the first timestep (where the index is found from the timestep).
    begin_index: int | None = None

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = dict(config or {})
        unknown = sorted(k for k in config if k not in self.config_defaults and not k.startswith("_"))
        if unknown:
            raise ValueError(f"{self.name} has no config key {unknown[0]!r}")
        self.config = {**self.config_defaults, **{k: v for k, v in config.items() if not k.startswith("_")}}
        for key, allowed in self.supported_values.items():
            if not _is_one_of(self.config[key], allowed):
                raise ValueError(
                    f"{self.name}: config {key}={self.config[key]!r} is not supported by the numpy scheduler"
                    f" (supported: {', '.join(repr(v) for v in allowed)})"
                )

    @classmethod
    def from_config(cls, base: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Scheduler:
        """Like diffusers' ``from_config``: keys of ``base`` (often another scheduler's config) that this class
        does not take are dropped, as diffusers drops them; an unknown key in ``overrides`` is an error."""
        kept = {k: v for k, v in base.items() if k in cls.config_defaults}
        return cls({**kept, **(overrides or {})})

    @abstractmethod
    def set_timesteps(self, num_inference_steps: int) -> None:
        """Prepare ``timesteps`` (and ``init_noise_sigma``) for a run of ``num_inference_steps`` steps."""

    def scale_model_input(self, sample: np.ndarray, timestep: float) -> np.ndarray:
        """The UNet input for ``sample`` at ``timestep`` (identity for variance-preserving samplers)."""
        return sample

    def set_begin_index(self, begin_index: int) -> None:
        """Start the run at ``timesteps[begin_index]``, as diffusers' img2img pipelines do for a strength below 1."""
        self.begin_index = begin_index

    def add_noise(self, original: np.ndarray, noise: np.ndarray, index: int) -> np.ndarray:
        """``original`` noised with ``noise`` to the level of ``timesteps[index]``: diffusers' ``add_noise`` where
        img2img calls it (before the first step, at ``begin_index``) and inpainting (after step ``index - 1``).

        This is the DDPM form DDIM and PNDM share, ``sqrt(a_t) x + sqrt(1 - a_t) noise`` at the timestep; the
        sigma and multistep schedulers index their own noise levels by step instead."""
        alpha_prod = self.alphas_cumprod[int(self.timesteps[index])]
        return np.asarray(
            np.sqrt(alpha_prod) * original + np.sqrt(np.float32(1.0) - alpha_prod) * noise, dtype=np.float32
        )

    @abstractmethod
    def step(
        self,
        model_output: np.ndarray,
        timestep: float,
        sample: np.ndarray,
        *,
        eta: float = 0.0,
        generator: TorchGenerator | None = None,
    ) -> np.ndarray:
        """The sample at the next timestep. ``eta`` is DDIM's; ``generator`` feeds stochastic samplers."""


def strength_start(num_inference_steps: int, strength: float, order: int) -> int:
    """The index in ``timesteps`` where diffusers' img2img pipelines start for ``strength`` (``get_timesteps``:
    the last ``int(steps * strength)`` steps run, each ``order`` timesteps long)."""
    kept = min(int(num_inference_steps * strength), num_inference_steps)
    return max(num_inference_steps - kept, 0) * order


def discrete_timesteps(config: Mapping[str, Any], num_inference_steps: int) -> np.ndarray:
    """The int64 inference timesteps, descending, for ``timestep_spacing`` as DDIM and PNDM space them."""
    train_steps = int(config["num_train_timesteps"])
    spacing = config["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, train_steps - 1, num_inference_steps).round()[::-1].astype(np.int64)
    if spacing == "leading":
        ratio = train_steps // num_inference_steps
        timesteps = (np.arange(num_inference_steps) * ratio).round()[::-1].astype(np.int64)
        return timesteps + int(config["steps_offset"])
    return np.round(np.arange(train_steps, 0, -train_steps / num_inference_steps)).astype(np.int64) - 1


def check_indexable(name: str, config: Mapping[str, Any], timesteps: np.ndarray, num_inference_steps: int) -> None:
    """ValueError where a timestep lies beyond the training noise schedule that ``name`` indexes by timestep:
    ``steps_offset`` 1 with "leading" spacing reaches timestep 1000 of 1000 at 1000 steps, where diffusers
    fails with an IndexError in its first step."""
    trained = int(config["num_train_timesteps"])
    if timesteps.size and timesteps.max() >= trained:
        raise ValueError(
            f"{name} reaches timestep {timesteps.max()} at {num_inference_steps} steps with this config,"
            f" beyond the {trained} training timesteps: use fewer steps"
        )


def _is_one_of(value: Any, allowed: Collection[Any]) -> bool:
    # `True == 1` in Python: compare types too, so that 1 is not taken for True.
    return any(value == a and type(value) is type(a) for a in allowed)


def betas_from_config(config: Mapping[str, Any]) -> np.ndarray:
    """The training betas as diffusers computes them (float32), from ``trained_betas`` or ``beta_schedule``."""
    n = int(config["num_train_timesteps"])
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float32)
    schedule = config["beta_schedule"]
    if schedule == "linear":
        return _linspace_f32(config["beta_start"], config["beta_end"], n)
    if schedule == "scaled_linear":
        return _linspace_f32(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n) ** 2
    if schedule == "squaredcos_cap_v2":
        return _betas_for_alpha_bar(n, lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2)
    if schedule == "exp":  # HeunDiscreteScheduler's
        return _betas_for_alpha_bar(n, lambda t: math.exp(t * -12.0))
    raise ValueError(f"unsupported beta_schedule {schedule!r}")


def _linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=torch.float32)``: filled from both ends, each value
    ``first + step * i`` (or ``last - step * (steps - 1 - i)``) rounded once, as torch's fused multiply-add."""
    first, last = np.float32(start), np.float32(end)
    step = np.float64((last - first) / np.float32(max(steps - 1, 1)))
    index = np.arange(steps, dtype=np.float64)
    half = steps // 2
    head = np.float64(first) + step * index[:half]
    tail = np.float64(last) - step * (steps - 1 - index[half:])
    return np.concatenate([head, tail]).astype(np.float32)


def _betas_for_alpha_bar(n: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """diffusers' ``betas_for_alpha_bar``: the betas of a continuous alpha-bar curve."""
    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], dtype=np.float32)


def cumprod_f32(values: np.ndarray) -> np.ndarray:
    """``torch.cumprod`` of a float32 tensor on CPU: a float64 running product, each output rounded to float32.

    (numpy's float32 cumprod rounds the running product at every step and drifts ~1e-6 away in 1000 steps.)
    """
    return np.cumprod(values, dtype=np.float64).astype(np.float32)


def rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """diffusers' ``rescale_zero_terminal_snr`` (https://huggingface.co/papers/2305.08891, Algorithm 1).

    The small betas come back as ``1 - a_t / a_(t-1)``, a cancellation that turns a one-ulp difference in the
    cumulative product into ~1e-4 relative, so the product must be torch's to the bit.
    """
    alphas_bar_sqrt = np.sqrt(cumprod_f32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return np.float32(1.0) - alphas


def alphas_cumprod_from_config(config: Mapping[str, Any]) -> np.ndarray:
    """Cumulative products of ``1 - beta`` (float32, as torch computes them), honouring
    ``rescale_betas_zero_snr``."""
    betas = betas_from_config(config)
    if config.get("rescale_betas_zero_snr"):
        betas = rescale_zero_terminal_snr(betas)
    return cumprod_f32(np.float32(1.0) - betas)


def threshold_sample(sample: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Dynamic thresholding (https://huggingface.co/papers/2205.11487) as diffusers' ``_threshold_sample``:
    clip each batch item to its ``ratio`` quantile of ``|x|`` (kept within ``[1, max_value]``) and divide by it.

    The quantile is ``torch.quantile``'s: rank ``q * (n - 1)`` in the sample's dtype (float32 or float64), then
    linear interpolation.
    """
    real = sample.dtype.type
    flat = sample.reshape(sample.shape[0], -1)
    ordered = np.sort(np.abs(flat), axis=1)
    rank = real(ratio) * real(ordered.shape[1] - 1)
    below = int(rank)
    weight = rank - real(below)
    low, high = ordered[:, below], ordered[:, int(np.ceil(rank))]
    quantile = low + weight * (high - low) if weight < 0.5 else high - (high - low) * (real(1.0) - weight)
    bound = np.clip(quantile, real(1.0), real(max_value))[:, np.newaxis]
    return np.asarray((np.clip(flat, -bound, bound) / bound).reshape(sample.shape), dtype=sample.dtype)
