"""Everything about the TensorRT path that needs no GPU: profile arithmetic against what the pipeline really
feeds, engine records and their checks, backend selection, the ONNX lint, ``audioldm-trt build`` errors, and
mypy over the GPU code against tensorrt-stubs."""

from __future__ import annotations

import ast
import dataclasses
import gc
import importlib.util
import itertools
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest

from audioldm_trt.engine import BackendUnavailableError, Engine, EngineDirectoryError, EngineError
from audioldm_trt.engine.backends import Graph, choose_backend, create_backend
from audioldm_trt.engine.backends.base import Chain, Link
from audioldm_trt.engine.backends.cuda import GPU_EXTRAS, CudaError, Device, current_device
from audioldm_trt.engine.backends.onnxruntime import CPU, CUDA, OnnxRuntimeBackend
from audioldm_trt.engine.backends.profiles import BuildRanges, OutOfProfileError, Range
from audioldm_trt.engine.backends.tensorrt import (
    EngineRecord,
    TensorRTBackend,
    check_record,
    engine_paths,
    require_tensorrt,
)
from audioldm_trt.engine.manifest import GRAPH_NAMES, Manifest, file_record
from audioldm_trt.export.lint import SUPPORT_FILE, SupportedSet, graph_usage, lint_export, lint_model
from audioldm_trt.export.tensorrt import BuildError, build_engines, parse_size

from conftest import ModelUnderTest
from gpu_standin import StandInCuda, StandInTensorRT, install
from test_cli import CLI, run_cli

REPOSITORY = Path(__file__).resolve().parent.parent
TEST_DEVICE = Device("NVIDIA Test GPU", "9.0")
TEST_TENSORRT = "10.13.0.35"


def test_range_parsing() -> None:
    assert Range.parse("1:2:4", int) == Range(1, 2, 4)
    assert Range.parse("3", int) == Range(3, 3, 3)
    assert Range.parse("0.5:1:2.5", float) == Range(0.5, 1.0, 2.5)
    assert str(Range(0.5, 1.0, 2.5)) == "0.5:1:2.5"
    for text, kind in [("1:2", int), ("4:2:1", int), ("0:1:2", int), ("a:b:c", int), ("1.5:2:3", int)]:
        with pytest.raises(ValueError):
            Range.parse(text, kind)
    with pytest.raises(ValueError):
        Range.parse("nan:1:2", float)


def test_parse_size() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("512m") == 512 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("1000") == 1000
    for bad in ("", "four", "-1G", "0"):
        with pytest.raises(ValueError):
            parse_size(bad)


class _Recorder(Graph):
    """Passes calls through and records the shape of every input."""

    def __init__(self, inner: Graph, seen: dict[str, list[tuple[int, ...]]]) -> None:
        super().__init__(inner.name)
        self.inner, self.seen = inner, seen

    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        for name, array in feeds.items():
            self.seen.setdefault(f"{self.name}.{name}", []).append(array.shape)
        return self.inner.run(feeds, reuse)


def test_profiles_cover_exactly_what_the_pipeline_feeds(model: ModelUnderTest) -> None:
    """The shapes each graph sees in real generations lie inside the profiles, and reach their ends."""
    engine = Engine.load(model.export, backend="onnxruntime-cpu")
    spec = engine.manifest.model
    seen: dict[str, list[tuple[int, ...]]] = {}
    engine._graphs = {name: _Recorder(graph, seen) for name, graph in engine._graphs.items()}
    short, long = spec.min_audio_length_in_s, model.odd_audio_length()
    engine.generate(["a", "b"], negative_prompt=["x", "y"], num_waveforms_per_prompt=2, audio_length_in_s=long)
    engine.generate("rain " * 600, guidance_scale=1.0, audio_length_in_s=short, num_inference_steps=2)
    engine.generate(["a", "b", "c"], audio_length_in_s=long, num_inference_steps=2)

    ranges = BuildRanges(Range(1, 1, 4), Range(short, short, long))
    shapes = ranges.input_shapes(engine.manifest)
    for key, fed in seen.items():
        graph, name = key.split(".")
        low, _, high = shapes[graph][name]
        for shape in fed:
            assert all(a <= b <= c for a, b, c in zip(low, shape, high, strict=True)), (key, low, shape, high)
    heights = ranges.latent_heights(spec)
    assert max(s[0] for s in seen["unet.sample"]) == shapes["unet"]["sample"][2][0] == 8  # 4 waveforms, guided
    assert min(s[0] for s in seen["unet.sample"]) == 1  # 1 waveform, unguided
    assert {s[2] for s in seen["unet.sample"]} == {heights.min, heights.max}
    assert max(s[1] for s in seen["vocoder.mel"]) == heights.max * spec.vae_scale_factor
    assert max(s[0] for s in seen["text_encoder.input_ids"]) == 4  # 2 prompts + 2 negative prompts
    assert max(s[1] for s in seen["text_encoder.input_ids"]) == spec.tokenizer_max_length  # truncated at 512
    ranges.check(spec, 4, heights.max, model.export)
    ranges.check(spec, 1, heights.min, model.export)


