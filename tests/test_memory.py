"""Memory linear in the audio length: the fused-attention graphs ONNX Runtime runs beside the standard ones
TensorRT builds from, the peak RSS of long audio against the estimate, and the check of requests that cannot
fit in this machine's memory."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import onnx
import pytest

from audioldm_trt.benchmarks.memory import main as memory_main
from audioldm_trt.engine.manifest import WEIGHTS_SUFFIX, Manifest
from audioldm_trt.engine.memory import check_fits, estimate_peak_bytes, host_array_bytes, physical_memory_bytes
from audioldm_trt.export.activations import activation_bytes_per_row, peak_activation_bytes
from audioldm_trt.export.onnx import GraphIO

from conftest import ModelUnderTest

#: The graphs with attention layers: exported in both forms.
ATTENTION_GRAPHS = ("unet", "vae_decoder")


def test_onnxruntime_runs_fused_attention_and_tensorrt_gets_the_standard_pattern(model: ModelUnderTest) -> None:
    manifest = Manifest.load(model.export)
    for name in ATTENTION_GRAPHS:
        spec = manifest.graphs[name]
        fused = onnx.load(str(model.export / spec.onnxruntime_file), load_external_data=False)
        standard = onnx.load(str(model.export / spec.file), load_external_data=False)
        fused_ops = Counter((n.domain, n.op_type) for n in fused.graph.node)
        standard_ops = Counter((n.domain, n.op_type) for n in standard.graph.node)
        attention_layers = standard_ops[("", "Softmax")]
        assert attention_layers > 0 and fused_ops[("com.microsoft", "MultiHeadAttention")] == attention_layers
        assert fused_ops[("", "Softmax")] == 0 and not any(domain for domain, _ in standard_ops)
        # One weights file for both forms: the standard graph's, which its identity for TensorRT covers.
        weights = spec.file + WEIGHTS_SUFFIX
        for graph in (fused, standard):
            locations = {
                entry.value for t in graph.graph.initializer for entry in t.external_data if entry.key == "location"
            }
            assert locations == {weights}
        assert weights in manifest.graph_files(name) and weights in manifest.files
        assert not (model.export / (spec.onnxruntime_file + WEIGHTS_SUFFIX)).exists()
    for name in ("text_encoder", "vocoder"):
        assert manifest.graphs[name].onnxruntime_file == manifest.graphs[name].file


def test_activations_of_the_fused_graphs_grow_linearly(model: ModelUnderTest) -> None:
    """The graph analysis at 256 and 512 latent rows: the fused graphs' activations double, the standard
    graphs' (with the score matrices) nearly quadruple."""
    manifest = Manifest.load(model.export)
    for name in ATTENTION_GRAPHS:
        spec = manifest.graphs[name]
        fused, standard = (
            [peak_activation_bytes(model.export / file, {"batch": 1, "height": rows}) for rows in (256, 512)]
            for file in (spec.onnxruntime_file, spec.file)
        )
        assert fused[1] / fused[0] == pytest.approx(2.0, rel=0.01), name
        assert standard[1] / standard[0] > 3.0, name
    for name, spec in manifest.graphs.items():
        io = GraphIO(
            {k: (t.dtype, t.shape) for k, t in spec.inputs.items()},
            {k: (t.dtype, t.shape) for k, t in spec.outputs.items()},
        )
        figure = activation_bytes_per_row(model.export / spec.onnxruntime_file, io, manifest.model)
        assert spec.activation_bytes_per_row == figure and (figure > 0) == (name != "text_encoder"), name


def test_peak_rss_of_long_audio_stays_within_the_estimate(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """40 s of audio from the tiny model, in a fresh process (the memory benchmark's command): the VAE's
    mid-block attends over its 16000 latent pixels, a 1 GiB score matrix if it were materialised."""
    record_path = tmp_path / "memory.json"
    memory_main(["--engine", str(tiny.export), "--durations", "40", "--steps", "1", "--output", str(record_path)])
    (row,) = json.loads(record_path.read_text())["rows"]
    manifest = Manifest.load(tiny.export)
    tokens = row["latent_rows"] * manifest.model.latent_width
    assert row["peak_bytes"] <= row["estimate_bytes"]
    assert row["peak_bytes"] - row["load_peak_bytes"] < tokens**2 * 4 / 4, row


def test_requests_beyond_this_machines_memory_are_refused(tiny: ModelUnderTest) -> None:
    manifest = Manifest.load(tiny.export)
    model = manifest.model
    for on_host in (True, False):
        check_fits(manifest, 1, model.latent_height(60.0), guided=True, graphs_on_host=on_host)
        for batch, seconds in ((1, 1e9), (10**8, 10.0)):
            with pytest.raises(ValueError) as caught:
                check_fits(manifest, batch, model.latent_height(seconds), guided=True, graphs_on_host=on_host)
            message = str(caught.value)
            assert "\n" not in message and "GiB of memory, this machine has" in message, message
            assert " s of audio needs about " in message and (f"{batch} waveforms" in message or batch == 1), message
    # Guidance doubles the UNet's batch; an unguided request needs less.
    height = model.latent_height(20.0)
    assert estimate_peak_bytes(manifest, 1, height, guided=False) <= estimate_peak_bytes(manifest, 1, height, True)
    assert 0 < physical_memory_bytes() < 1 << 50


def test_gpu_backends_are_not_refused_by_the_host_estimate(tiny: ModelUnderTest) -> None:
    """A request whose activations would not fit in host memory, but whose numpy arrays do: a GPU backend holds
    the activations on the device, so only ONNX Runtime CPU refuses it."""
    manifest = Manifest.load(tiny.export)
    height = manifest.model.latent_height(60.0)
    per_waveform = estimate_peak_bytes(manifest, 2, height, True) - estimate_peak_bytes(manifest, 1, height, True)
    batch = 2 * physical_memory_bytes() // per_waveform
    assert host_array_bytes(manifest, batch, height, True) < physical_memory_bytes() // 4
    check_fits(manifest, batch, height, guided=True, graphs_on_host=False)
    with pytest.raises(ValueError, match="GiB of memory"):
        check_fits(manifest, batch, height, guided=True, graphs_on_host=True)
