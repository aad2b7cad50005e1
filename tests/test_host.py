"""The C API (hosts/) as host authors use it: built with CMake and a C compiler, installed and found with
find_package and pkg-config, called from the C++ demo host, from C programs and from a Python host, in their own
processes, with the real embedded interpreter and engine.

CFLAGS and CXXFLAGS reach the builds: CFLAGS=-fsanitize=address CXXFLAGS=-fsanitize=address (with
ASAN_OPTIONS=detect_leaks=0: the interpreter is never finalised) runs these tests under AddressSanitizer."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile

from audioldm_trt.engine import BackendUnavailableError, Engine

from conftest import ModelUnderTest
from test_cli import run_cli

REPOSITORY = Path(__file__).parents[1]
HOSTS = REPOSITORY / "hosts"
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
    compile_c += os.environ.get("CFLAGS", "").split()
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


def loading_later() -> dict[str, str]:
    """The environment of a process that dlopens the library: under AddressSanitizer its runtime must come first,
    and libstdc++ with it (its __cxa_throw interceptor fails when libstdc++ arrives with a later dlopen)."""
    if "-fsanitize=address" not in os.environ.get("CXXFLAGS", ""):
        return dict(os.environ)
    libraries = (
        run([os.environ.get("CC", "cc"), f"-print-file-name={name}"]) for name in ("libasan.so", "libstdc++.so.6")
    )
    return {**os.environ, "LD_PRELOAD": " ".join(library.stdout.strip() for library in libraries)}


def reported_lines(stdout: str) -> dict[str, tuple[int, str]]:
    """check-host's NAME<TAB>STATUS<TAB>MESSAGE lines, by name."""
    lines = (line.split("\t") for line in stdout.splitlines())
    return {parts[0]: (int(parts[1]), parts[2]) for parts in lines if len(parts) == 3 and parts[1].isdigit()}


@pytest.mark.parametrize(
    ("arguments", "suffix"),
    [
        (["--seed", "3", "--steps", "4", "--duration", "1.5"], ".wav"),
        (
            [
                *("--seed", "-1", "--steps", "3", "--guidance", "4", "--negative-prompt", "wind"),
                *("--scheduler", "DPMSolverMultistepScheduler", "--backend", "onnxruntime-cpu", "--threads", "1"),
            ],
            ".wav",
        ),
        (["--seed", "5", "--steps", "3"], ".flac"),
        (["--seed", "2", "--steps", "3", "--backend", "openvino", "--precision", "bf16"], ".wav"),
    ],
    ids=["seed-steps-duration", "negative-guidance-scheduler", "flac", "openvino-bf16"],
)
def test_the_demo_host_writes_the_file_of_generate(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path, arguments: list[str], suffix: str
) -> None:
    """Byte for byte, WAV and FLAC; the openvino case shows precision reaching the engine from C (bf16 where the
    CPU computes it, else both refuse it alike)."""
    ours, theirs = tmp_path / f"host{suffix}", tmp_path / f"cli{suffix}"
    prompt = "a dog barking"
    host = run(
        [host_build / "audioldm-host", "--engine", tiny.export, "--prompt", prompt, "--output", ours, *arguments]
    )
    cli = run_cli("generate", prompt, "--engine", str(tiny.export), "--output", str(theirs), *arguments)
    assert (host.returncode, cli.returncode) in [(0, 0), (1, 1)], host.stderr + cli.stderr
    if host.returncode == 1:  # bf16 refused on this CPU, by both in the same words
        assert "bf16" in cli.stderr and cli.stderr.split(": error: ")[1] in host.stderr
        return
    assert ours.read_bytes() == theirs.read_bytes()
    assert f"wrote {ours} (" in host.stdout
    pcm, rate = soundfile.read(ours, dtype="int16")
    assert rate == tiny.engine.sampling_rate and len(np.unique(pcm)) > 1000  # real audio, not silence