def test_out_of_profile_says_what_to_rebuild(tiny: ModelUnderTest) -> None:
    spec = tiny.engine.manifest.model
    ranges = BuildRanges(Range(1, 1, 4), Range(0.5, 1.0, 2.0))
    for waveforms, rows in [(6, ranges.latent_heights(spec).max), (2, spec.latent_height(3.0)), (1, 1)]:
        with pytest.raises(OutOfProfileError) as caught:
            ranges.check(spec, waveforms, rows, Path("engines/tiny"))
        message = str(caught.value)
        assert "were built for 1-4 waveforms of 0.5-2 s" in message and f"needs {waveforms} of {rows} rows" in message
        match = re.fullmatch(
            r".*: rebuild with audioldm-trt build engines/tiny --batch (\S+) --duration (\S+)", message
        )
        assert match, message
        batch, duration = match.groups()
        BuildRanges(Range.parse(batch, int), Range.parse(duration, float)).check(spec, waveforms, rows, Path("x"))
    assert issubclass(OutOfProfileError, ValueError)  # a request the engines cannot take, like other bad arguments


@pytest.fixture
def export_copy(tiny: ModelUnderTest, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny.export, tmp_path / "export"))


def _write_engines(directory: Path, manifest: Manifest, device: Device = TEST_DEVICE) -> None:
    """Fake engines and their records, as ``audioldm-trt build`` would write them on ``device``."""
    ranges = BuildRanges.default(manifest.model)
    shapes = ranges.input_shapes(manifest)
    (directory / "tensorrt").mkdir(exist_ok=True)
    for graph in GRAPH_NAMES:
        engine, record = engine_paths(directory, graph)
        engine.write_bytes(b"plan" * 10)
        EngineRecord(
            graph=graph,
            onnx_sha256=manifest.graph_sha256(graph),
            tensorrt=TEST_TENSORRT,
            gpu=device.name,
            compute_capability=device.compute_capability,
            ranges=ranges.to_json(),
            profile={n: [list(s) for s in ends] for n, ends in shapes[graph].items()},
            engine_bytes=40,
        ).write(record)


