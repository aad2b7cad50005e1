"""TensorRT end to end on the tiny model: engines built, audio against the CPU's fp32 audio, CUDA-graph replay
against plain execution with shape switching (A, B, A), two engines alive at once, close(), engine reuse,
out-of-profile and mismatch errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from audioldm_trt.engine import Engine, EngineDirectoryError, EngineError
from audioldm_trt.engine.backends.cuda import memory_info
from audioldm_trt.engine.backends.profiles import OutOfProfileError, Range
from audioldm_trt.engine.backends.tensorrt import EngineRecord, TensorRTBackend, engine_paths, require_tensorrt
from audioldm_trt.engine.manifest import GRAPH_NAMES, Manifest
from audioldm_trt.export.onnx import relative_max_difference
from audioldm_trt.export.tensorrt import build_engines

from .test_onnxruntime_cuda import FP16_AUDIO_TOLERANCE, generate

NEEDS = "tensorrt"
BATCH = Range(1, 1, 2)
DURATION = Range(0.5, 1.0, 2.0)


@pytest.fixture(scope="module")
def built(fp16_exports: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny fp16 export with engines for 1-2 waveforms of 0.5-2 s."""
    directory = Path(shutil.copytree(fp16_exports["tiny"], tmp_path_factory.mktemp("trt") / "tiny"))
    written = build_engines(directory, batch=BATCH, duration=DURATION, progress=False)
    assert [p.name for p in written] == [f"{graph}.engine" for graph in GRAPH_NAMES]
    return directory


def test_records_say_what_each_engine_was_built_from_and_for(built: Path) -> None:
    manifest = Manifest.load(built)
    for graph in GRAPH_NAMES:
        record = EngineRecord.read(engine_paths(built, graph)[1])
        assert record.tensorrt == require_tensorrt()
        assert record.onnx_sha256 == manifest.graph_sha256(graph)
        assert record.ranges == {"batch": [1, 1, 2], "duration": [0.5, 1.0, 2.0]}
        assert record.engine_bytes == engine_paths(built, graph)[0].stat().st_size
    assert list((built / "tensorrt").glob("timing-*.cache"))


@pytest.mark.parametrize("guidance", [2.5, 1.0])
def test_tensorrt_audio_matches_cpu_fp32(built: Path, models: dict[str, Any], guidance: float) -> None:
    with Engine.load(built, backend="tensorrt") as engine:
        audio, expected = generate(engine, models, guidance_scale=guidance)
    assert np.isfinite(audio).all()
    assert relative_max_difference(audio, expected) < FP16_AUDIO_TOLERANCE


def test_auto_picks_tensorrt_where_engines_run(built: Path) -> None:
    with Engine.load(built) as engine:
        assert engine.backend.name == "tensorrt"


def test_cuda_graph_replay_equals_plain_execution_across_shape_switches(built: Path) -> None:
    """A, B, A: each UNet shape has its own context and graph; the second A replays A's graph after B ran. The
    backends are dropped right after loading: their graphs keep what they run on alive."""
    manifest = Manifest.load(built)
    captured = TensorRTBackend(built, manifest, cuda_graphs=True).load(built, manifest, "unet")
    plain = TensorRTBackend(built, manifest, cuda_graphs=False).load(built, manifest, "unet")
    generator = np.random.default_rng(0)
    model = manifest.model
    shape_a = (4, model.latent_channels, model.latent_height(1.0), model.latent_width)
    shape_b = (2, model.latent_channels, model.latent_height(2.0), model.latent_width)
    for step, (shape, timestep) in enumerate([(shape_a, 981.0), (shape_a, 801.0), (shape_b, 501.0), (shape_a, 21.0)]):
        feeds = {
            "sample": generator.standard_normal(shape, dtype=np.float32),
            "timestep": np.full(shape[0], timestep, dtype=np.float32),
            "class_labels": generator.standard_normal((shape[0], model.embedding_dim), dtype=np.float32),
        }
        (replayed,) = captured.run(feeds, reuse=("class_labels",)).values()
        (expected,) = plain.run(feeds).values()
        # The same kernels on the same data; kernels with atomics may round differently from run to run.
        assert relative_max_difference(replayed, expected) < 1e-6, step
    shapes = [key[0] for key in captured.captured_shapes]  # type: ignore[attr-defined]
    assert shapes == [shape_b, shape_a]  # least recently used first


def test_two_engines_alive_at_once_and_close_frees_the_gpu(built: Path, models: dict[str, Any]) -> None:
    free_before, _ = memory_info()
    first = Engine.load(built, backend="tensorrt")
    with Engine.load(built, backend="tensorrt") as second:
        audio = [generate(engine, models)[0] for engine in (first, second, first)]
        assert relative_max_difference(audio[1], audio[0]) < 1e-5
        assert relative_max_difference(audio[2], audio[0]) < 1e-5
        first.close()
        with pytest.raises(EngineError, match="closed"):
            first.generate("a", audio_length_in_s=1.0, num_inference_steps=1, seed=0)
        assert np.isfinite(second.generate("a", audio_length_in_s=1.0, num_inference_steps=1, seed=0)).all()
    with pytest.raises(EngineError, match="closed"):
        second.generate("a", audio_length_in_s=1.0, num_inference_steps=1, seed=0)
    free_after, _ = memory_info()
    assert free_after > free_before - (64 << 20)  # what both held is back, but for CUDA's own bookkeeping


def test_engines_that_are_up_to_date_are_kept(built: Path) -> None:
    before = {graph: engine_paths(built, graph)[0].stat().st_mtime_ns for graph in GRAPH_NAMES}
    assert build_engines(built, batch=BATCH, duration=DURATION, progress=False) == []
    assert before == {graph: engine_paths(built, graph)[0].stat().st_mtime_ns for graph in GRAPH_NAMES}


def test_requests_outside_the_profiles_say_what_to_rebuild(built: Path) -> None:
    engine = Engine.load(built, backend="tensorrt")
    with pytest.raises(OutOfProfileError, match=r"needs 3 of .*--batch 1:1:3 --duration 0\.5:1:2$"):
        engine.generate(["a", "b", "c"], audio_length_in_s=1.0, num_inference_steps=1, seed=0)
    with pytest.raises(OutOfProfileError, match=r"audioldm-trt build .* --batch 1:1:2 --duration 0\.5:1:3"):
        engine.generate("a", audio_length_in_s=3.0, num_inference_steps=1, seed=0)
    model = engine.manifest.model
    too_tall = np.zeros((1, model.latent_channels, model.latent_height(3.0), model.latent_width), np.float32)
    with pytest.raises(OutOfProfileError, match="outside the engine's profile"):
        engine._graphs["vae_decoder"].run({"latents": too_tall})


def test_engines_built_for_something_else_are_refused(built: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(built, tmp_path / "copy"))
    record_path = engine_paths(copy, "unet")[1]
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps(record | {"tensorrt": "9.0.0"}))
    with pytest.raises(EngineDirectoryError, match=r"built with TensorRT 9\.0\.0.*rebuild with audioldm-trt build"):
        Engine.load(copy, backend="tensorrt")
