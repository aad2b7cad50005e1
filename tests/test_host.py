"""The C API (hosts/) as host authors use it: built with CMake and a C compiler, called from the C++ demo host and
from a C program, in their own processes, with the real embedded interpreter and engine."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import Engine

from conftest import ModelUnderTest
from test_cli import run_cli

HOSTS = Path(__file__).parents[1] / "hosts"
#: The status codes of the header, by name: OK, INVALID_ARGUMENT, ...
STATUS = {
    name: int(code)
    for name, code in re.findall(r"AUDIOLDM_TRT_(\w+) = (\d+)", (HOSTS / "include/audioldm_trt.h").read_text())
}
#: check_host.c's four requests, as Engine.generate arguments.
THREAD_REQUESTS: list[dict[str, Any]] = [
    {"prompt": "a dog barking", "seed": 1},
    {"prompt": "rain on a roof", "negative_prompt": "wind", "seed": 2, "audio_length_in_s": 0.9},
    {"prompt": "a bell", "guidance_scale": 1.0, "num_waveforms_per_prompt": 2, "seed": 3},
    {"prompt": "birds", "eta": 0.5, "num_inference_steps": 4, "seed": 2**64 - 1},
]


def run(command: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(scope="session")
def host_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library and demo built as README.md says, and the C test programs compiled and linked as a host without
    CMake would; once per session."""
    build = tmp_path_factory.mktemp("hosts-build")
    compile_c = [os.environ.get("CC", "cc"), "-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-I", HOSTS / "include"]
    link = ["-L", build, "-laudioldm_trt", f"-Wl,-rpath,{build}", "-lpthread", "-lm"]
    for command in (
        ["cmake", "-S", HOSTS, "-B", build, f"-DPython_EXECUTABLE={sys.executable}"],
        ["cmake", "--build", build, "-j", "2"],
        [*compile_c, HOSTS / "tests/check_host.c", "-o", build / "check-host", *link],
        [*compile_c, HOSTS / "tests/check_dlopen.c", "-o", build / "check-dlopen", "-ldl"],
    ):
        result = run(command)
        assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}"
    return build


@pytest.mark.parametrize(
    "arguments",
    [
        ["--seed", "3", "--steps", "4", "--duration", "1.5"],
        [
            *("--seed", "-1", "--steps", "3", "--guidance", "4", "--negative-prompt", "wind"),
            *("--scheduler", "DPMSolverMultistepScheduler", "--backend", "onnxruntime-cpu", "--threads", "1"),
        ],
    ],
    ids=["seed-steps-duration", "negative-guidance-scheduler"],
)
def test_the_demo_host_writes_the_wav_of_generate(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path, arguments: list[str]
) -> None:
    ours, theirs = tmp_path / "host.wav", tmp_path / "cli.wav"
    prompt = "a dog barking"
    host = run(
        [host_build / "audioldm-host", "--engine", tiny.export, "--prompt", prompt, "--output", ours, *arguments]
    )
    assert host.returncode == 0, host.stderr
    cli = run_cli("generate", prompt, "--engine", str(tiny.export), "--output", str(theirs), *arguments)
    assert cli.returncode == 0, cli.stderr
    assert ours.read_bytes() == theirs.read_bytes()
    assert f"wrote {ours} (" in host.stdout
    pcm, rate = soundfile.read(ours, dtype="int16")
    assert rate == tiny.engine.sampling_rate and len(np.unique(pcm)) > 1000  # real audio, not silence


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        ({"--steps": "0"}, 2, "audioldm-host: argument --steps: must be a positive integer, got 0"),
        ({"--output": "out.mp3"}, 2, "audioldm-host: --output must end in .wav or .flac, got out.mp3"),
        ({"--engine": "/nonexistent"}, 1, "audioldm-host: error: engine directory /nonexistent does not exist"),
        ({"--backend": "no-such-backend"}, 2, "audioldm-host: error: unknown backend 'no-such-backend'"),
    ],
    ids=["steps", "output", "engine", "backend"],
)
def test_the_demo_host_fails_with_one_line(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path, arguments: dict[str, str], status: int, message: str
) -> None:
    options = {"--engine": str(tiny.export), "--prompt": "rain", "--output": str(tmp_path / "out.wav"), **arguments}
    result = run([host_build / "audioldm-host", *(item for pair in options.items() for item in pair)])
    assert result.returncode == status
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_four_host_threads_get_the_audio_of_sequential_calls(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path
) -> None:
    result = run([host_build / "check-host", "threads", tiny.export, tmp_path, "1"])
    assert result.returncode == 0, result.stderr
    engine = Engine.load(tiny.export, backend="onnxruntime-cpu", threads=1, verify=False)
    outputs = []
    for index, request in enumerate(THREAD_REQUESTS):
        expected = engine.generate(**{"num_inference_steps": 3, **request})
        outputs.append(np.fromfile(tmp_path / f"{index}.f32", dtype=np.float32).reshape(expected.shape))
        np.testing.assert_array_equal(outputs[-1], expected)
    assert not np.array_equal(outputs[0], outputs[3])  # different requests, different audio


