"""The command line, run as users run it: the installed console script in a subprocess."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from conftest import AUDIO_TOLERANCE, ModelUnderTest, relative_difference

CLI = str(Path(sys.executable).with_name("audioldm-trt"))


def run_cli(*args: str, umask: int | None = None) -> subprocess.CompletedProcess[str]:
    preexec = None if umask is None else lambda: os.umask(umask)
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def test_generate_writes_a_wav_of_the_requested_length(tiny: ModelUnderTest, tmp_path: Path) -> None:
    output = tmp_path / "dog.wav"
    result = run_cli(
        "generate",
        "a dog barking",
        "--engine",
        str(tiny.export),
        "--output",
        str(output),
        "--duration",
        "1.5",
        "--seed",
        "3",
        "--steps",
        "4",
    )
    assert result.returncode == 0, result.stderr
    audio, rate = soundfile.read(output, dtype="float32")
    assert rate == 16000 and audio.shape == (24000,)
    assert "seed 3" in result.stdout and str(output) in result.stdout
    expected = tiny.engine.generate("a dog barking", audio_length_in_s=1.5, seed=3, num_inference_steps=4)[0]
    assert np.abs(audio - expected).max() < 1 / 2**14  # 16-bit PCM quantisation
    assert relative_difference(audio, expected) < 1e-3 + AUDIO_TOLERANCE


def test_several_waveforms_get_numbered_flac_files(tiny: ModelUnderTest, tmp_path: Path) -> None:
    output = tmp_path / "rain.flac"
    result = run_cli(
        "generate",
        "rain",
        "thunder",
        "--engine",
        str(tiny.export),
        "--output",
        str(output),
        "--waveforms",
        "2",
        "--steps",
        "2",
        "--duration",
        "0.5",
        "--negative-prompt",
        "music",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["rain_0.flac", "rain_1.flac", "rain_2.flac", "rain_3.flac"]
    for name in written:
        info = soundfile.info(str(tmp_path / name))
        assert info.format == "FLAC" and info.samplerate == 16000 and info.frames == 8000


def test_outputs_get_the_permissions_of_the_users_umask(tiny: ModelUnderTest, tmp_path: Path) -> None:
    for umask in (0o022, 0o077):
        output = tmp_path / f"umask-{umask:o}.wav"
        result = run_cli(
            "generate", "a", "--engine", str(tiny.export), "--output", str(output), "--steps", "1", umask=umask
        )
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(output.stat().st_mode) == 0o666 & ~umask


def test_seed_is_printed_when_drawn(tiny: ModelUnderTest, tmp_path: Path) -> None:
    result = run_cli(
        "generate",
        "a bell",
        "--engine",
        str(tiny.export),
        "--output",
        str(tmp_path / "a.wav"),
        "--steps",
        "1",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    seed = int(result.stdout.split("seed ")[1].split()[0])
    again = run_cli(
        "generate",
        "a bell",
        "--engine",
        str(tiny.export),
        "--output",
        str(tmp_path / "b.wav"),
        "--steps",
        "1",
        "--seed",
        str(seed),
        "--quiet",
    )
    assert again.returncode == 0, again.stderr
    assert np.array_equal(soundfile.read(tmp_path / "a.wav")[0], soundfile.read(tmp_path / "b.wav")[0])


def test_export_and_random_model_commands(tmp_path: Path) -> None:
    model = tmp_path / "model"
    result = run_cli("random-model", "--preset", "tiny", "--output", str(model))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (model / "tokenizer").iterdir()) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    result = run_cli("export", "--model", str(model), "--output", str(tmp_path / "engine"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "engine" / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_scheduler_and_its_config_from_the_command_line(tiny: ModelUnderTest, tmp_path: Path) -> None:
    from audioldm_trt.engine import Engine

    output = tmp_path / "karras.wav"
    config = '{"use_karras_sigmas": true, "solver_order": 3}'
    result = run_cli(
        "generate",
        "wind",
        "--engine",
        str(tiny.export),
        "--output",
        str(output),
        "--scheduler",
        "DPMSolverMultistepScheduler",
        "--scheduler-config",
        config,
        "--steps",
        "6",
        "--seed",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "DPMSolverMultistepScheduler" in result.stdout
    engine = Engine.load(
        tiny.export,
        backend="onnxruntime-cpu",
        scheduler="DPMSolverMultistepScheduler",
        scheduler_config={"use_karras_sigmas": True, "solver_order": 3},
    )
    expected = engine.generate("wind", num_inference_steps=6, seed=2)[0]
    assert np.abs(soundfile.read(output, dtype="float32")[0] - expected).max() < 1 / 2**14


def test_audio_input_modes_from_the_command_line(tiny: ModelUnderTest, tmp_path: Path) -> None:
    """``--input-audio`` with each mode writes Engine.generate's audio for the same arguments."""
    clip = tmp_path / "in.flac"
    t = np.arange(22050) / 22050
    soundfile.write(clip, np.stack([np.sin(2 * np.pi * 300 * t), np.sin(2 * np.pi * 500 * t)], axis=1) * 0.3, 22050)
    modes = [
        (["--strength", "0.6"], {"strength": 0.6}),
        (["--inpaint", "0.2:0.6"], {"inpaint": (0.2, 0.6)}),
        (["--super-resolution", "3000"], {"super_resolution": 3000.0}),
        (["--extend", "0.5"], {"extend": 0.5}),
    ]
    for flags, kwargs in modes:
        output = tmp_path / "out.wav"
        result = run_cli(
            "generate",
            "a dog",
            "--engine",
            str(tiny.export),
            "--output",
            str(output),
            "--input-audio",
            str(clip),
            "--seed",
            "3",
            "--steps",
            "4",
            *flags,
        )
        assert result.returncode == 0, result.stderr
        audio, rate = soundfile.read(output, dtype="float32")
        assert rate == 16000
        expected = tiny.engine.generate("a dog", seed=3, num_inference_steps=4, audio=clip, **kwargs)[0]
        assert audio.shape == expected.shape == (int((1.0 + kwargs.get("extend", 0.0)) * 16000),)
        assert np.abs(audio - expected).max() < 1 / 2**14  # 16-bit PCM quantisation
