"""The audioldm-trt runtime: exported AudioLDM graphs, a numpy scheduler loop, no torch.

from audioldm_trt.engine import Engine
engine = Engine.load("engines/tiny")
audio = engine.generate("a dog barking", seed=0)   # float32 (1, samples) at engine.sampling_rate
"""

from .decoding import AudioChunk, Generation, Vocoding
from .denoising import Denoising
from .errors import (
    BackendUnavailableError,
    EngineDirectoryError,
    EngineError,
    NonFiniteOutputError,
    PartialFailureError,
)
from .pipeline import Engine
from .request import GenerationRequest

__all__ = [
    "AudioChunk",
    "BackendUnavailableError",
    "Denoising",
    "Engine",
    "EngineDirectoryError",
    "EngineError",
    "Generation",
    "GenerationRequest",
    "NonFiniteOutputError",
    "PartialFailureError",
    "Vocoding",
]