@pytest.mark.parametrize(
    ("arguments", "status", "message"),
    [
        ({"--steps": "0"}, 2, "audioldm-host: argument --steps: must be a positive integer, got 0"),
        ({"--output": "out.mp3"}, 2, "audioldm-host: --output must end in .wav or .flac, got out.mp3"),
        (
            {"--engine": "/nonexistent"},
            1,
            "audioldm-host: error: EngineDirectoryError: engine directory /nonexistent does not exist",
        ),
        ({"--backend": "no-such-backend"}, 2, "audioldm-host: error: ValueError: unknown backend 'no-such-backend'"),
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


def test_sigint_cancels_the_demo_host_and_nothing_is_written(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path
) -> None:
    """The interpreter installs no signal handler: SIGINT reaches the host's, whose progress callback cancels."""
    command = [host_build / "audioldm-host", "--engine", tiny.export, "--prompt", "rain", "--steps", "500"]
    with subprocess.Popen(
        [*map(str, command), "--output", str(tmp_path / "out.wav")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as host:
        assert host.stdout is not None and host.stdout.readline().startswith("running on ")
        host.send_signal(signal.SIGINT)
        _, stderr = host.communicate(timeout=60)
    assert host.returncode == 130, stderr
    assert re.fullmatch(
        r"audioldm-host: error: Cancelled: the progress callback stopped the generation after UNet call \d+ of 500\n",
        stderr,
    ), stderr
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
    """Every status but CANCELLED (tested below) and PYTHON_ERROR (the interpreter tests); a message from Python
    names the exception's type."""
    result = run([host_build / "check-host", "errors", tiny.export, tmp_path])
    assert result.returncode == 0, result.stderr
    reported = reported_lines(result.stdout)

    def engine_message(**arguments: Any) -> str:
        with pytest.raises(ValueError) as error:
            tiny.engine.generate(**{"prompt": "a dog barking", "num_inference_steps": 2, "seed": 0, **arguments})
        return f"ValueError: {error.value}"

    with pytest.raises(BackendUnavailableError) as unavailable:
        Engine.load(tiny.export, backend="tensorrt")
    expected = {
        "load_missing_directory": (
            "ENGINE_DIRECTORY",
            "EngineDirectoryError: engine directory /nonexistent/engine does not exist",
        ),
        "load_incomplete_directory": ("ENGINE_DIRECTORY", f"EngineDirectoryError: {tmp_path / 'manifest.json'} is "),
        "load_unknown_backend": ("INVALID_ARGUMENT", "ValueError: unknown backend 'no-such-backend'"),
        "load_backend_unavailable": ("BACKEND_UNAVAILABLE", f"BackendUnavailableError: {unavailable.value}"),
        "load_unknown_scheduler": ("INVALID_ARGUMENT", "ValueError: unknown scheduler 'NoSuchScheduler'"),
        "load_unknown_precision": ("INVALID_ARGUMENT", "ValueError: precision fp8 needs backend openvino"),
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
        "guidance_overflows": ("NON_FINITE_OUTPUT", "NonFiniteOutputError: unet produced NaN or infinity"),
        "struct_size_zero": (
            "INVALID_ARGUMENT",
            "audioldm_trt_generate_params.struct_size is 0: fill the struct with audioldm_trt_generate_params_init",
        ),
        "write_unknown_format": ("INVALID_ARGUMENT", "path must end in .wav or .flac, got out.mp3"),
        "write_missing_directory": ("IO_ERROR", "cannot write /nonexistent/out.wav: its directory does not exist"),
        "write_flac_rate": ("FAILED", "LibsndfileError: Error opening "),
        "initialize_again": ("INVALID_ARGUMENT", f"Python already runs as {sys.executable}"),
        "generate_after_errors": ("OK", ""),
    }
    assert set(reported) == set(expected), result.stdout
    for name, (status, message) in expected.items():
        assert reported[name][0] == STATUS[status], (name, reported[name])
        assert reported[name][1].startswith(message) and "\n" not in reported[name][1], (name, reported[name])
    assert reported["write_flac_rate"][1].endswith("flac does not support this sample rate.")
    assert not (tmp_path / "out.flac").exists()


def test_progress_counts_and_a_cancel_from_the_callback(tiny: ModelUnderTest, host_build: Path) -> None:
    result = run([host_build / "check-host", "progress", tiny.export])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split("\t")[1] for line in lines if line.startswith("full\t") and "/" in line] == [
        f"{done}/4" for done in range(1, 5)
    ]
    assert [line.split("\t")[1] for line in lines if line.startswith("stopped\t") and "/" in line] == ["1/10", "2/10"]
    reported = reported_lines(result.stdout)
    assert reported["full"] == (STATUS["OK"], "")
    assert reported["stopped"] == (
        STATUS["CANCELLED"],
        "Cancelled: the progress callback stopped the generation after UNet call 2 of 10",
    )
    assert "audio does not match the status" not in result.stdout


def test_cancel_from_another_thread_returns_within_one_unet_call(tiny: ModelUnderTest, host_build: Path) -> None:
    """500 steps take seconds; after audioldm_trt_cancel the call makes at most the UNet call it was in, and a
    later call on the engine runs to its end."""
    result = run([host_build / "check-host", "cancel", tiny.export])
    assert result.returncode == 0, result.stderr
    values = dict(line.split("\t", 1) for line in result.stdout.splitlines())
    status, message = reported_lines(result.stdout)["cancelled"]
    assert status == STATUS["CANCELLED"]
    assert re.fullmatch(r"Cancelled: audioldm_trt_cancel stopped the generation after UNet call \d+ of 500", message)
    assert int(values["calls_after_cancel"]) <= 1
    assert float(values["milliseconds_to_return"]) < 2000, values
    assert reported_lines(result.stdout)["later"] == (STATUS["OK"], "")


def test_calls_from_two_threads_overlap_in_time(tiny: ModelUnderTest, host_build: Path) -> None:
    """Each generation waits in its first progress callback for the other's first UNet call: both get there only
    if neither call holds a lock (or the GIL) the other needs."""
    result = run([host_build / "check-host", "overlap", tiny.export])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"thread {i}\t{STATUS['OK']}\tmet 1" for i in range(2)]


def test_the_seed_output_reproduces_the_audio(tiny: ModelUnderTest, host_build: Path, tmp_path: Path) -> None:
    result = run([host_build / "check-host", "seed", tiny.export, tmp_path])
    assert result.returncode == 0, result.stderr
    seed = int(dict(line.split("\t", 1) for line in result.stdout.splitlines())["seed"])
    expected = tiny.engine.generate("a bell", num_inference_steps=3, seed=seed)
    np.testing.assert_array_equal(np.fromfile(tmp_path / "0.f32", dtype=np.float32).reshape(expected.shape), expected)


def test_struct_size_lets_older_and_newer_callers_in(tiny: ModelUnderTest, host_build: Path) -> None:
    """A struct from an older header (without the progress fields) works with the defaults for what it lacks, and
    init writes no byte past it; a newer header's struct works while its unknown fields are zero."""
    result = run([host_build / "check-host", "structs", tiny.export])
    assert result.returncode == 0, result.stderr
    assert "wrote past struct_size" not in result.stdout and "audio differs" not in result.stdout, result.stdout
    assert reported_lines(result.stdout) == {
        "current": (STATUS["OK"], ""),
        "older": (STATUS["OK"], ""),
        "newer_unset": (STATUS["OK"], ""),
        "newer_set": (
            STATUS["INVALID_ARGUMENT"],
            "audioldm_trt_generate_params sets fields this library (0.1.0) does not have",
        ),
    }


def hostile_environment(tmp_path: Path) -> dict[str, str]:
    """The host's environment at its worst: a PYTHONHOME that does not exist, a PYTHONPATH whose numpy fails,
    the C locale, and AUDIOLDM_TRT_PYTHON naming no interpreter."""
    (tmp_path / "hostile/numpy").mkdir(parents=True)
    (tmp_path / "hostile/numpy/__init__.py").write_text('raise ImportError("the hostile numpy")\n')
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PYTHON", "VIRTUAL_ENV"))}
    return environment | {
        "LANG": "C",
        "PYTHONHOME": str(tmp_path / "nonexistent"),
        "PYTHONPATH": str(tmp_path / "hostile"),
        "AUDIOLDM_TRT_PYTHON": str(tmp_path / "nonexistent/bin/python"),
    }


def test_the_interpreter_ignores_the_hosts_environment_and_locale(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path
) -> None:
    """Nothing read from the environment; the C locale and LC_CTYPE left as they were (no coercion); UTF-8
    prompts and paths still work (UTF-8 mode); nothing on stderr."""
    result = run([host_build / "check-host", "isolation", tiny.export, tmp_path], env=hostile_environment(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert [lines[0], lines[-1]] == ["before\tC\t(unset)", "after\tC\t(unset)"]
    assert reported_lines(result.stdout) == {"generate": (STATUS["OK"], ""), "write": (STATUS["OK"], "")}
    assert soundfile.info(tmp_path / "café.wav").samplerate == tiny.engine.sampling_rate


@pytest.mark.parametrize("variable", ["PYTHONPATH", "AUDIOLDM_TRT_PYTHON"])
def test_a_host_that_opts_into_the_environment_gets_it(host_build: Path, tmp_path: Path, variable: str) -> None:
    environment = hostile_environment(tmp_path)
    del environment["PYTHONHOME"]  # that one stops the interpreter before anything else shows
    if variable == "PYTHONPATH":
        del environment["AUDIOLDM_TRT_PYTHON"]
        message = "cannot import the audioldm_trt engine in Python "
    else:
        del environment["PYTHONPATH"]
        message = f"python interpreter {tmp_path}/nonexistent/bin/python does not exist"
    result = run([host_build / "check-host", "python", "-", "1"], env=environment)
    assert result.returncode == 0, result.stderr
    status, reported = reported_lines(result.stdout)["initialize"]
    assert status == STATUS["PYTHON_ERROR"] and reported.startswith(message), reported
    if variable == "PYTHONPATH":
        assert reported.endswith("ImportError: the hostile numpy")


def make_venv(path: Path) -> Path:
    """A virtual environment of this Python without audioldm-trt; its bin/python."""
    assert run([sys.executable, "-m", "venv", "--without-pip", path]).returncode == 0
    return path / "bin/python"


def site_packages(venv: Path) -> Path:
    return venv / f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def test_the_interpreter_is_the_one_asked_for_and_its_versions_are_checked(host_build: Path, tmp_path: Path) -> None:
    """A missing interpreter; one without audioldm_trt; a virtual environment of another Python minor version; a
    package of another release: one-line errors naming both sides, on every later call too."""
    bare = make_venv(tmp_path / "bare")
    other_python = make_venv(tmp_path / "other-python")
    config = other_python.parents[1] / "pyvenv.cfg"
    config.write_text(re.sub(r"(?m)^(version(?:_info)?) = .*$", r"\1 = 3.99.0", config.read_text()))
    other_release = make_venv(tmp_path / "other-release")
    metadata = site_packages(tmp_path / "other-release") / "audioldm_trt-9.0.0.dist-info"
    metadata.mkdir()
    (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: audioldm-trt\nVersion: 9.0.0\n")
    linked = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python, message in [
        (tmp_path / "missing/bin/python", f"python interpreter {tmp_path}/missing/bin/python does not exist"),
        (bare, f"the audioldm-trt Python package is not installed in {bare}: PackageNotFoundError"),
        (other_python, f"the virtual environment of {other_python} is Python 3.99, this library links Python {linked}"),
        (other_release, f"the audioldm-trt Python package in {other_release} is 9.0.0, this library is 0.1.0"),
    ]:
        result = run([host_build / "check-host", "python", python, "0"])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert [line.split("\t")[:2] for line in lines] == [
            ["initialize", str(STATUS["PYTHON_ERROR"])],
            ["load", str(STATUS["PYTHON_ERROR"])],
        ]
        assert all(message in line for line in lines), lines


def test_the_library_and_package_versions_are_one(host_build: Path) -> None:
    """The header's version is the Python package's, and the SONAME carries the ABI: 0.MINOR while MAJOR is 0."""
    header = (HOSTS / "include/audioldm_trt.h").read_text()
    parts = [re.search(rf"#define AUDIOLDM_TRT_VERSION_{p} (\d+)", header) for p in ("MAJOR", "MINOR", "PATCH")]
    version = ".".join(match.group(1) for match in parts if match is not None)
    assert version == tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["version"]
    assert f'#define AUDIOLDM_TRT_VERSION "{version}"' in header
    major, minor, _ = version.split(".")
    soname = f"libaudioldm_trt.so.{major if major != '0' else f'0.{minor}'}"
    assert f"Library soname: [{soname}]" in run(["readelf", "-d", host_build / "libaudioldm_trt.so"]).stdout


PYTHON_HOST = """
import ctypes, gc, sys, threading
from audioldm_trt.engine import Engine, EngineError

library = ctypes.PyDLL(sys.argv[1])  # PyDLL: every call keeps the calling thread's GIL
library.audioldm_trt_engine_load.argtypes = [ctypes.c_char_p, ctypes.c_void_p] + [ctypes.c_void_p] * 2
library.audioldm_trt_engine_free.argtypes = [ctypes.c_void_p]
start = threading.Barrier(4)
handles = [ctypes.c_void_p() for _ in range(4)]
statuses = [None] * 4

def first_call(i):
    start.wait()
    statuses[i] = library.audioldm_trt_engine_load(sys.argv[2].encode(), None, ctypes.byref(handles[i]), None)

threads = [threading.Thread(target=first_call, args=(i,)) for i in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("statuses", statuses)
engines = [o for o in gc.get_objects() if isinstance(o, Engine)]  # the library's engines, held here too
for handle in handles:
    library.audioldm_trt_engine_free(handle)
closed = 0
for engine in engines:
    try:
        engine.generate("rain", num_inference_steps=2)
    except EngineError as error:
        closed += "closed" in str(error)
print("closed", closed, "of", len(engines))
"""


def test_a_python_host_whose_threads_hold_the_gil_calls_in_first(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path
) -> None:
    """Four threads of a Python host call in at once, each holding the GIL (ctypes.PyDLL): no deadlock in
    start-up, the host's interpreter is used; and audioldm_trt_engine_free closes the engine, even while Python
    still references it."""
    script = tmp_path / "python_host.py"
    script.write_text(PYTHON_HOST)
    result = run([sys.executable, script, host_build / "libaudioldm_trt.so", tiny.export], env=loading_later())
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [f"statuses {[STATUS['OK']] * 4}", "closed 4 of 4"]


@pytest.fixture(scope="session")
def installed(host_build: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`cmake --install` of the build into a fresh prefix."""
    prefix = tmp_path_factory.mktemp("hosts-install")
    result = run(["cmake", "--install", host_build, "--prefix", prefix])
    assert result.returncode == 0, result.stdout + result.stderr
    return prefix


def build_consumer(prefix: Path, way: str, build: Path) -> Path:
    """hosts/examples/consumer built against the installed package as README.md says: with CMake's find_package,
    or with the flags of pkg-config."""
    consumer = HOSTS / "examples/consumer"
    build.mkdir(parents=True, exist_ok=True)
    if way == "find_package":
        commands: list[list[str | Path]] = [
            ["cmake", "-S", consumer, "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"],
            ["cmake", "--build", build],
        ]
    else:
        environment = {**os.environ, "PKG_CONFIG_PATH": str(prefix / "lib/pkgconfig")}
        flags = run(["pkg-config", "--cflags", "--libs", "audioldm_trt"], env=environment)
        assert flags.returncode == 0, flags.stderr
        compile_c = [os.environ.get("CC", "cc"), "-std=c11", "-Wall", "-Wextra", "-Werror"]
        commands = [[*compile_c, consumer / "consumer.c", "-o", build / "consumer", *flags.stdout.split()]]
        commands[0] += [f"-Wl,-rpath,{prefix / 'lib'}", *os.environ.get("CFLAGS", "").split()]
    for command in commands:
        result = run(command)
        assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}"
    return build / "consumer"


@pytest.mark.parametrize("way", ["find_package", "pkg-config"])
def test_a_consumer_builds_against_the_installed_package(
    tiny: ModelUnderTest, installed: Path, tmp_path: Path, way: str
) -> None:
    assert {"include/audioldm_trt.h", "lib/cmake/audioldm_trt/audioldm_trt-config.cmake", "bin/audioldm-host"} <= {
        str(path.relative_to(installed)) for path in installed.rglob("*")
    }
    consumer = build_consumer(installed, way, tmp_path / "build")
    result = run([consumer, tiny.export, tmp_path / "out.wav"])
    assert result.returncode == 0, result.stderr
    assert "denoising 5/5" in result.stderr
    expected = tiny.engine.generate("a dog barking in the rain", num_inference_steps=5, seed=0)
    audio, rate = soundfile.read(tmp_path / "out.wav", dtype="float32")
    assert rate == tiny.engine.sampling_rate and audio.shape == (expected.shape[1],)
    np.testing.assert_allclose(audio, expected[0], atol=1 / 32767)  # 16-bit PCM


def test_a_library_installed_into_a_venv_starts_its_python(
    tiny: ModelUnderTest, host_build: Path, tmp_path: Path
) -> None:
    """`cmake --install --prefix VENV`: the library starts VENV/bin/python, found beside it at run time (here
    one without audioldm-trt, so the error names it)."""
    python = make_venv(tmp_path / "venv")
    result = run(["cmake", "--install", host_build, "--prefix", tmp_path / "venv"])
    assert result.returncode == 0, result.stdout + result.stderr
    consumer = build_consumer(tmp_path / "venv", "find_package", tmp_path / "build")
    result = run([consumer, tiny.export, tmp_path / "out.wav"])
    assert result.returncode == 1
    assert result.stderr == f"consumer: the audioldm-trt Python package is not installed in {python}: " + (
        "PackageNotFoundError: No package metadata was found for audioldm-trt\n"
    )


def test_the_readme_shows_the_consumer_the_tests_build() -> None:
    readme = (REPOSITORY / "README.md").read_text()
    for name in ("consumer.c", "CMakeLists.txt"):
        assert (HOSTS / "examples/consumer" / name).read_text() in readme, name


def test_a_host_that_loads_the_library_with_rtld_local(tiny: ModelUnderTest, host_build: Path) -> None:
    """FFIs (C#, Java, Swift, Python's ctypes) dlopen the library with RTLD_LOCAL, which hides libpython's
    symbols from the extension modules the engine imports unless the library exposes them."""
    result = run([host_build / "check-dlopen", host_build / "libaudioldm_trt.so", tiny.export], env=loading_later())
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{STATUS['OK']}\t\n"
