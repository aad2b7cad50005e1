"""Shared fixtures: random-weight AudioLDM checkpoints made with diffusers, their exports, both pipelines.

Everything is built once per test session (a few seconds per model) in a temporary directory.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

#: The two test architectures; they differ in every dimension the runtime reads from the configs.
TEST_PRESETS = ("tiny", "tiny-deep")
#: The parity bound of the project: relative max difference of the waveform against diffusers.
AUDIO_TOLERANCE = 2e-4


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU with TensorRT / ONNX Runtime CUDA")
    warnings.filterwarnings("ignore", message=".*AudioLDMPipeline has been deprecated.*")
    logging.getLogger("diffusers").setLevel(logging.ERROR)


@dataclass
class ModelUnderTest:
    """One random checkpoint: its diffusers directory and pipeline, and its export."""

    name: str
    checkpoint: Path
    export: Path
    _pipeline: Any = None
    _engine: Any = None

    @property
    def engine(self) -> Any:
        """The export loaded on ONNX Runtime CPU, shared by the tests that do not load their own."""
        if self._engine is None:
            from audioldm_trt.engine import Engine

            self._engine = Engine.load(self.export, backend="onnxruntime-cpu")
        return self._engine

    def odd_audio_length(self) -> float:
        """An audio length whose latent height is not a multiple of the UNet's total down-sampling."""
        factor = 2 ** (len(self.pipeline.unet.config.block_out_channels) - 1)
        model = self.engine.manifest.model
        length = 0.77
        while model.latent_height(length) % factor == 0:
            length += 0.013
        return round(length, 3)

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            from diffusers import AudioLDMPipeline

            self._pipeline = AudioLDMPipeline.from_pretrained(self.checkpoint)
            self._pipeline.set_progress_bar_config(disable=True)
        return self._pipeline

    def latents(self, batch: int, audio_length_in_s: float | None, seed: int = 0) -> np.ndarray:
        """Random initial latents of the shape the pipeline draws for these arguments."""
        from audioldm_trt.engine.manifest import Manifest

        model = Manifest.load(self.export).model
        length = model.default_audio_length_in_s if audio_length_in_s is None else audio_length_in_s
        shape = (batch, model.latent_channels, model.latent_height(length), model.latent_width)
        return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)

    def diffusers_audio(self, latents: np.ndarray | None = None, seed: int | None = None, **kwargs: Any) -> np.ndarray:
        """diffusers' AudioLDMPipeline output for the same arguments (the oracle)."""
        import torch

        if latents is not None:
            kwargs["latents"] = torch.from_numpy(latents)
        if seed is not None:
            kwargs["generator"] = torch.Generator().manual_seed(seed)
        return self.pipeline(**kwargs).audios


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelUnderTest]:
    from audioldm_trt.export.exporter import export_model
    from audioldm_trt.export.random_models import write_random_model

    root = tmp_path_factory.mktemp("models")
    built = {}
    for name in TEST_PRESETS:
        checkpoint = write_random_model(name, root / f"{name}-checkpoint")
        export = export_model(str(checkpoint), root / f"{name}-export")
        built[name] = ModelUnderTest(name, checkpoint, export)
    return built


@pytest.fixture(scope="session", params=TEST_PRESETS)
def model(request: pytest.FixtureRequest, models: dict[str, ModelUnderTest]) -> ModelUnderTest:
    return models[request.param]


@pytest.fixture(scope="session")
def tiny(models: dict[str, ModelUnderTest]) -> ModelUnderTest:
    return models["tiny"]


#: Graphs each preset's fp16 export keeps fp32: none for tiny; tiny-deep exercises ``--fp32 vocoder``.
FP32_GRAPHS = {"tiny": (), "tiny-deep": ("vocoder",)}


@pytest.fixture(scope="session")
def fp16_exports(models: dict[str, ModelUnderTest], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``--precision fp16`` exports of the test presets."""
    from audioldm_trt.export.exporter import export_model

    root = tmp_path_factory.mktemp("fp16")
    return {
        name: export_model(str(m.checkpoint), root / name, precision="fp16", fp32_graphs=FP32_GRAPHS[name])
        for name, m in models.items()
    }


def relative_difference(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    return float(np.abs(actual.astype(np.float64) - expected).max() / np.abs(expected).max())
