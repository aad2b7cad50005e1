"""Everything about the TensorRT path that needs no GPU: profile arithmetic against what the pipeline really
feeds, engine records and their checks, backend selection, the ONNX lint, ``audioldm-trt build`` errors, and
mypy over the GPU code against tensorrt-stubs."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest

from audioldm_trt.engine import BackendUnavailableError, Engine, EngineDirectoryError
from audioldm_trt.engine.backends import Graph, choose_backend, create_backend
from audioldm_trt.engine.backends.cuda import Device
from audioldm_trt.engine.backends.onnxruntime import CPU, CUDA, OnnxRuntimeBackend
from audioldm_trt.engine.backends.profiles import BuildRanges, OutOfProfileError, Range
from audioldm_trt.engine.backends.tensorrt import EngineRecord, check_record, engine_paths
from audioldm_trt.engine.manifest import GRAPH_NAMES, Manifest, file_record
from audioldm_trt.export.lint import SUPPORT_FILE, SupportedSet, graph_usage, lint_export, lint_model
from audioldm_trt.export.tensorrt import parse_size

from conftest import ModelUnderTest
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

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, array in feeds.items():
            self.seen.setdefault(f"{self.name}.{name}", []).append(array.shape)
        return self.inner.run(feeds)


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
            onnx_sha256=manifest.files[manifest.graphs[graph].file].sha256,
            tensorrt=TEST_TENSORRT,
            gpu=device.name,
            compute_capability=device.compute_capability,
            ranges=ranges.to_json(),
            profile={n: [list(s) for s in ends] for n, ends in shapes[graph].items()},
            engine_bytes=40,
        ).write(record)


def test_engine_records_refuse_another_graph_tensorrt_or_gpu(export_copy: Path) -> None:
    manifest = Manifest.load(export_copy)
    _write_engines(export_copy, manifest)
    record = EngineRecord.read(engine_paths(export_copy, "unet")[1])
    check_record(record, export_copy, manifest, TEST_TENSORRT, TEST_DEVICE)
    rebuild = f"rebuild with audioldm-trt build {export_copy} --batch 1:1:4 --duration"
    cases = {
        "another unet.onnx": (dataclasses.replace(record, onnx_sha256="0" * 64), TEST_TENSORRT, TEST_DEVICE),
        "built with TensorRT 10.13.0.35, this is TensorRT 11.4.0.106": (record, "11.4.0.106", TEST_DEVICE),
        "built for NVIDIA Test GPU (compute capability 9.0), this is NVIDIA A10G (compute capability 8.6)": (
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
    assert name == "onnxruntime-cpu" and "built for NVIDIA A10G" in reason
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
        assert lint_export(export, Manifest.load(export)) == {graph: [] for graph in GRAPH_NAMES}, export
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
