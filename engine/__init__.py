"""The audioldm-trt runtime: exported AudioLDM graphs, a numpy scheduler loop, no torch.

from audioldm_trt.engine import Engine
engine = Engine.load("engines/tiny")
audio = engine.generate("a dog barking", seed=0)   # float32 (1, samples) at engine.sampling_rate
"""

from .errors import BackendUnavailableError, EngineDirectoryError, EngineError, NonFiniteOutputError
from .pipeline import Engine, Generation

__all__ = [
    "BackendUnavailableError",
    "Engine",
    "EngineDirectoryError",
    "EngineError",
    "Generation",
    "NonFiniteOutputError",
]
