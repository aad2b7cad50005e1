"""The openvino backend on the tiny models: fp32 against diffusers and ONNX Runtime, the compiled-model cache,
the fp32 nodes of bf16, and bf16 itself where the CPU computes it natively (its refusal where it does not).

One hardware condition, and only this one: bf16 output can be computed only on a CPU with native bf16
(AVX512_BF16 or AMX, as OpenVINO reports it), so ``test_bf16_audio_is_within_diffusers_bf16_distance`` runs
there and is skipped elsewhere; the refusal is tested on every CPU (where the CPU has bf16, the capability
query stands in for one without). Everything else runs everywhere.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openvino
import pytest

from audioldm_trt.benchmarks.quality import audio_distance, log_mel_distance_db, snr_db
from audioldm_trt.engine import BackendUnavailableError, Engine
from audioldm_trt.engine.backends import openvino as backend_module
from audioldm_trt.engine.backends.openvino import OpenVinoGraph, native_bf16, save_with_fp32_nodes
from audioldm_trt.engine.manifest import GRAPH_NAMES, Manifest

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference
from test_cli import run_cli

NATIVE_BF16 = native_bf16(openvino.Core())
#: Nodes of graphs ending in a waveform that the fp16 export keeps fp32, by OpenVINO op type (the timestep
#: embedding's Sin and Cos, the vocoder's last convolution and Tanh); the normalisations and softmax everywhere.
FP32_NODES = {"unet": {"Sin", "Cos"}, "vocoder": {"Convolution", "Tanh"}}
KEPT_FP32 = ("precise_0", "DisablePrecisionConversion_0")  # the attribute's runtime-info key before / since 2026


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Compiled models go to a cache of the test's own (also for the command line's subprocesses)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "audioldm-trt" / "openvino"


def _generation(model: ModelUnderTest) -> dict[str, Any]:
    """Two prompts with negative prompts, two waveforms each, guidance, an odd length: every path of the loop."""
    length = model.odd_audio_length()
    return {
        "prompt": ["a dog barking in the distance", "rain on a tin roof"],
        "negative_prompt": ["low quality", "static hiss"],
        "num_waveforms_per_prompt": 2,
        "audio_length_in_s": length,
        "num_inference_steps": 4,
        "latents": model.latents(4, length, seed=11),
    }


@pytest.fixture(scope="module")
def diffusers_audio() -> Callable[[ModelUnderTest], np.ndarray]:
    """diffusers' audio for ``_generation(model)``, computed once per model."""
    computed: dict[str, np.ndarray] = {}

    def audio(model: ModelUnderTest) -> np.ndarray:
        if model.name not in computed:
            computed[model.name] = model.diffusers_audio(**_generation(model))
        return computed[model.name]

    return audio


def test_fp32_gives_diffusers_audio(model: ModelUnderTest, diffusers_audio: Callable[..., np.ndarray]) -> None:
    engine = Engine.load(model.export, backend="openvino", precision="fp32")
    assert engine.backend.describe().startswith("openvino ") and "(CPU, fp32)" in engine.backend.describe()
    arguments = _generation(model)
    ours = engine.generate(**arguments)
    assert relative_difference(ours, diffusers_audio(model)) < AUDIO_TOLERANCE
    assert relative_difference(ours, model.engine.generate(**arguments)) < AUDIO_TOLERANCE


def test_threads_cap_openvino_and_concurrent_calls_equal_sequential_calls(tiny: ModelUnderTest) -> None:
    engine = Engine.load(tiny.export, backend="openvino", threads=1, verify=False)
    assert "1 threads" in engine.backend.describe()
    assert all(graph.compiled.get_property("INFERENCE_NUM_THREADS") == 1 for graph in engine._graphs.values())
    requests: list[dict[str, Any]] = [
        {"prompt": "a dog barking", "seed": 1, "num_inference_steps": 3},
        {"prompt": ["rain", "thunder"], "seed": 2, "num_inference_steps": 2, "audio_length_in_s": 0.5},
        {"prompt": "a bell", "seed": 3, "num_inference_steps": 2, "guidance_scale": 1.0},
    ]
    sequential = [engine.generate(**request) for request in requests]
    assert relative_difference(sequential[0], tiny.diffusers_audio(**requests[0])) < AUDIO_TOLERANCE
    with ThreadPoolExecutor(max_workers=3) as pool:
        concurrent = list(pool.map(lambda request: engine.generate(**request), requests * 2))
    for i, audio in enumerate(concurrent):
        np.testing.assert_array_equal(audio, sequential[i % len(requests)])