def test_engine_records_refuse_another_graph_tensorrt_or_architecture(export_copy: Path) -> None:
    manifest = Manifest.load(export_copy)
    _write_engines(export_copy, manifest)
    record = EngineRecord.read(engine_paths(export_copy, "unet")[1])
    check_record(record, export_copy, manifest, TEST_TENSORRT, TEST_DEVICE)
    # Another GPU of the same architecture runs the engines: they depend on the compute capability, not the name.
    check_record(record, export_copy, manifest, TEST_TENSORRT, Device("NVIDIA H200", "9.0"))
    rebuild = f"rebuild with audioldm-trt build {export_copy} --batch 1:1:4 --duration"
    cases = {
        "another unet.onnx": (dataclasses.replace(record, onnx_sha256="0" * 64), TEST_TENSORRT, TEST_DEVICE),
        "built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106": (record, "11.4.0.106", TEST_DEVICE),
        "built for compute capability 9.0 (NVIDIA Test GPU), this is NVIDIA A10G (compute capability 8.6)": (
            record,
            TEST_TENSORRT,
            Device("NVIDIA A10G", "8.6"),
        ),
    }
    for needle, (candidate, version, device) in cases.items():
        with pytest.raises(EngineDirectoryError) as caught:
            check_record(candidate, export_copy, manifest, version, device)
        assert needle in str(caught.value) and rebuild in str(caught.value)
    engine_paths(export_copy, "unet")[0].write_bytes(b"truncated")
    with pytest.raises(EngineDirectoryError, match="not the size its record says"):
        check_record(record, export_copy, manifest, TEST_TENSORRT, TEST_DEVICE)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine with TensorRT and a GPU, as far as the engine checks can tell; ONNX Runtime without CUDA."""
    monkeypatch.setattr("audioldm_trt.engine.backends.tensorrt.require_tensorrt", lambda: TEST_TENSORRT)
    monkeypatch.setattr("audioldm_trt.engine.backends.cuda.current_device", lambda: TEST_DEVICE)
    monkeypatch.setattr("audioldm_trt.engine.backends.available_providers", lambda: [CPU])


@pytest.mark.usefixtures("fake_gpu")
def test_auto_picks_tensorrt_only_where_its_engines_can_run(export_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = Manifest.load(export_copy)
    name, reason = choose_backend(export_copy, manifest)
    assert name == "onnxruntime-cpu" and "no TensorRT engines in" in reason and CUDA in reason
    _write_engines(export_copy, manifest)
    assert choose_backend(export_copy, manifest)[0] == "tensorrt"
    engine_paths(export_copy, "vocoder")[1].unlink()
    name, reason = choose_backend(export_copy, manifest)
    assert name == "onnxruntime-cpu" and "has no vocoder engine" in reason
    _write_engines(export_copy, manifest, Device("NVIDIA A10G", "8.6"))
    name, reason = choose_backend(export_copy, manifest)
    assert name == "onnxruntime-cpu" and "built for compute capability 8.6 (NVIDIA A10G)" in reason
    monkeypatch.setattr("audioldm_trt.engine.backends.available_providers", lambda: [CUDA, CPU])
    assert choose_backend(export_copy, manifest)[0] == "onnxruntime-cuda"


@pytest.mark.usefixtures("fake_gpu")
def test_auto_says_which_backend_it_picked(export_copy: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="audioldm_trt"):
        backend = create_backend("auto", export_copy, Manifest.load(export_copy))
    assert isinstance(backend, OnnxRuntimeBackend) and backend.providers == [CPU]
    assert "backend auto: onnxruntime-cpu (not TensorRT: no TensorRT engines in" in caplog.text


def test_tensorrt_backend_here_is_a_one_line_error(tiny: ModelUnderTest) -> None:
    """Without TensorRT, without a GPU, or without engines: BackendUnavailableError saying which."""
    with pytest.raises(BackendUnavailableError) as caught:
        Engine.load(tiny.export, backend="tensorrt")
    message = str(caught.value)
    assert "\n" not in message
    assert any(n in message for n in ("TensorRT is not installed", "no usable CUDA GPU", "no TensorRT engines"))


def _assert_one_line_error(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert needle in lines[0], lines[0]


def test_build_without_a_gpu_fails_with_one_line(tiny: ModelUnderTest) -> None:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no GPU, on any machine
    result = subprocess.run([CLI, "build", str(tiny.export)], capture_output=True, text=True, env=env, timeout=300)
    _assert_one_line_error(result, "audioldm-trt: error: cannot build TensorRT engines here: ")
    assert not (tiny.export / "tensorrt").exists()


def test_build_refuses_an_export_tensorrt_cannot_import(export_copy: Path) -> None:
    path = export_copy / "unet.onnx"
    model = onnx.load(str(path))
    next(node for node in model.graph.node if node.op_type == "MatMul").op_type = "Det"
    onnx.save(model, str(path))
    manifest = Manifest.load(export_copy)
    manifest.files["unet.onnx"] = file_record(path)
    manifest.save(export_copy)
    result = run_cli("build", str(export_copy))
    _assert_one_line_error(result, "TensorRT's ONNX parser cannot import")
    assert "unet: operator Det is not supported" in result.stderr


def test_build_rejects_bad_ranges(tiny: ModelUnderTest) -> None:
    for flags, needle in [(["--batch", "4:2:1"], "MIN <= OPT <= MAX"), (["--duration", "0.001:1:2"], "--duration")]:
        result = run_cli("build", str(tiny.export), *flags)
        assert result.returncode == 2 and needle in result.stderr, result.stderr


def test_exported_graphs_use_only_what_tensorrt_imports(
    models: dict[str, ModelUnderTest], fp16_exports: dict[str, Path]
) -> None:
    exports = [m.export for m in models.values()] + list(fp16_exports.values())
    for export in exports:
        manifest = Manifest.load(export)
        assert "vae_encoder" in manifest.graph_names
        assert lint_export(export, manifest) == {graph: [] for graph in manifest.graph_names}, export
    usage = graph_usage(onnx.load(str(fp16_exports["tiny"] / "unet.onnx")))
    assert usage.opsets["ai.onnx"] == 17
    assert {"FLOAT", "FLOAT16", "INT64"} <= set(usage.tensor_types.values())
    assert usage.operators[("ai.onnx", "Conv")] == {"FLOAT16"}
    assert usage.operators[("ai.onnx", "InstanceNormalization")] == {"FLOAT"}


def test_lint_reports_what_tensorrt_lacks(tiny: ModelUnderTest) -> None:
    model = onnx.load(str(tiny.export / "unet.onnx"))
    model.opset_import[0].version = 22
    model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    matmul = next(node for node in model.graph.node if node.op_type == "MatMul")
    matmul.op_type = "MatMulInteger"
    next(node for node in model.graph.node if node.op_type == "Conv").domain = "com.microsoft"
    next(node for node in model.graph.node if node.op_type == "Sin").op_type = "Det"
    problems = lint_model(model, SupportedSet.load())
    assert problems == [
        "opset 22 is outside the 9-20 that TensorRT 10 and 11 both import",
        "operator Det is not supported",
        "operator MatMulInteger is not supported",
        "operator com.microsoft.Conv is not a standard ONNX operator",
    ]


def test_supported_set_names_its_sources() -> None:
    data = json.loads(SUPPORT_FILE.read_text(encoding="utf-8"))
    assert [s["tensorrt"] for s in data["sources"]] == ["10.0", "11.1"]
    for source in data["sources"]:
        assert re.fullmatch(r"https://github.com/onnx/onnx-tensorrt/blob/[0-9a-f]{40}/docs/operators.md", source["url"])
    supported = SupportedSet.load()
    assert supported.operators["Conv"] == {"FLOAT", "FLOAT16", "BFLOAT16"}
    assert "INT32" in supported.operators["CumSum"]  # a documented correction
    assert "NonMaxSuppression" in supported.operators and "Det" not in supported.operators


#: Type-checked with mypy --strict: the whole runtime (its GPU code against tensorrt-stubs and cuda-python, which
#: ships no types) and the export code that drives TensorRT.
TYPED_TARGETS = ("-p", "audioldm_trt.engine", "-m", "audioldm_trt.export.tensorrt", "-m", "audioldm_trt.export.lint")


def test_runtime_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    """mypy --strict over the runtime with tensorrt-stubs; a deliberate misuse proves the stubs are in use."""
    stubs = _readable_tensorrt_stubs(tmp_path / "stubs")
    tree = tmp_path / "tree" / "audioldm_trt"
    tree.mkdir(parents=True)
    for package in ("engine", "export"):
        (tree / package).symlink_to(REPOSITORY / package)
    probe = tmp_path / "tree" / "probe.py"
    probe.write_text("import tensorrt as trt\n\nversion: int = trt.__version__\n")
    command = [sys.executable, "-m", "mypy", "--config-file", str(REPOSITORY / "pyproject.toml")]
    command += ["--cache-dir", str(tmp_path / "cache"), "--follow-imports=silent", "--explicit-package-bases"]
    env = {**os.environ, "MYPYPATH": os.pathsep.join([str(stubs), str(tmp_path / "tree")])}
    checked = subprocess.run([*command, *TYPED_TARGETS], capture_output=True, text=True, env=env, cwd=tmp_path / "tree")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    probed = subprocess.run([*command, "probe.py"], capture_output=True, text=True, env=env, cwd=tmp_path / "tree")
    assert 'expression has type "str", variable has type "int"' in probed.stdout, probed.stdout


def _readable_tensorrt_stubs(target: Path) -> Path:
    """tensorrt-stubs (10.13.0.35.1) as mypy can read them: the package's .pyi files, with the few lines its
    generator got wrong (a parameter named ``in``, a parameter without default after defaulted ones) fixed."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    assert spec is not None and spec.submodule_search_locations, "tensorrt-stubs is not installed"
    site = Path(next(iter(spec.submodule_search_locations))).parent
    for package in ("tensorrt", "tensorrt_bindings"):
        for stub in (site / package).glob("*.pyi"):
            text = "\n".join(_repaired(line) for line in stub.read_text(encoding="utf-8").split("\n"))
            ast.parse(text)
            (target / package).mkdir(parents=True, exist_ok=True)
            (target / package / stub.name).write_text(text, encoding="utf-8")
    return target


