"""Engine.load: every file of an export is checked on every load, and the checks cost little.

The corruption tests damage a real export of the tiny model and load it with a real ONNX Runtime session; the
load-time benchmark runs for real on it, in fresh processes (its figures are meaningless on the tiny model,
so only its output is checked).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from audioldm_trt.engine import Engine, EngineDirectoryError
from audioldm_trt.engine.manifest import MANIFEST_NAME, SELF_DIGEST, WEIGHTS_SUFFIX, Manifest

from conftest import ModelUnderTest


@pytest.fixture
def export_copy(tiny: ModelUnderTest, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny.export, tmp_path / "engine"))


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)[0]
        stream.seek(offset)
        stream.write(bytes([byte ^ 0xFF]))


def test_a_flipped_byte_in_any_file_fails_the_load_naming_the_file(export_copy: Path) -> None:
    files = sorted(p for p in export_copy.rglob("*") if p.is_file())
    assert {f"{g}.onnx{WEIGHTS_SUFFIX}" for g in ("text_encoder", "unet", "vae_decoder", "vocoder")} <= {
        p.name for p in files
    }, "the export keeps each graph's weights in a file of their own"
    for path in files:
        for offset in (0, path.stat().st_size // 2, path.stat().st_size - 1):
            _flip_byte(path, offset)
            with pytest.raises(EngineDirectoryError, match=f"{re.escape(str(path))} .*corrupt") as raised:
                Engine.load(export_copy, backend="onnxruntime-cpu")
            assert "\n" not in str(raised.value)
            _flip_byte(path, offset)
    Engine.load(export_copy, backend="onnxruntime-cpu")  # every byte back: it loads


def test_a_changed_manifest_value_is_detected(export_copy: Path) -> None:
    """A change that leaves valid JSON (a digit of the sampling rate) is caught by the manifest's own hash."""
    path = export_copy / MANIFEST_NAME
    text = path.read_text()
    rate = json.loads(text)["model"]["sampling_rate"]
    path.write_text(text.replace(f'"sampling_rate": {rate}', f'"sampling_rate": {rate + 1}'))
    with pytest.raises(EngineDirectoryError, match=r"manifest\.json does not match its own xxh3_128"):
        Engine.load(export_copy, backend="onnxruntime-cpu")


def test_a_corrupt_file_is_named_even_when_loading_fails_first(export_copy: Path) -> None:
    """The weights are hashed while the sessions are created; a failure of the backend must not hide the
    corrupt file behind the backend's own message."""
    manifest = Manifest.load(export_copy)
    _flip_byte(export_copy / f"unet.onnx{WEIGHTS_SUFFIX}", 100)
    corrupt = pytest.raises(EngineDirectoryError, match=r"unet\.onnx\.data does not match")
    with corrupt as raised, manifest.verifying(export_copy):
        raise RuntimeError("the backend failed on the corrupt weights")
    assert isinstance(raised.value.__cause__, RuntimeError)
    _flip_byte(export_copy / f"unet.onnx{WEIGHTS_SUFFIX}", 100)
    with pytest.raises(RuntimeError, match="the backend failed"), manifest.verifying(export_copy):
        raise RuntimeError("the backend failed")


def test_older_manifests_are_checked_by_sha256(export_copy: Path) -> None:
    """Manifests written before XXH3-128 was recorded (no per-file xxh3_128, no digest of their own)."""
    path = export_copy / MANIFEST_NAME
    data = json.loads(path.read_text())
    del data[SELF_DIGEST]
    for record in data["files"].values():
        del record["xxh3_128"]
    path.write_text(json.dumps(data, indent=2))
    Engine.load(export_copy, backend="onnxruntime-cpu")
    _flip_byte(export_copy / f"vocoder.onnx{WEIGHTS_SUFFIX}", 7)
    with pytest.raises(EngineDirectoryError, match=r"vocoder\.onnx\.data does not match its sha256"):
        Engine.load(export_copy, backend="onnxruntime-cpu")


def test_no_verify_checks_sizes_only(export_copy: Path) -> None:
    _flip_byte(export_copy / f"vocoder.onnx{WEIGHTS_SUFFIX}", 7)
    Engine.load(export_copy, backend="onnxruntime-cpu", verify=False)
    (export_copy / "tokenizer" / "vocab.json").write_bytes(b"{}")
    with pytest.raises(EngineDirectoryError, match=r"vocab\.json has 2 bytes"):
        Engine.load(export_copy, backend="onnxruntime-cpu", verify=False)


def test_sessions_created_concurrently_give_the_same_audio(tiny: ModelUnderTest) -> None:
    """threads=1 creates the sessions one after another; the default creates them concurrently."""
    arguments = {"prompt": "rain on a tin roof", "audio_length_in_s": 0.5, "num_inference_steps": 3, "seed": 4}
    one_by_one = Engine.load(tiny.export, backend="onnxruntime-cpu", threads=1).generate(**arguments)
    concurrent = Engine.load(tiny.export, backend="onnxruntime-cpu").generate(**arguments)
    np.testing.assert_array_equal(one_by_one, concurrent)


def test_loadtime_benchmark_reports_the_ratio(tiny: ModelUnderTest, tmp_path: Path) -> None:
    output = tmp_path / "loadtime.json"
    command = [sys.executable, "-m", "audioldm_trt.benchmarks.loadtime", "--engine", str(tiny.export)]
    result = subprocess.run(
        [*command, "--runs", "1", "--warmup", "0", "--output", str(output)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "| Engine.load |" in result.stdout and "ratio" in result.stdout
    record = json.loads(output.read_text())
    assert record["ratio"] > 0 and set(record["runs"]) == {"onnxruntime", "onnxruntime-concurrent", "engine"}
    assert all(len(samples) == 1 for samples in record["runs"].values())