def test_a_second_load_imports_from_the_cache_and_a_changed_graph_compiles_anew(
    models: dict[str, ModelUnderTest], tmp_path: Path, cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    export = tmp_path / "export"
    shutil.copytree(models["tiny"].export, export)

    def load() -> tuple[Engine, int]:
        """The engine, and how many of its graphs were imported from the cache."""
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="audioldm_trt.engine.backends.openvino"):
            engine = Engine.load(export, backend="openvino", verify=False)
        return engine, caplog.text.count("imported from the cache")

    assert load()[1] == 0
    assert len(list(cache.glob("*/*.blob"))) == len(GRAPH_NAMES)
    assert load()[1] == len(GRAPH_NAMES)
    # The same path re-exported from another model: nothing of the old graphs may be served.
    shutil.rmtree(export)
    shutil.copytree(models["tiny-deep"].export, export)
    engine, imported = load()
    assert imported == 0
    arguments = {"prompt": "rain", "seed": 2, "num_inference_steps": 3}
    assert relative_difference(engine.generate(**arguments), models["tiny-deep"].engine.generate(**arguments)) < (
        AUDIO_TOLERANCE
    )


def test_bf16_graphs_mark_the_fp32_nodes_and_compute_the_same_in_fp32(
    model: ModelUnderTest, tmp_path: Path, diffusers_audio: Callable[..., np.ndarray]
) -> None:
    """The IR the bf16 precision compiles: the normalisations, softmax, the timestep embedding and the waveform
    output carry OpenVINO's attribute that keeps a node's precision, the rest does not; computed in fp32 (which
    every CPU can), the whole generation is still diffusers' audio."""
    core = openvino.Core()
    manifest = Manifest.load(model.export)
    engine = copy.copy(model.engine)
    engine._graphs = {}
    for name in GRAPH_NAMES:
        folder = tmp_path / name
        folder.mkdir()
        ir = save_with_fp32_nodes(core, model.export / manifest.graphs[name].file, folder)
        operations = core.read_model(str(ir)).get_ordered_ops()
        kept = [op.get_type_name() for op in operations if set(KEPT_FP32) & set(op.get_rt_info().keys())]
        types = {op.get_type_name() for op in operations}
        assert types & {"MVN", "Softmax"} | FP32_NODES.get(name, set()) <= set(kept), name
        # of the convolutions and matrix products, the bulk of the work, only the vocoder's last one
        assert sum(kind in ("Convolution", "MatMul") for kind in kept) == (name == "vocoder"), name
        # f32 said outright: on a CPU with native bf16, OpenVINO's CPU plugin computes bf16 unless told
        fp32 = core.compile_model(str(ir), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        engine._graphs[name] = OpenVinoGraph(name, fp32)
    assert relative_difference(engine.generate(**_generation(model)), diffusers_audio(model)) < AUDIO_TOLERANCE


def test_bf16_is_refused_without_native_bf16(tiny: ModelUnderTest, monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO computes fp32 under a bf16 hint on such a CPU: "bf16" would silently be fp32, so it is an
    error naming what OpenVINO reports, before any graph is compiled."""
    if NATIVE_BF16:  # stand in for a CPU without it (this one has it)
        monkeypatch.setattr(backend_module, "native_bf16", lambda core: False)
    with pytest.raises(BackendUnavailableError) as raised:
        Engine.load(tiny.export, backend="openvino", precision="bf16", verify=False)
    message = str(raised.value)
    assert "precision bf16 needs a CPU with native bf16 (AVX512_BF16 or AMX)" in message
    assert "FP32" in message and message.endswith("use precision fp32") and "\n" not in message


@pytest.mark.skipif(not NATIVE_BF16, reason="bf16 output needs a CPU with native bf16 (AVX512_BF16 or AMX)")
def test_bf16_audio_is_within_twice_diffusers_bf16_distance(model: ModelUnderTest) -> None:
    """bf16 audio against fp32 audio, on the same latents, measured against diffusers' own bf16 (torch.autocast)
    distance from diffusers fp32: within twice it by each measure (6 dB of SNR). Issue 12's bound is once it;
    on the full-size s model the engine's bf16 is 1.1-1.2x diffusers' distance (benchmarks/README.md), so the
    bench reports that bound, and this test holds the engine to a bf16-sized error."""
    import torch

    arguments = _generation(model)
    rate = model.engine.sampling_rate
    fp32 = model.engine.generate(**arguments)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model.diffusers_audio(**arguments)
    bound = audio_distance(autocast, model.diffusers_audio(**arguments), rate)
    engine = Engine.load(model.export, backend="openvino", precision="bf16", verify=False)
    assert engine.backend.describe().endswith("(CPU, bf16)")
    ours = audio_distance(engine.generate(**arguments), fp32, rate)
    print(f"{model.name} bf16: {ours}; diffusers bf16 autocast: {bound}")  # the figures, with -s
    assert ours["relative_max_difference"] <= 2 * bound["relative_max_difference"]
    assert ours["snr_db"] >= bound["snr_db"] - 6.0
    assert ours["log_mel_distance_db"] <= 2 * bound["log_mel_distance_db"]
    # A bound that means something: another prompt moves the audio twice as far as it allows, or more.
    other = model.engine.generate(**{**arguments, "prompt": ["applause", "a car engine"]})
    assert log_mel_distance_db(other, fp32, rate) > 4 * bound["log_mel_distance_db"]


def test_generate_command_line_takes_openvino_and_its_precision(tiny: ModelUnderTest, tmp_path: Path) -> None:
    output = tmp_path / "dog.wav"
    command = ["generate", "a dog", "--engine", str(tiny.export), "--output", str(output), "--steps", "2"]
    result = run_cli(*command, "--backend", "openvino", "--precision", "fp32", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "running on openvino" in result.stdout and output.is_file()
    refused = run_cli(*command, "--backend", "onnxruntime-cpu", "--precision", "bf16")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "precision bf16 needs backend openvino" in refused.stderr


def test_quality_measures_are_what_they_say() -> None:
    """SNR and log-mel distance on signals whose answers are known: identical audio, added noise of a known
    energy, and a gain (which shifts every mel bin by the same number of dB)."""
    rate = 16000
    rng = np.random.default_rng(0)
    reference = rng.standard_normal((2, rate)) * np.linspace(0.1, 1.0, rate)
    assert audio_distance(reference, reference, rate) == {
        "relative_max_difference": 0.0,
        "snr_db": float("inf"),
        "log_mel_distance_db": 0.0,
    }
    noise = rng.standard_normal(reference.shape)
    noise *= np.sqrt(np.sum(reference**2) / np.sum(noise**2)) / 100  # 1 % of the amplitude: 40 dB
    assert snr_db(reference + noise, reference) == pytest.approx(40.0)
    assert log_mel_distance_db(2 * reference, reference, rate) == pytest.approx(20 * np.log10(2))
    assert 0 < log_mel_distance_db(reference + noise, reference, rate) < 1.0


def test_bench_reports_the_distance_of_reduced_precision_to_fp32(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """A one-run bench with the bf16 contenders: diffusers bf16 autocast and OpenVINO bf16 get their distance to
    diffusers fp32's audio; OpenVINO fp32 is at parity. Where the CPU has no native bf16, OpenVINO bf16 is
    skipped with the reason in the report's notes."""
    output = tmp_path / "report"
    arguments = ["--model", str(tiny.checkpoint), "--engine", str(tiny.export), "--output", str(output), "--quiet"]
    arguments += ["--steps", "2", "--runs", "1", "--warmup", "0", "--duration", "0.5", "--diffusers-bf16"]
    result = run_cli("bench", *arguments, "--backends", "openvino-fp32", "openvino-bf16")
    assert result.returncode == 0, result.stderr
    record = json.loads((output / "bench.json").read_text())
    rows = {row["name"]: row for row in record["contenders"]}
    names = ["diffusers cpu", "diffusers cpu bf16 autocast", "audioldm-trt openvino-fp32"]
    assert list(rows) == names + (["audioldm-trt openvino-bf16"] if NATIVE_BF16 else [])
    assert rows["audioldm-trt openvino-fp32"]["parity"] < AUDIO_TOLERANCE
    assert rows["audioldm-trt openvino-fp32"]["quality"] is None and rows["diffusers cpu"]["quality"] is None
    autocast = rows["diffusers cpu bf16 autocast"]
    assert autocast["precision"] == "bf16" and autocast["speedup"] > 0
    assert 0 < autocast["quality"]["relative_max_difference"] < 1 and autocast["quality"]["snr_db"] > 0
    assert autocast["quality"]["log_mel_distance_db"] > 0
    if NATIVE_BF16:
        assert isinstance(rows["audioldm-trt openvino-bf16"]["within_diffusers_bf16"], bool)
    else:
        assert any("openvino-bf16 skipped: precision bf16 needs a CPU" in note for note in record["notes"])
    assert "Quality against the fp32 audio" in (output / "bench.md").read_text()
