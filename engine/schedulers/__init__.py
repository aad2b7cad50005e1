"""numpy ports of the diffusers schedulers AudioLDM users pick, by diffusers' class names."""

from __future__ import annotations

from .base import Scheduler
from .ddim import DDIMScheduler

SCHEDULERS: dict[str, type[Scheduler]] = {cls.name: cls for cls in (DDIMScheduler,)}


def scheduler_class(name: str) -> type[Scheduler]:
    """The scheduler called ``name`` (diffusers' class name); ValueError listing the choices otherwise."""
    try:
        return SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(sorted(SCHEDULERS))}") from None


__all__ = ["SCHEDULERS", "Scheduler", "scheduler_class"]