def test_bad_calls_return_statuses_and_the_engine_messages(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path
) -> None:
    result = run([host_build / "check-host", "errors", tiny.export, tmp_path])
    assert result.returncode == 0, result.stderr
    reported = {
        name: (int(status), message)
        for name, status, message in (line.split("\t") for line in result.stdout.splitlines())
    }

    def engine_message(**arguments: Any) -> str:
        with pytest.raises(ValueError) as error:
            tiny.engine.generate(**{"prompt": "a dog barking", "num_inference_steps": 2, "seed": 0, **arguments})
        return str(error.value)

    expected = {
        "load_missing_directory": ("ENGINE_DIRECTORY", "engine directory /nonexistent/engine does not exist"),
        "load_incomplete_directory": ("ENGINE_DIRECTORY", f"{tmp_path / 'manifest.json'} is missing"),
        "load_unknown_backend": ("INVALID_ARGUMENT", "unknown backend 'no-such-backend'"),
        "load_unknown_scheduler": ("INVALID_ARGUMENT", "NoSuchScheduler"),
        "load_negative_threads": ("INVALID_ARGUMENT", "threads must be 0 (one per core) or positive"),
        "load_null_directory": ("INVALID_ARGUMENT", "directory is NULL"),
        "load": ("OK", ""),
        "steps_zero": ("INVALID_ARGUMENT", engine_message(num_inference_steps=0)),
        "duration_negative": ("INVALID_ARGUMENT", engine_message(audio_length_in_s=-1.0)),
        "guidance_nan": ("INVALID_ARGUMENT", engine_message(guidance_scale=float("nan"))),
        "waveforms_negative": ("INVALID_ARGUMENT", engine_message(num_waveforms_per_prompt=-2)),
        "eta_negative": ("INVALID_ARGUMENT", engine_message(eta=-0.5)),
        "prompt_null": ("INVALID_ARGUMENT", "prompt is NULL"),
        "prompt_not_utf8": ("INVALID_ARGUMENT", "prompt is not valid UTF-8"),
        "engine_null": ("INVALID_ARGUMENT", "engine is NULL"),
        "write_unknown_format": ("INVALID_ARGUMENT", "path must end in .wav or .flac, got out.mp3"),
        "write_missing_directory": ("IO_ERROR", "cannot write /nonexistent/out.wav: its directory does not exist"),
        "initialize_again": ("INVALID_ARGUMENT", f"Python already runs as {sys.executable}"),
        "generate_after_errors": ("OK", ""),
    }
    assert set(reported) == set(expected), result.stdout
    for name, (status, message) in expected.items():
        assert reported[name][0] == STATUS[status], (name, reported[name])
        assert message in reported[name][1] and "\n" not in reported[name][1], (name, reported[name])


def test_the_interpreter_is_the_one_asked_for(host_build: Path, tmp_path: Path) -> None:
    """A missing interpreter, then one without audioldm_trt installed: error statuses, on every later call too."""
    assert run([sys.executable, "-m", "venv", "--without-pip", tmp_path / "bare"]).returncode == 0
    for python, message in [
        (tmp_path / "missing/bin/python", f"python interpreter {tmp_path}/missing/bin/python does not exist"),
        (tmp_path / "bare/bin/python", "No module named 'audioldm_trt'"),
    ]:
        result = run([host_build / "check-host", "python", python])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split("\t")[:2] for line in lines] == [
            ["initialize", str(STATUS["PYTHON_ERROR"])],
            ["load", str(STATUS["PYTHON_ERROR"])],
        ]
        assert all(message in line for line in lines), lines


def test_a_host_that_loads_the_library_with_rtld_local(tiny: ModelUnderTest, host_build: Path) -> None:
    """FFIs (C#, Java, Swift, Python's ctypes) dlopen the library with RTLD_LOCAL, which hides libpython's
    symbols from the extension modules the engine imports unless the library exposes them."""
    result = run([host_build / "check-dlopen", host_build / "libaudioldm_trt.so", tiny.export])
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{STATUS['OK']}\t\n"