def _repaired(line: str) -> str:
    match = re.fullmatch(r"(\s*def \w+\()(.*)(\)\s*->.*)", line)
    if not match:
        return line
    depth, start, parameters = 0, 0, []
    for i, char in enumerate(match.group(2)):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parameters.append(match.group(2)[start:i])
            start = i + 1
    parameters.append(match.group(2)[start:])
    defaulted = False
    for i, parameter in enumerate(parameters):
        parameter = re.sub(r"^(\s*)in(?=\s*:)", r"\1in_", parameter)
        defaulted = defaulted or "=" in parameter
        if defaulted and "=" not in parameter and ":" in parameter and "*" not in parameter:
            parameter += " = ..."
        parameters[i] = parameter
    return match.group(1) + ",".join(parameters) + match.group(3)


# -- The backend on a stand-in for TensorRT and cuda-python (tests/gpu_standin.py) ----------------------------------


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StandInTensorRT, StandInCuda]]:
    trt, cuda = install(monkeypatch)
    yield trt, cuda
    for session in trt.sessions:  # those a failed test left open, while the stand-in is still in place
        alive = session()
        if alive is not None:
            alive.close()


@pytest.fixture
def built(standin: tuple[StandInTensorRT, StandInCuda], export_copy: Path) -> Path:
    """The tiny export with engines built by the stand-in TensorRT for the default ranges."""
    build_engines(export_copy, progress=False)
    return export_copy


