"""ONNX Runtime's CUDA provider end to end on the tiny model: audio against the CPU's fp32 audio, two engines
alive at once, close()."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audioldm_trt.engine import Engine, EngineError
from audioldm_trt.export.onnx import relative_max_difference

NEEDS = "onnxruntime-cuda"
#: The issue's bound for fp16 audio against fp32 audio.
FP16_AUDIO_TOLERANCE = 5e-2
PROMPTS = ["a dog barking", "rain on a roof"]


def generate(engine: Engine, models: dict[str, Any], **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(this engine's audio, the CPU fp32 export's audio) for the same latents."""
    latents = models["tiny"].latents(len(PROMPTS), 1.0, seed=7)
    kwargs = {"audio_length_in_s": 1.0, "num_inference_steps": 10, "latents": latents, **kwargs}
    return engine.generate(PROMPTS, **kwargs), models["tiny"].engine.generate(PROMPTS, **kwargs)


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_onnxruntime_cuda_audio_matches_cpu_fp32(
    fp16_exports: dict[str, Path], models: dict[str, Any], precision: str
) -> None:
    export = fp16_exports["tiny"] if precision == "fp16" else models["tiny"].export
    with Engine.load(export, backend="onnxruntime-cuda") as engine:
        audio, expected = generate(engine, models)
    assert np.isfinite(audio).all()
    assert relative_max_difference(audio, expected) < FP16_AUDIO_TOLERANCE


def test_two_engines_alive_at_once_and_close(models: dict[str, Any]) -> None:
    first = Engine.load(models["tiny"].export, backend="onnxruntime-cuda")
    second = Engine.load(models["tiny"].export, backend="onnxruntime-cuda")
    audio = [generate(engine, models)[0] for engine in (first, second, first)]
    assert relative_max_difference(audio[1], audio[0]) < 1e-5 and relative_max_difference(audio[2], audio[0]) < 1e-5
    first.close()
    with pytest.raises(EngineError, match="closed"):
        first.generate("a", audio_length_in_s=1.0, num_inference_steps=1, seed=0)
    assert np.isfinite(second.generate("a", audio_length_in_s=1.0, num_inference_steps=1, seed=0)).all()
    second.close()
