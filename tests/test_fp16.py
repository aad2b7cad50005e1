"""fp16 exports on ONNX Runtime CPU: finite, close to fp32, really fp16, guarded at export and at run time."""

from __future__ import annotations

import shutil
from collections.abc import Collection, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from audioldm_trt.engine import Engine, NonFiniteOutputError
from audioldm_trt.engine.backends import Graph
from audioldm_trt.engine.manifest import WEIGHTS_SUFFIX
from audioldm_trt.export.fp16 import convert_to_fp16
from audioldm_trt.export.onnx import ExportError

from conftest import ModelUnderTest, relative_difference

#: The bound the issue sets for fp16 audio against fp32 audio (measured: 1.4e-3 to 7.7e-3, see export/fp16.py).
FP16_AUDIO_TOLERANCE = 5e-2


@pytest.mark.parametrize("guidance", [2.5, 1.0])
def test_fp16_audio_is_finite_and_close_to_fp32(
    model: ModelUnderTest, fp16_exports: dict[str, Path], guidance: float
) -> None:
    fp16 = Engine.load(fp16_exports[model.name], backend="onnxruntime-cpu")
    length = model.odd_audio_length()
    latents = model.latents(2, length, seed=5)
    kwargs = {"audio_length_in_s": length, "guidance_scale": guidance, "latents": latents}
    expected = model.engine.generate(["a dog barking", "rain on a roof"], **kwargs)
    audio = fp16.generate(["a dog barking", "rain on a roof"], **kwargs)
    assert np.isfinite(audio).all()
    assert relative_difference(audio, expected) < FP16_AUDIO_TOLERANCE


def test_fp16_audio_to_audio_is_close_to_fp32(
    model: ModelUnderTest, fp16_exports: dict[str, Path], tmp_path: Path
) -> None:
    """The fp16 VAE encoder in style transfer and inpainting: finite, within the fp16 bound of fp32's audio."""
    import soundfile

    rate = model.engine.sampling_rate
    t = np.arange(rate) / rate
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, 0.3 * np.sin(2 * np.pi * 300 * t) + 0.02 * np.cos(2 * np.pi * 1700 * t), rate)
    fp16 = Engine.load(fp16_exports[model.name], backend="onnxruntime-cpu")
    for mode in ({"strength": 0.6}, {"inpaint": (0.2, 0.6)}):
        kwargs = {"audio": clip, "seed": 3, "num_inference_steps": 6, **mode}
        expected = model.engine.generate("a dog barking", **kwargs)
        audio = fp16.generate("a dog barking", **kwargs)
        assert np.isfinite(audio).all()
        assert relative_difference(audio, expected) < FP16_AUDIO_TOLERANCE


def test_fp16_graphs_hold_fp16_weights_and_fp32_islands(fp16_exports: dict[str, Path]) -> None:
    for export in fp16_exports.values():
        for name in ("text_encoder", "unet", "vae_decoder", "vocoder", "vae_encoder"):
            model = onnx.shape_inference.infer_shapes(onnx.load(str(export / f"{name}.onnx")))
            sizes = {TensorProto.FLOAT: 0, TensorProto.FLOAT16: 0}
            for tensor in model.graph.initializer:
                if tensor.data_type in sizes:
                    sizes[tensor.data_type] += int(np.prod(tensor.dims))
            if name == "vocoder" and export.name == "tiny-deep":  # kept fp32 by --fp32 vocoder
                assert sizes[TensorProto.FLOAT16] == 0
                continue
            assert sizes[TensorProto.FLOAT16] > 0.99 * sum(sizes.values()), (export, name, sizes)
            io = [*model.graph.input, *model.graph.output]
            assert all(v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64) for v in io)
            types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.value_info, *io]}
            for node in model.graph.node:
                if node.op_type in ("LayerNormalization", "InstanceNormalization", "Softmax", "Sin", "Cos", "Tanh"):
                    assert types[node.input[0]] == TensorProto.FLOAT, (name, node.name)


def test_fp32_override_is_recorded_per_graph(fp16_exports: dict[str, Path]) -> None:
    engine = Engine.load(fp16_exports["tiny-deep"], backend="onnxruntime-cpu")
    assert engine.manifest.precision == "fp16"
    assert {n: g.precision for n, g in engine.manifest.graphs.items()} == {
        "text_encoder": "fp16",
        "unet": "fp16",
        "vae_decoder": "fp16",
        "vocoder": "fp32",
        "vae_encoder": "fp16",
    }


