"""``audioldm-trt bench`` as a seconds-long smoke run on the tiny model: it writes its three files, reports
parity and the stages. No timing is asserted: CI machines are too noisy for that to mean anything."""

from __future__ import annotations

import json
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
