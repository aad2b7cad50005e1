"""``audioldm-trt bench`` as a seconds-long smoke run on the tiny model: it writes its three files, reports
parity and the stages. No timing is asserted: CI machines are too noisy for that to mean anything."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import AUDIO_TOLERANCE, ModelUnderTest
from test_cli import run_cli

STAGES = ("text encoder", "UNet per step", "UNet, all steps", "VAE decoder", "vocoder", "scheduler + host")


def test_bench_writes_json_markdown_and_chart_with_parity(tiny: ModelUnderTest, tmp_path: Path) -> None:
    output = tmp_path / "report"
    result = run_cli(
        "bench",
        "--model",
        str(tiny.checkpoint),
        "--engine",
        str(tiny.export),
        "--steps",
        "2",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--duration",
        "0.5",
        "--output",
        str(output),
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    record = json.loads((output / "bench.json").read_text())
    assert [c["name"] for c in record["contenders"]] == ["diffusers cpu", "audioldm-trt onnxruntime-cpu"]
    diffusers, engine = record["contenders"]
    assert diffusers["parity"] is None and engine["compared_with"] == "diffusers cpu"
    assert engine["parity"] < AUDIO_TOLERANCE
    for contender in record["contenders"]:
        assert contender["unet_calls"] == 2 and contender["peak_rss_mib"] > 0
        assert len(contender["stages"]["total"]["samples"]) == 1
    assert record["settings"]["latent_shape"][0] == 1 and record["machine"]["logical_cores"] >= 1
    table = (output / "bench.md").read_text()
    assert table in result.stdout
    assert all(stage in table for stage in STAGES)
    assert (output / "bench.png").read_bytes().startswith(b"\x89PNG")


def test_bench_rejects_unknown_backends_and_negative_warmup() -> None:
    for arguments in (["--backends", "cuda"], ["--warmup", "-1"]):
        result = run_cli("bench", *arguments)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_a_contender_that_fails_is_noted_and_the_others_go_on(tiny: ModelUnderTest, tmp_path: Path) -> None:
    from audioldm_trt.benchmarks.bench import Contender, Settings, make_work
    from audioldm_trt.benchmarks.workers import ContenderSpec
    from audioldm_trt.engine.manifest import Manifest

    work = make_work(Settings(duration=0.5, steps=1), Manifest.load(tiny.export))
    notes: list[str] = []
    broken = ContenderSpec("engine", "cpu", str(tmp_path / "missing"), backend="onnxruntime-cpu")
    assert Contender.start(broken, work, 0, notes) is None
    assert len(notes) == 1 and notes[0].startswith("audioldm-trt onnxruntime-cpu failed: ") and "\n" not in notes[0]
    working = Contender.start(
        ContenderSpec("engine", "cpu", str(tiny.export), backend="onnxruntime-cpu"), work, 0, notes
    )
    assert working is not None
    try:
        working.run_timed(work, notes)
        assert working.failure is None and len(working.samples) == 1
    finally:
        working.close()


def test_on_a_gpu_the_fp32_export_is_the_quality_reference(tiny: ModelUnderTest) -> None:
    """diffusers fp16 is the parity reference; the engine's fp32 export (TF32 off) the fp32 audio that every
    fp16 contender's quality is measured against, diffusers' own fp16 included."""
    import numpy as np

    from audioldm_trt.benchmarks.bench import Contender, Settings, build_record, make_work
    from audioldm_trt.benchmarks.report import markdown
    from audioldm_trt.benchmarks.workers import ContenderSpec, Loaded, Sample
    from audioldm_trt.engine.manifest import Manifest

    settings = Settings(duration=0.5, steps=1, runs=1, backends=("onnxruntime-cuda", "onnxruntime-cuda-fp32"))
    work = make_work(settings, Manifest.load(tiny.export))
    base = np.random.default_rng(0).standard_normal((1, 8000)).astype(np.float32) * 0.1
    contenders = []
    for spec, precision, noise in [
        (ContenderSpec("diffusers", "cuda", "ckpt"), "fp16", 1e-3),
        (ContenderSpec("engine", "cuda", "e16", backend="onnxruntime-cuda"), "fp16", 2e-3),
        (ContenderSpec("engine", "cuda", "e32", backend="onnxruntime-cuda", precision="fp32"), "fp32", 0.0),
    ]:
        audio = base + noise * np.random.default_rng(len(contenders) + 1).standard_normal(base.shape)
        timings = {"text_encoder": 0.1, "unet": 0.5, "vae_decoder": 0.1, "vocoder": 0.1, "total": 1.0}
        sample = Sample(timings=timings, unet_calls=1, audio=audio.astype(np.float32))
        loaded = Loaded(0.0, 0.0, precision, {"onnxruntime": "1.0 (CUDAExecutionProvider)"})
        contenders.append(Contender(spec, None, None, loaded=loaded, samples=[sample]))
    record = build_record(settings, "ckpt", {"fp16": tiny.export}, work, contenders, [])
    rows = {row["name"]: row for row in record["contenders"]}
    fp16, fp32 = rows["audioldm-trt onnxruntime-cuda"], rows["audioldm-trt onnxruntime-cuda-fp32"]
    diffusers = rows["diffusers cuda"]
    assert fp16["compared_with"] == fp32["compared_with"] == "diffusers cuda" and diffusers["parity"] is None
    assert fp32["quality"] is None
    for row in (fp16, diffusers):
        assert row["quality_reference"] == "audioldm-trt onnxruntime-cuda-fp32"
        assert 0 < row["quality"]["relative_max_difference"] < 0.2 and row["quality"]["snr_db"] > 10
    assert "| audioldm-trt onnxruntime-cuda (fp16) | audioldm-trt onnxruntime-cuda-fp32 |" in markdown(record)


def _bench_once(command: str, model: ModelUnderTest, output: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """A bench command on one export, one timed run and no warm-up; it must succeed."""
    arguments = ["--engine", str(model.export), *options, "--runs", "1", "--warmup", "0", "--output", str(output)]
    result = run_cli(command, *arguments)
    assert result.returncode == 0, result.stderr
    return result


def test_bench_audio_times_style_transfer_beside_text_to_audio(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """``audioldm-trt bench-audio`` on the tiny export: both sides timed, half the UNet calls at strength 0.5."""
    result = _bench_once("bench-audio", tiny, tmp_path, "--duration", "1")
    assert "style transfer takes" in result.stdout and "VAE encoder is" in result.stdout
    record = json.loads((tmp_path / "audio-to-audio.json").read_text())
    medians = record["medians"]
    assert medians["text_to_audio"]["unet_calls"] == 10 and medians["style_transfer"]["unet_calls"] == 5
    assert medians["text_to_audio"]["vae_encoder"] == 0 < medians["style_transfer"]["vae_encoder"]
    assert 0 < record["encoder_share"] < 1


def test_bench_stream_times_the_first_chunk_beside_the_whole_answer(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """``audioldm-trt bench-stream`` on the tiny export: the first chunk before the last, every chunk counted."""
    result = _bench_once("bench-stream", tiny, tmp_path, "--duration", "2", "--chunk", "0.5")
    assert "first audio after" in result.stdout
    medians = json.loads((tmp_path / "streaming.json").read_text())["medians"]
    assert 0 < medians["first_audio"] < medians["last_audio"] and medians["whole"] > 0
    assert medians["chunks"] >= 3
