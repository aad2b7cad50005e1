"""Bad input: one clear line, a non-zero exit, no traceback, no partial output; ValueError before any graph runs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import Engine, EngineDirectoryError
from audioldm_trt.engine.backends import Graph

from conftest import ModelUnderTest
from test_cli import run_cli


def _assert_one_line_error(result: Any, status: int, *needles: str) -> None:
    assert result.returncode == status, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("audioldm-trt"), lines[0]
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--steps", "0"], "--steps"),
        (["--steps", "-3"], "--steps"),
        (["--steps", "ten"], "--steps"),
        (["--duration", "0"], "--duration"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "0.001"], "audio_length_in_s"),
        (["--guidance", "nan"], "--guidance"),
        (["--guidance", "inf"], "--guidance"),
        (["--waveforms", "0"], "--waveforms"),
        (["--seed", "-9223372036854775809"], "--seed"),
        (["--scheduler", "NoSuchScheduler"], "--scheduler"),
        (["--backend", "cuda9"], "--backend"),
        (["--threads", "0"], "--threads"),
        (["--scheduler-config", "[1]"], "--scheduler-config"),
        (["--scheduler-config", "{bad json"], "--scheduler-config"),
        (["--scheduler-config", '{"no_such_key": 1}'], "no_such_key"),
        (["--scheduler-config", '{"prediction_type": "flow_prediction"}'], "prediction_type"),
    ],
)
def test_bad_arguments_exit_2(tiny: ModelUnderTest, tmp_path: Path, flags: list[str], needle: str) -> None:
    result = run_cli("generate", "a dog", "--engine", str(tiny.export), "--output", str(tmp_path / "x.wav"), *flags)
    _assert_one_line_error(result, 2, needle)
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths(tiny: ModelUnderTest, tmp_path: Path) -> None:
    result = run_cli("generate", "a dog", "--engine", str(tiny.export), "--output", str(tmp_path / "x.mp3"))
    _assert_one_line_error(result, 2, ".wav")
    result = run_cli("generate", "a dog", "--engine", str(tiny.export), "--output", str(tmp_path / "missing" / "x.wav"))
    _assert_one_line_error(result, 2, "does not exist")
    (tmp_path / "x_1.wav").mkdir()  # the second of two outputs cannot be written: neither may be left
    result = run_cli(
        "generate", "a", "b", "--engine", str(tiny.export), "--output", str(tmp_path / "x.wav"), "--steps", "1"
    )
    _assert_one_line_error(result, 1, "x_1.wav")
    assert [p.name for p in tmp_path.iterdir()] == ["x_1.wav"]


def test_arguments_are_checked_before_the_engine_loads(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """A request the export cannot take fails before the graphs load: here they could not load at all."""
    engine = _broken_copy(tiny, tmp_path)
    (engine / "unet.onnx").write_bytes(b"")
    for flags, needle in (
        (["--steps", "2000"], "num_inference_steps=2000"),
        # steps_offset 1 with "leading" spacing: timestep 1000 of 1000, where diffusers fails indexing.
        (["--steps", "1000"], "DDIMScheduler reaches timestep 1000 at 1000 steps"),
        (["--eta", "-1"], "eta"),
    ):
        result = run_cli("generate", "a dog", "--engine", str(engine), "--output", str(tmp_path / "x.wav"), *flags)
        _assert_one_line_error(result, 2, needle)
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "tensorrt"])
@pytest.mark.parametrize("flags", [["--duration", "1e9"], ["--waveforms", "100000000"]], ids=["duration", "waveforms"])
def test_requests_beyond_this_machines_memory_exit_2_before_loading(
    tiny: ModelUnderTest, tmp_path: Path, backend: str, flags: list[str]
) -> None:
    """Refused from the shapes alone, on every backend (the numpy arrays alone would not fit): no graph loads
    (without a GPU, loading TensorRT would fail with status 1) and nothing runs."""
    output = tmp_path / "x.wav"
    result = run_cli(
        "generate", "a dog", "--engine", str(tiny.export), "--output", str(output), "--backend", backend, *flags
    )
    _assert_one_line_error(result, 2, "GiB of memory, this machine has")
    assert "running on" not in result.stdout and list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback(tiny: ModelUnderTest, tmp_path: Path) -> None:
    result = run_cli(
        "generate", "a dog", "--engine", str(tmp_path / "nothing"), "--output", str(tmp_path / "x.wav"), "--debug"
    )
    assert result.returncode != 0 and "Traceback" in result.stderr


def _broken_copy(tiny: ModelUnderTest, tmp_path: Path) -> Path:
    copy = tmp_path / "engine"
    shutil.copytree(tiny.export, copy)
    return copy


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "manifest.json is corrupt"),
        (lambda d: (d / "unet.onnx").unlink(), "unet.onnx is missing"),
        (lambda d: (d / "tokenizer" / "vocab.json").unlink(), "vocab.json is missing"),
        (lambda d: (d / "vocoder.onnx").write_bytes((d / "vocoder.onnx").read_bytes()[:-10]), "vocoder.onnx has"),
        (lambda d: _flip_a_byte(d / "vae_decoder.onnx"), "vae_decoder.onnx does not match its xxh3_128"),
    ],
    ids=["no-directory", "no-manifest", "bad-manifest", "no-unet", "no-vocab", "truncated-vocoder", "corrupt-vae"],
)
def test_damaged_engine_directory_names_the_file(
    tiny: ModelUnderTest, tmp_path: Path, damage: Any, needle: str
) -> None:
    engine = _broken_copy(tiny, tmp_path)
    damage(engine)
    with pytest.raises(EngineDirectoryError, match=needle.replace(".", r"\.")):
        Engine.load(engine, backend="onnxruntime-cpu")
    result = run_cli("generate", "a dog", "--engine", str(engine), "--output", str(tmp_path / "x.wav"))
    _assert_one_line_error(result, 1, needle)
    assert not (tmp_path / "x.wav").exists()


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("model", ["/nonexistent", "no-such-model", "./models/missing", "a/b/c"])
def test_missing_model_for_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model: str) -> None:
    monkeypatch.chdir(tmp_path)
    source = str(tmp_path / model) if model == "no-such-model" else model
    result = run_cli("export", "--model", source, "--output", str(tmp_path / "out"))
    _assert_one_line_error(result, 1, f"{source} does not exist")
    assert list(tmp_path.iterdir()) == []


class _CountingGraph(Graph):
    """Counts calls of a real graph, to show validation happens before any graph runs."""

    calls = 0

    def __init__(self, graph: Graph) -> None:
        super().__init__(graph.name)
        self._graph = graph

    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        _CountingGraph.calls += 1
        return self._graph.run(feeds, reuse)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"prompt": []}, "empty"),
        ({"prompt": ["ok", 3]}, r"prompt\[1\] must be a string, got int"),
        ({"prompt": ["a", "b"], "negative_prompt": ["only one"]}, "negative_prompt has 1"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 2.5}, "num_inference_steps"),
        ({"num_inference_steps": 5000}, "5000"),
        ({"num_waveforms_per_prompt": 0}, "num_waveforms_per_prompt"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"audio_length_in_s": 0.0}, "audio_length_in_s"),
        ({"audio_length_in_s": -2}, "audio_length_in_s"),
        ({"audio_length_in_s": float("inf")}, "audio_length_in_s"),
        ({"eta": -0.5}, "eta"),
        ({"eta": 1.5}, "eta"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"prompt": None}, "exactly one of prompt and prompt_embeds"),
        ({"prompt_embeds": np.zeros((1, 8), np.float32)}, "exactly one"),
        ({"prompt": None, "prompt_embeds": np.zeros((1, 3), np.float32)}, "prompt_embeds must have shape"),
        ({"negative_prompt": "x", "negative_prompt_embeds": np.zeros((1, 8), np.float32)}, "at most one"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"latents": np.zeros((1, 4, 3, 8), np.float32)}, "latents must have shape"),
        ({"latents": np.zeros((2, 4, 50, 8), np.float32)}, "latents must have shape"),
        ({"latents": np.full((1, 4, 50, 8), np.nan, np.float32)}, "latents hold NaN or infinity"),
        ({"latents": np.full((1, 4, 50, 8), -np.inf, np.float32)}, "latents hold NaN or infinity"),
        ({"audio_length_in_s": 1e9}, "1 waveform of 1e[+]09 s of audio needs about .* GiB of memory"),
        ({"num_waveforms_per_prompt": 10**8}, "100000000 waveforms of 1 s of audio needs about"),
    ],
)
def test_python_errors_are_value_errors_before_any_graph_runs(
    tiny: ModelUnderTest, kwargs: dict[str, Any], needle: str
) -> None:
    engine = Engine.load(tiny.export, backend="onnxruntime-cpu", verify=False)
    engine._graphs = {name: _CountingGraph(graph) for name, graph in engine._graphs.items()}
    _CountingGraph.calls = 0
    arguments = {"prompt": "a dog", "audio_length_in_s": 1.0, **kwargs}
    with pytest.raises(ValueError, match=needle):
        engine.generate(**arguments)
    assert _CountingGraph.calls == 0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"backend": "gpu-please"}, "unknown backend"),
        ({"threads": 0}, "threads"),
        ({"scheduler": "NoSuchScheduler"}, "unknown scheduler"),
        ({"scheduler_config": {"beta_shedule": "linear"}}, "beta_shedule"),
        ({"scheduler_config": {"timestep_spacing": "uniform"}}, "timestep_spacing"),
        ({"scheduler": "EulerDiscreteScheduler", "scheduler_config": {"use_beta_sigmas": True}}, "use_beta_sigmas"),
    ],
)
def test_bad_load_arguments(tiny: ModelUnderTest, kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Engine.load(tiny.export, **kwargs)


def test_manifest_records_what_the_runtime_needs(tiny: ModelUnderTest) -> None:
    manifest = json.loads((tiny.export / "manifest.json").read_text())
    model = manifest["model"]
    assert model["sampling_rate"] == 16000 and model["vocoder_upsample_rates"] == [8, 4, 5]
    assert model["vae_scale_factor"] == 2 and model["latent_channels"] == 4 and model["mel_bins"] == 16
    assert model["embedding_dim"] == 16 and model["tokenizer_max_length"] == 512
    assert manifest["scheduler"]["_class_name"] == "DDIMScheduler"
    assert set(manifest["graphs"]) == {"text_encoder", "unet", "vae_decoder", "vocoder", "vae_encoder"}
    assert manifest["graphs"]["vae_encoder"]["inputs"]["mel"]["shape"] == ["batch", 1, "frames", 16]
    assert manifest["graphs"]["vae_encoder"]["outputs"]["posterior"]["shape"] == ["batch", 8, "height", 8]
    # AudioLDM's front-end at this model's rate, hop and mel bins
    assert manifest["mel"] == {
        "sampling_rate": 16000,
        "filter_length": 1024,
        "hop_length": 160,
        "win_length": 1024,
        "n_mels": 16,
        "fmin": 0.0,
        "fmax": 8000.0,
    }
    assert manifest["graphs"]["unet"]["inputs"]["sample"]["shape"] == ["batch", 4, "height", 8]
    assert {"unet.onnx", "tokenizer/vocab.json"} <= set(manifest["files"])
    assert {"torch", "diffusers", "onnx"} <= set(manifest["versions"])


def test_prompts_longer_than_the_model_reads_are_named(tiny: ModelUnderTest) -> None:
    """``generate`` truncates them as diffusers does; ``check_prompt_lengths`` is what a server refuses them by."""
    tiny.engine.check_prompt_lengths("a dog barking", ["noise", "hiss"])
    with pytest.raises(ValueError, match=r"^prompt: 603 tokens is more than the model reads \(512\)$"):
        tiny.engine.check_prompt_lengths("a dog " * 300)
    with pytest.raises(ValueError, match=r"^negative_prompt: 23 tokens is more than the model reads \(16\)$"):
        tiny.engine.check_prompt_lengths("a", "noise " * 20)


def _wav(path: Path, seconds: float, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    soundfile.write(path, 0.3 * np.sin(2 * np.pi * 200 * t), rate)
    return path


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"audio": b"not audio"}, "^input_audio: cannot read audio"),
        ({"audio": "/no/such/file.wav"}, "^input_audio: cannot read audio"),
        ({"audio": "empty"}, "^input_audio: the audio holds no samples$"),
        ({"audio": "long"}, r"^input_audio: 61.0 s is longer than the 60 s allowed$"),
        ({"strength": 0.0}, r"^strength must be in \(0, 1\], got 0.0$"),
        ({"strength": 1.5}, r"^strength must be in \(0, 1\]"),
        ({"strength": float("nan")}, "^strength must be finite"),
        ({"strength": 0.05, "num_inference_steps": 10}, "^strength 0.05 at 10 steps leaves no step to run"),
        ({"inpaint": (0.5, 0.2)}, r"^inpaint: the span 0.5-0.2 s is not inside the clip \(0-1.00 s\)$"),
        ({"inpaint": (0.5, 1.5)}, "^inpaint: the span 0.5-1.5 s is not inside the clip"),
        ({"inpaint": (0.5,)}, r"^inpaint must be \(start, end\) in seconds"),
        ({"super_resolution": 8000.0}, "^super_resolution: the cutoff must be between 0 and 8000 Hz, got 8000.0$"),
        ({"super_resolution": -1.0}, "^super_resolution: the cutoff"),
        ({"extend": 0.0}, "^extend must be a positive number of seconds"),
        ({"extend": 0.5, "audio_length_in_s": 0.8}, r"^extend: the output \(0.8 s\) must be longer than the input"),
        ({"inpaint": (0.1, 0.2), "extend": 1.0}, "^pass at most one of inpaint, super_resolution and extend"),
        ({"posterior": "mode"}, "^posterior must be 'sample' or 'mean'"),
        ({"audio": None, "strength": 0.5}, "^strength, inpaint, super_resolution and extend need an input audio$"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_bad_audio_input_is_a_value_error_before_any_graph_runs(
    tiny: ModelUnderTest, tmp_path: Path, kwargs: dict[str, Any], needle: str
) -> None:
    clips = {
        "clip": _wav(tmp_path / "clip.wav", 1.0),
        "empty": _wav(tmp_path / "empty.wav", 0.0),
        "long": _wav(tmp_path / "long.wav", 61.0, rate=1000),
    }
    engine = Engine.load(tiny.export, backend="onnxruntime-cpu", verify=False)
    engine._graphs = {name: _CountingGraph(graph) for name, graph in engine._graphs.items()}
    _CountingGraph.calls = 0
    arguments = {"prompt": "a dog", "audio": clips["clip"], **kwargs}
    if isinstance(arguments["audio"], str) and arguments["audio"] in clips:
        arguments["audio"] = clips[arguments["audio"]]
    with pytest.raises(ValueError, match=needle):
        engine.generate(**arguments)
    assert _CountingGraph.calls == 0


def test_an_export_without_the_encoder_says_how_to_get_it(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """Exports made before audio-to-audio load and run text-to-audio; audio input names the fix."""
    import dataclasses

    from audioldm_trt.engine.manifest import Manifest

    old = tmp_path / "old"
    shutil.copytree(tiny.export, old)
    manifest = Manifest.load(old)
    graphs = {name: spec for name, spec in manifest.graphs.items() if name != "vae_encoder"}
    files = {name: record for name, record in manifest.files.items() if not name.startswith("vae_encoder")}
    dataclasses.replace(manifest, graphs=graphs, files=files, mel=None).save(old)
    engine = Engine.load(old, backend="onnxruntime-cpu")
    with pytest.raises(ValueError, match=r"^this export has no VAE encoder.*export the model again"):
        engine.generate("a dog", audio=_wav(tmp_path / "clip.wav", 1.0))
    assert engine.generate("a dog", audio_length_in_s=0.5, num_inference_steps=2).shape == (1, 8000)


@pytest.mark.parametrize(
    ("flags", "status", "needle"),
    [
        (["--strength", "1.5"], 2, "strength must be in (0, 1]"),
        (["--inpaint", "0.5"], 2, "--inpaint: expected START:END in seconds"),
        (["--inpaint", "0.2:3"], 2, "inpaint: the span 0.2-3.0 s is not inside the clip"),
        (["--super-resolution", "9000"], 2, "super_resolution: the cutoff must be between 0 and 8000 Hz"),
        (["--strength", "0.5", "--extend", "1"], 2, "not allowed with argument"),
        (["--input-audio", "missing.wav"], 2, "--input-audio missing.wav is not a file"),
        (["--input-audio", "bad.wav"], 2, "input_audio: cannot read audio"),
    ],
)
def test_bad_audio_flags_exit_2(
    tiny: ModelUnderTest, tmp_path: Path, flags: list[str], status: int, needle: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    _wav(tmp_path / "clip.wav", 1.0)
    (tmp_path / "bad.wav").write_bytes(b"RIFF nonsense")
    given = [] if "--input-audio" in flags else ["--input-audio", "clip.wav"]
    result = run_cli("generate", "a dog", "--engine", str(tiny.export), "--output", "x.wav", *given, *flags)
    _assert_one_line_error(result, status, needle)
    assert not (tmp_path / "x.wav").exists()
    result = run_cli("generate", "a dog", "--engine", str(tiny.export), "--output", "x.wav", "--extend", "1")
    _assert_one_line_error(result, 2, "--extend needs --input-audio")
