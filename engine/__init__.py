"""The audioldm-trt runtime: exported AudioLDM graphs, a numpy scheduler loop, no torch.

from audioldm_trt.engine import Engine
engine = Engine.load("engines/tiny")
audio = engine.generate("a dog barking", seed=0)   # float32 (1, samples) at engine.sampling_rate
"""

from .decoding import AudioChunk, Generation, Vocoding
from .denoising import Denoising
from .errors import (
    BackendUnavailableError,
    Cancelled,
    EngineDirectoryError,
    EngineError,
    NonFiniteOutputError,
    PartialFailureError,
)
from .pipeline import STOP, Engine, StepCallback
from .request import GenerationRequest

__all__ = [
    "STOP",
    "AudioChunk",
    "BackendUnavailableError",
    "Cancelled",
    "Denoising",
    "Engine",
    "EngineDirectoryError",
    "EngineError",
    "Generation",
    "GenerationRequest",
    "NonFiniteOutputError",
    "PartialFailureError",
    "StepCallback",
    "Vocoding",
]