def test_export_check_names_the_graph(tiny: ModelUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _copy_graph(tiny.export / "vocoder.onnx", tmp_path)
    monkeypatch.setattr("audioldm_trt.export.fp16.FP16_TOLERANCE", 1e-9)
    with pytest.raises(ExportError, match=r"^vocoder: .* export with --fp32 vocoder$"):
        convert_to_fp16(path, "vocoder")


def test_export_check_refuses_non_finite_fp16(
    tiny: ModelUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime CPU keeps activations in fp32, so an overflow is simulated: the fp16 run returns infinity."""
    path = _copy_graph(tiny.export / "unet.onnx", tmp_path)
    runs = iter([[np.ones((2, 4), np.float32)], [np.full((2, 4), np.inf, np.float32)]])
    monkeypatch.setattr("audioldm_trt.export.fp16._run", lambda path, feeds: next(runs))
    with pytest.raises(ExportError, match="NaN or infinity; export with --fp32 unet"):
        convert_to_fp16(path, "unet")


def _copy_graph(graph: Path, directory: Path) -> Path:
    """A copy of an exported graph and its weights file in ``directory``."""
    for path in (graph, graph.with_name(graph.name + WEIGHTS_SUFFIX)):
        shutil.copyfile(path, directory / path.name)
    return directory / graph.name


class _NaNGraph(Graph):
    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        return {"noise_pred": np.full_like(feeds["sample"], np.nan)}


def test_non_finite_stage_output_names_the_stage_and_the_override(fp16_exports: dict[str, Path]) -> None:
    engine = Engine.load(fp16_exports["tiny"], backend="onnxruntime-cpu")
    engine._graphs["unet"] = _NaNGraph("unet")
    with pytest.raises(NonFiniteOutputError, match=r"unet produced NaN or infinity.*--fp32 unet"):
        engine.generate("a bell", audio_length_in_s=0.5, num_inference_steps=2, seed=0)


def test_a_tensor_read_by_two_fp32_nodes_gets_one_cast(tmp_path: Path) -> None:
    """ONNX Runtime's converter before 1.32 (onnxruntime-gpu 1.31 among them) casts such a tensor once per
    reader, into one tensor name: a graph ONNX Runtime refuses to load. The conversion keeps one Cast."""
    import onnxruntime

    from audioldm_trt.export.fp16 import mixed_precision

    x = onnx.helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outputs = [onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("a", "b")]
    weight = onnx.numpy_helper.from_array(np.full((2, 3), 0.5, np.float32), "w")
    nodes = [
        onnx.helper.make_node("Mul", ["x", "w"], ["t"], name="mul"),
        onnx.helper.make_node("Softmax", ["t"], ["a"], name="first", axis=-1),
        onnx.helper.make_node("Softmax", ["t"], ["b"], name="second", axis=-1),
    ]
    graph = onnx.helper.make_graph(nodes, "two_readers", [x], outputs, [weight])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=8)
    converted = mixed_precision(model)
    written = [name for node in converted.graph.node for name in node.output]
    assert len(written) == len(set(written)), written
    assert sum(node.op_type == "Softmax" for node in converted.graph.node) == 2
    path = tmp_path / "converted.onnx"
    onnx.save(converted, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = np.arange(6, dtype=np.float32).reshape(2, 3)
    a, b = session.run(None, {"x": feed})
    expected = np.exp(feed * 0.5) / np.exp(feed * 0.5).sum(-1, keepdims=True)
    np.testing.assert_allclose(a, expected, rtol=1e-3)
    np.testing.assert_array_equal(a, b)


def test_both_precisions_from_one_trace_equal_two_exports(
    models: dict[str, ModelUnderTest], fp16_exports: dict[str, Path], tmp_path: Path
) -> None:
    """``export_models`` traces each network once for fp32 and fp16: every file is byte-equal (same XXH3-128)
    to the one a separate export of that precision writes."""
    from audioldm_trt.engine.manifest import Manifest
    from audioldm_trt.export.exporter import export_models

    tiny = models["tiny"]
    both = export_models(str(tiny.checkpoint), {"fp32": tmp_path / "fp32", "fp16": tmp_path / "fp16"})
    for precision, separate in (("fp32", tiny.export), ("fp16", fp16_exports["tiny"])):
        together, alone = Manifest.load(both[precision]), Manifest.load(separate)
        assert together.precision == precision and together.graphs == alone.graphs
        assert {f: r.xxh3_128 for f, r in together.files.items()} == {f: r.xxh3_128 for f, r in alone.files.items()}
