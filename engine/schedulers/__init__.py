"""numpy ports of the diffusers schedulers AudioLDM users pick, by diffusers' class names."""

from __future__ import annotations

from .base import Scheduler
from .ddim import DDIMScheduler
from .deis_multistep import DEISMultistepScheduler
from .dpmsolver_multistep import DPMSolverMultistepScheduler
from .dpmsolver_singlestep import DPMSolverSinglestepScheduler
from .euler import EulerDiscreteScheduler
from .euler_ancestral import EulerAncestralDiscreteScheduler
from .heun import HeunDiscreteScheduler
from .kdpm2 import KDPM2DiscreteScheduler
from .lms import LMSDiscreteScheduler
from .pndm import PNDMScheduler
from .unipc_multistep import UniPCMultistepScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls
    for cls in (
        DDIMScheduler,
        DEISMultistepScheduler,
        DPMSolverMultistepScheduler,
        DPMSolverSinglestepScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        HeunDiscreteScheduler,
        KDPM2DiscreteScheduler,
        LMSDiscreteScheduler,
        PNDMScheduler,
        UniPCMultistepScheduler,
    )
}


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler called ``name`` (diffusers' class name); ValueError listing the choices otherwise."""
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}") from None


__all__ = ["SCHEDULERS", "Scheduler", "scheduler_class"]