def _backend(directory: Path, **options: Any) -> tuple[TensorRTBackend, dict[str, Graph]]:
    manifest = Manifest.load(directory)
    backend = TensorRTBackend(directory, manifest, **options)
    return backend, {graph: backend.load(directory, manifest, graph) for graph in GRAPH_NAMES}


def _unet_feeds(directory: Path, batch: int, seconds: float, seed: int) -> dict[str, np.ndarray]:
    model = Manifest.load(directory).model
    generator = np.random.default_rng(seed)
    shape = (batch, model.latent_channels, model.latent_height(seconds), model.latent_width)
    return {
        "sample": generator.standard_normal(shape, dtype=np.float32),
        "timestep": np.full(batch, 501.0, np.float32),
        "class_labels": generator.standard_normal((batch, model.embedding_dim), dtype=np.float32),
    }


def _events(cuda: StandInCuda, *names: str) -> list[tuple[Any, ...]]:
    return [event for event in cuda.events if event[0] in names]


def test_build_sets_profiles_for_the_networks_inputs(
    standin: tuple[StandInTensorRT, StandInCuda], export_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    trt, _ = standin
    manifest = Manifest.load(export_copy)
    written = build_engines(export_copy, requests=3, progress=False)
    assert [path.name for path in written] == [f"{graph}.engine" for graph in (*GRAPH_NAMES, "vae_encoder")]
    profiles = dict(trt.profiles)
    assert {graph: set(shapes) for graph, shapes in profiles.items()} == {
        graph: set(manifest.graphs[graph].inputs) for graph in manifest.graph_names
    }
    # The VAE encoder takes one input clip per call, as long as the decoder's spectrograms.
    assert [shape[0] for shape in profiles["vae_encoder"]["mel"]] == [1, 1, 1]
    assert [shape[2] for shape in profiles["vae_encoder"]["mel"]] == [shape[1] for shape in profiles["vocoder"]["mel"]]
    # A server batching 3 generations of up to 4 waveforms: 24 UNet rows (guidance doubles them), 12 decoded.
    assert profiles["unet"]["sample"][2][0] == profiles["text_encoder"]["input_ids"][2][0] == 2 * 4 * 3
    assert profiles["vae_decoder"]["latents"][2][0] == profiles["vocoder"]["mel"][2][0] == 4 * 3
    assert profiles["unet"]["sample"][0][0] == 1
    record = EngineRecord.read(engine_paths(export_copy, "unet")[1])
    assert record.ranges["requests"] == 3
    assert TensorRTBackend(export_copy, manifest).max_rows("unet") == 24

    # An input the ONNX parser drops (nothing uses it) gets no profile, and its feed is ignored at run time.
    trt.knobs.dropped_inputs["text_encoder"] = {"attention_mask"}
    trt.profiles.clear()
    with caplog.at_level(logging.WARNING, logger="audioldm_trt"):
        build_engines(export_copy, force=True, progress=False)
    assert set(dict(trt.profiles)["text_encoder"]) == {"input_ids"}
    assert "dropped input attention_mask" in caplog.text
    backend, graphs = _backend(export_copy)
    assert graphs["text_encoder"]._check_feeds(
        {"input_ids": np.ones((1, 3), np.int64), "attention_mask": np.ones((1, 3), np.int64)}
    ).keys() == {"input_ids"}
    backend.close()

    # A network whose types are not the manifest's is refused before anything is built.
    trt.knobs.dtypes[("unet", "timestep")] = "INT64"
    with pytest.raises(BuildError, match="has timestep as int64, the manifest as float32"):
        build_engines(export_copy, force=True, progress=False)


def test_engines_are_checked_against_the_manifest_at_load(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path
) -> None:
    trt, _ = standin
    cases = [
        ("dtypes", {("unet", "timestep"): "HALF"}, "the unet engine's timestep is float16, the manifest's is float32"),
        ("host_tensors", {("vocoder", "waveform")}, "vocoder tensor waveform lives in host memory"),
        ("dynamic_outputs", {("vocoder", "waveform")}, "its size depends on the data"),
        ("no_context", {"vae_decoder"}, r"could not create an execution context for vae_decoder \(0 MiB asked, \d+"),
    ]
    for knob, value, message in cases:
        original = getattr(trt.knobs, knob)
        setattr(trt.knobs, knob, value)
        with pytest.raises(EngineError, match=message):
            _backend(built)
        setattr(trt.knobs, knob, original)
    backend, graphs = _backend(built)
    feeds = _unet_feeds(built, 1, 1.0, seed=0)
    with pytest.raises(ValueError, match="unet input timestep must be float32, got float64"):
        graphs["unet"].run({**feeds, "timestep": feeds["timestep"].astype(np.float64)})
    with pytest.raises(ValueError, match="unet has no input 'mask'"):
        graphs["unet"].run({**feeds, "mask": feeds["timestep"]})
    with pytest.raises(OutOfProfileError, match="outside the engine's profile"):
        graphs["unet"].run(_unet_feeds(built, 9, 1.0, seed=0))
    backend.close()


def test_buffers_are_sized_for_the_profiles_largest_shapes(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path
) -> None:
    _, cuda = standin
    manifest = Manifest.load(built)
    model = manifest.model
    shapes = BuildRanges.default(model).input_shapes(manifest)
    backend, graphs = _backend(built)
    allocated = {event[1]: event[2] for event in _events(cuda, "cudaMalloc")}
    for graph, loaded in graphs.items():
        objects = loaded._objects  # type: ignore[attr-defined]
        for name, (_, _, high) in shapes[graph].items():
            itemsize = np.dtype(manifest.graphs[graph].inputs[name].dtype).itemsize
            assert allocated[objects.device[name].pointer] == int(np.prod(high)) * itemsize, (graph, name)
    largest_mel = np.zeros(shapes["vocoder"]["mel"][2], np.float32)
    (largest,) = _onnx_outputs(built, "vocoder", {"mel": largest_mel})
    waveform = graphs["vocoder"]._objects.device["waveform"]  # type: ignore[attr-defined]
    assert allocated[waveform.pointer] == largest.nbytes
    assert largest.shape[1] >= largest_mel.shape[1] * model.hop_length
    backend.close()


def test_every_context_shares_one_scratch_allocation(standin: tuple[StandInTensorRT, StandInCuda], built: Path) -> None:
    trt, cuda = standin
    trt.knobs.scratch = {"text_encoder": 1000, "unet": 5000, "vae_decoder": 3000, "vocoder": 2000}
    engine = Engine.load(built, backend="tensorrt")
    engine.generate("rain", num_inference_steps=2, seed=0)
    scratch = [event for event in _events(cuda, "cudaMalloc") if event[2] == 5000]
    assert len(scratch) == 1
    assert {event[2] for event in _events(cuda, "set_device_memory")} == {scratch[0][1]}
    assert {event[1] for event in _events(cuda, "set_device_memory")} == set(GRAPH_NAMES)
    engine.backend.close()


def _onnx_outputs(directory: Path, graph: str, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(directory / f"{graph}.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def test_each_unet_shape_keeps_its_own_context_and_cuda_graph(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A, B, A: the second A replays A's graph (captured after one plain run of A's own context), whatever B did
    in between; a third shape beyond the bound drops the least recently used one."""
    _, cuda = standin
    backend, graphs = _backend(built, cuda_graph_shapes=3)  # the largest shapes' context takes one place
    unet = graphs["unet"]
    shape_a, shape_b, shape_c, shape_d = (2, 1.0), (4, 0.5), (1, 2.0), (3, 1.0)
    with caplog.at_level(logging.WARNING, logger="audioldm_trt"):
        # C pushes out the largest shapes' context (used at load only), D then B (least recently used).
        for step, (batch, seconds) in enumerate([shape_a, shape_b, shape_a, shape_a, shape_c, shape_d]):
            feeds = _unet_feeds(built, batch, seconds, seed=step)
            contexts = len(_events(cuda, "context"))
            launches = len(_events(cuda, "cudaGraphLaunch"))
            (noise,) = unet.run(feeds).values()
            (expected,) = _onnx_outputs(built, "unet", feeds)
            np.testing.assert_allclose(noise, expected, rtol=1e-6, atol=1e-6)
            replayed = step in (2, 3)
            assert len(_events(cuda, "context")) == contexts + (not replayed), step
            assert len(_events(cuda, "cudaGraphLaunch")) == launches + replayed, step
    assert "without a CUDA graph" not in caplog.text  # every capture followed a plain run of its context
    batches = [key[0][0] for key in unet.captured_shapes]  # type: ignore[attr-defined]
    assert batches == [2, 1, 3]  # B went (least recently used), its graph and context freed
    assert len(_events(cuda, "cudaGraphExecDestroy")) == 1
    assert len([e for e in _events(cuda, "del context") if e[1] == "unet"]) == 2  # B's, and the largest shapes'
    backend.close()


def test_class_labels_stay_on_the_device_while_unchanged(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path
) -> None:
    _, cuda = standin
    backend, graphs = _backend(built)
    unet = graphs["unet"]
    labels = unet._objects.device["class_labels"].pointer  # type: ignore[attr-defined]
    feeds = _unet_feeds(built, 4, 1.0, seed=0)
    uploads = []
    for step in range(4):
        if step == 2:  # a request joins the batch: one row of class labels changes, same shape
            feeds["class_labels"] = feeds["class_labels"].copy()
            feeds["class_labels"][3] += 1
        feeds["sample"] = _unet_feeds(built, 4, 1.0, seed=step + 1)["sample"]
        before = len(cuda.copies)
        (noise,) = unet.run(feeds, reuse=("class_labels",)).values()
        np.testing.assert_allclose(noise, _onnx_outputs(built, "unet", feeds)[0], rtol=1e-6, atol=1e-6)
        copies = cuda.copies[before:]
        uploads.append(sum(1 for c in copies if c[0] == "H2D" and c[1] == labels))
        # One upload of the latents, one download of the noise, per step.
        assert [c[0] for c in copies].count("D2H") == 1
        assert sum(1 for c in copies if c[0] == "H2D" and c[1] != labels) == 2  # sample and timestep
    assert uploads == [1, 0, 1, 0]
    backend.close()


def test_the_mel_goes_from_the_vae_to_the_vocoder_on_the_device(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path
) -> None:
    _, cuda = standin
    backend, graphs = _backend(built)
    decoder = backend.chain(graphs["vae_decoder"], graphs["vocoder"], Link("mel", "mel", squeeze=1))
    model = Manifest.load(built).model
    latents = np.random.default_rng(0).standard_normal(
        (3, model.latent_channels, model.latent_height(1.0), model.latent_width), dtype=np.float32
    )
    before = len(cuda.copies)
    (waveform,) = decoder.run({"latents": latents}).values()
    copies = cuda.copies[before:]
    (mel,) = _onnx_outputs(built, "vae_decoder", {"latents": latents})
    (expected,) = _onnx_outputs(built, "vocoder", {"mel": mel[:, 0]})
    np.testing.assert_allclose(waveform, expected, rtol=1e-5, atol=1e-6)
    vae_mel = graphs["vae_decoder"]._objects.device["mel"].pointer  # type: ignore[attr-defined]
    vocoder_mel = graphs["vocoder"]._objects.device["mel"].pointer  # type: ignore[attr-defined]
    assert [c[0] for c in copies] == ["H2D", "D2D", "D2H"]
    assert copies[1][1:] == (vocoder_mel, vae_mel, mel.nbytes)
    host_chain = Chain(graphs["vae_decoder"], graphs["vocoder"], Link("mel", "mel", squeeze=1))
    np.testing.assert_array_equal(host_chain.run({"latents": latents})["waveform"], waveform)
    backend.close()


def _assert_teardown_order(cuda: StandInCuda, since: int) -> None:
    """CUDA graphs, then contexts, engines, the runtime, then device and pinned memory, and last the stream."""
    events = [event[0] for event in cuda.events[since:]]
    order = ["cudaGraphExecDestroy", "del context", "del engine", "del Runtime", "cudaFree", "cudaStreamDestroy"]
    present = [kind for kind in order if kind in events]
    assert present == order, events
    for earlier, later in itertools.pairwise(order):
        last = max(i for i, kind in enumerate(events) if kind == earlier)
        first = min(i for i, kind in enumerate(events) if kind == later)
        assert last < first, (earlier, later, events)
    assert events.count("cudaFreeHost") == events.count("cudaFree") - 1  # every I/O tensor's pair; the scratch
    assert events.index("cudaStreamSynchronize") < events.index("cudaGraphExecDestroy")


def test_close_frees_everything_in_one_order(standin: tuple[StandInTensorRT, StandInCuda], built: Path) -> None:
    _, cuda = standin
    backend, graphs = _backend(built)
    graphs["unet"].run(_unet_feeds(built, 2, 1.0, seed=0))
    since = len(cuda.events)
    backend.close()
    _assert_teardown_order(cuda, since)
    assert len(_events(cuda, "del engine")) == 4
    with pytest.raises(EngineError, match="the TensorRT engines were closed"):
        graphs["unet"].run(_unet_feeds(built, 2, 1.0, seed=0))
    events = len(cuda.events)
    backend.close()  # again: nothing more to do
    assert len(cuda.events) == events


def test_graphs_outlive_the_backend_and_free_it_last(standin: tuple[StandInTensorRT, StandInCuda], built: Path) -> None:
    _, cuda = standin
    backend, graphs = _backend(built)
    unet = graphs.pop("unet")
    del backend, graphs
    gc.collect()
    assert not _events(cuda, "cudaStreamDestroy", "del Runtime")  # the stream and runtime live on with the UNet
    feeds = _unet_feeds(built, 2, 1.0, seed=0)
    for _ in range(2):  # a plain run and capture, then a replay
        np.testing.assert_allclose(unet.run(feeds)["noise_pred"], _onnx_outputs(built, "unet", feeds)[0], atol=1e-6)
    since = len(cuda.events)
    del unet
    gc.collect()
    _assert_teardown_order(cuda, since)


def test_two_backends_run_side_by_side_and_close_apart(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path
) -> None:
    _, cuda = standin
    first, first_graphs = _backend(built)
    second, second_graphs = _backend(built)
    feeds = _unet_feeds(built, 2, 1.0, seed=0)
    expected = _onnx_outputs(built, "unet", feeds)[0]
    for graphs in (first_graphs, second_graphs, first_graphs, second_graphs):
        np.testing.assert_allclose(graphs["unet"].run(feeds)["noise_pred"], expected, atol=1e-6)
    assert len(_events(cuda, "cudaStreamCreate")) == 2
    first.close()
    np.testing.assert_allclose(second_graphs["unet"].run(feeds)["noise_pred"], expected, atol=1e-6)
    with pytest.raises(EngineError, match="closed"):
        first_graphs["unet"].run(feeds)
    second.close()


def test_short_memory_names_what_was_asked(standin: tuple[StandInTensorRT, StandInCuda], built: Path) -> None:
    trt, _ = standin
    trt.knobs.scratch = {"unet": 3 << 30}
    backend, graphs = _backend(built)
    with pytest.raises(CudaError, match=r"could not allocate the TensorRT engines' scratch memory \(3072 MiB asked"):
        graphs["unet"].run(_unet_feeds(built, 2, 1.0, seed=0))
    backend.close()


def test_cuda_major_mismatches_are_named(standin: tuple[StandInTensorRT, StandInCuda], monkeypatch: Any) -> None:
    _, cuda = standin
    monkeypatch.setattr("audioldm_trt.engine.backends.tensorrt.tensorrt_cuda_major", lambda: 12)
    with pytest.raises(BackendUnavailableError) as caught:
        require_tensorrt()
    assert str(caught.value) == (
        "TensorRT here is built for CUDA 12 but cuda-python for CUDA 13: install one matching set,"
        " pip install 'audioldm-trt[gpu-cu12]' (or pip install 'audioldm-trt[gpu]')"
    )
    monkeypatch.setattr(cuda, "cudaGetDeviceCount", lambda: (cuda.cudaError_t.cudaErrorInsufficientDriver, None))
    monkeypatch.setattr(cuda, "cudaDriverGetVersion", lambda: (cuda.cudaError_t.cudaSuccess, 12080))
    with pytest.raises(BackendUnavailableError) as caught:
        current_device()
    assert str(caught.value) == (
        "no usable CUDA GPU: the NVIDIA driver supports CUDA 12.x, but cuda-python here is built for CUDA 13:"
        " install the CUDA 12 stack (pip install 'audioldm-trt[gpu-cu12]') or a newer driver"
    )


def test_gpu_extras_pin_one_cuda_major_each() -> None:
    extras = dict(re.findall(r"^([\w-]+) = \[(.*)\]$", (REPOSITORY / "pyproject.toml").read_text(), re.MULTILINE))
    for major, extra in GPU_EXTRAS.items():
        requirements = extras[extra]
        assert f"tensorrt-cu{major}" in requirements, extra
        assert re.search(rf"cuda-python>={major}[.\d]*,<{major + 1}\b", requirements), extra
        assert "onnxruntime-gpu" in requirements, extra


def test_generation_on_the_standin_equals_onnxruntime_cpu(
    standin: tuple[StandInTensorRT, StandInCuda], built: Path, tiny: ModelUnderTest
) -> None:
    """The whole pipeline through the TensorRT backend (contexts, graphs, buffers, the device chain)."""
    engine = Engine.load(built, backend="tensorrt")
    arguments: dict[str, Any] = {"audio_length_in_s": 1.0, "num_inference_steps": 3, "seed": 3}
    for prompts in (["a dog", "rain"], "wind"):
        audio = engine.generate(prompts, **arguments)
        np.testing.assert_allclose(audio, tiny.engine.generate(prompts, **arguments), rtol=1e-5, atol=1e-6)
    engine.backend.close()
