"""The GPU run as one prepared plan that fits one lent machine's window, and its rehearsal on CPU.

The lent GPU machine (benchmarks/README.md, "The GPU plan") has no network, takes at most 64 MiB per call, goes
back after 30 s idle and is lent for minutes. So everything it lacks is staged here first, and the machine
only receives, prepares and measures:

    python -m audioldm_trt.benchmarks.gpu_plan stage gpu-plan        here: wheels, bundles, parts, the calls
    python3 benchmarks/gpu_plan.py call N --out "$OUT"               there: call N of the printed sequence

``stage`` gathers the wheels the machine lacks into bundles (``base``: this package and what the exports and
the bench need; ``onnxruntime``: onnxruntime-gpu; then the optional stages' ``openvino`` and ``serve``), packs
them into one xz stream cut into parts of at most ``PART_BYTES``, and writes ``plan.json`` (bundles, parts,
stages, budgets) and ``calls.md`` (the device calls, one part each). On the machine, call 1 starts the runner
detached (a session of its own, so it outlives the call): it installs ``base`` with ``pip --target``, writes
the random-weight model and exports it while the later parts travel, installs ONNX Runtime when its bundle is
complete, checks in a process without torch that a session really runs on the device's provider, then runs the
stages in order, each within its own budget and the plan's deadline, the table first. Every call leaves in
``$OUT`` what has finished so far (one archive and the markdown table), so a machine lost in the middle still
returns the stages done; the last call waits for the runner.

This file imports nothing outside the standard library at module level: on the machine it runs as a plain
script before anything is installed. ``--rehearsal`` stages the same plan for this machine's Python, the tiny
preset and ONNX Runtime's CPU provider standing in for CUDA; ``tests/test_gpu_plan.py`` runs it end to end.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

#: The most bytes one call carries of the staged stream (the call's limit is 64 MiB with the working tree).
PART_BYTES = 60 * 2**20
#: Where the plan lives on the machine, outside the checkout that each call replaces.
DEVICE_ROOT = Path("/tmp/audioldm-gpu-plan")
#: The folder of the repository that ``stage`` writes and the calls carry (git-ignored).
PLAN_FOLDER = "gpu-plan"
#: The CUDA 13 build of ONNX Runtime for the machine's Python 3.12 (the CUDA 13 builds start at 1.27).
ONNXRUNTIME_GPU = "onnxruntime-gpu==1.31.1"
#: The machine's Python and the wheel tags it takes.
DEVICE_PYTHON = "3.12"
DEVICE_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_5_x86_64",
    "manylinux1_x86_64",
)
#: Distributions the machine's image already has (the device tool's KINDS.md, read 2026-11-17): a wheel of
#: one of these is never carried; the image's version is used.
_IMAGE_PACKAGE_NAMES = """
    absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
    jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
    linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
    numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
    nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
    nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
    onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
    propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
    pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
    pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
    sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
    tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
    toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
    triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
    xxhash yarl zipp
"""
IMAGE_PACKAGES = frozenset(_IMAGE_PACKAGE_NAMES.split())


@dataclass(frozen=True)
class BundleSpec:
    """A set of wheels that travels together; ``requirements`` are resolved without their dependencies unless
    ``with_dependencies`` (then every dependency the image lacks comes along)."""

    name: str
    requirements: tuple[str, ...]
    with_dependencies: bool = False


@dataclass(frozen=True)
class Stage:
    """One step of the run: a command, the bundles it needs, and the seconds it may take."""

    name: str
    command: list[str]
    budget_s: float
    needs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """What a plan measures and where: the GPU machine's, or the CPU rehearsal's."""

    name: str
    preset: str
    #: The ONNX Runtime provider that the check after the install must see running.
    provider: str
    bundles: tuple[BundleSpec, ...]
    stages: tuple[Stage, ...]
    #: Seconds from call 1 within which the runner ends, whatever is left.
    deadline_s: float
    #: xz preset of the stream (0 fast, 9 small).
    xz_preset: int
    #: ``bench --backends`` whose exports the preparation writes (each precision once).
    prepare_backends: tuple[str, ...]
    #: The most bytes of the stream one call carries.
    part_bytes: int = PART_BYTES
    #: ``pip download`` arguments naming the target's Python and platforms (none: this machine's).
    pip_target: tuple[str, ...] = ()


def _bench(output: str, *arguments: str) -> list[str]:
    return ["audioldm-trt", "bench", "--cache", "{root}/cache", "--output", f"{{root}}/results/{output}", *arguments]


def _version(name: str) -> str:
    """``name`` pinned to the version installed here, the one the project's tests ran with."""
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        raise PlanError(f"{name} is not installed here: pip install -e '.[export,cpu,openvino,serve]'") from None


def gpu_profile() -> Profile:
    """The GPU table first (batch 1, batch 4, tests/gpu), then the 16-core CPU row and a short load test."""
    work = ["--preset", "s-full-v2", "--duration", "5", "--steps", "10", "--guidance", "2.5"]
    gpu = ["--backends", "onnxruntime-cuda", "onnxruntime-cuda-fp32"]
    return Profile(
        name="gpu",
        preset="s-full-v2",
        provider="CUDAExecutionProvider",
        bundles=(
            BundleSpec("base", _base_requirements()),
            BundleSpec("onnxruntime", (ONNXRUNTIME_GPU,)),
            BundleSpec("openvino", (_version("openvino"), _version("openvino-telemetry"))),
            BundleSpec("serve", _serve_requirements(), with_dependencies=True),
        ),
        stages=(
            Stage("machine", ["python3", "{plan}", "machine"], 30),
            Stage(
                "bench-batch1", _bench("bench-batch1", *work, *gpu, "--batch", "1", "--runs", "5", "--warmup", "2"), 150
            ),
            Stage(
                "bench-batch4", _bench("bench-batch4", *work, *gpu, "--batch", "4", "--runs", "5", "--warmup", "1"), 150
            ),
            Stage("gpu-tests", ["python3", "-m", "pytest", "-m", "gpu", "tests/gpu", "-rs"], 120),
            Stage(
                "cpu-row",
                _bench("cpu-row", *work, "--backends", "onnxruntime-cpu", "openvino-fp32", "--runs", "3"),
                150,
                needs=("openvino",),
            ),
            Stage(
                "loadtest",
                _loadtest("s-full-v2", "onnxruntime-cuda", ("step", "none"), requests=24, capacity=8),
                180,
                needs=("serve",),
            ),
        ),
        deadline_s=450,
        xz_preset=1,
        prepare_backends=("onnxruntime-cuda", "onnxruntime-cuda-fp32"),
        pip_target=(
            *("--python-version", DEVICE_PYTHON, "--implementation", "cp"),
            *(argument for platform in DEVICE_PLATFORMS for argument in ("--platform", platform)),
        ),
    )


def rehearsal_profile() -> Profile:
    """The same plan on this machine: tiny preset, ONNX Runtime CPU standing in for CUDA, seconds of work. This
    environment stands in for the image and has OpenVINO and Ray, so their bundles carry a few of their
    dependencies, hidden from the stand-in image: installing and using them is exercised all the same."""
    work = ["--preset", "tiny", "--duration", "0.5", "--steps", "1", "--runs", "1", "--warmup", "0"]
    cpu = ["--backends", "onnxruntime-cpu"]
    return Profile(
        name="rehearsal",
        preset="tiny",
        provider="CPUExecutionProvider",
        bundles=(
            BundleSpec("base", _base_requirements()),
            BundleSpec("onnxruntime", (_version("onnxruntime"),)),
            BundleSpec("openvino", (_version("openvino-telemetry"),)),
            BundleSpec("serve", (_version("fastapi"), _version("starlette"), _version("uvicorn"))),
        ),
        stages=(
            Stage("machine", ["python3", "{plan}", "machine"], 30),
            Stage("bench-batch1", _bench("bench-batch1", *work, *cpu, "--batch", "1"), 120),
            Stage("bench-batch4", _bench("bench-batch4", *work, *cpu, "--batch", "2"), 120),
            Stage("gpu-tests", ["python3", "-m", "pytest", "-m", "gpu", "tests/gpu", "-rs"], 60),
            Stage("cpu-row", _bench("cpu-row", *work, *cpu, "openvino-fp32"), 120, needs=("openvino",)),
            Stage("loadtest", _loadtest("tiny", "onnxruntime-cpu", ("step",), requests=2, capacity=2), 150, ("serve",)),
        ),
        deadline_s=600,
        xz_preset=0,
        prepare_backends=("onnxruntime-cpu", "onnxruntime-cuda"),
        part_bytes=8 * 2**20,  # several parts, joined as on the machine
    )


def _base_requirements() -> tuple[str, ...]:
    """This package (built here) and what its exports, bench and tests need that the image lacks."""
    names = ("diffusers", "importlib-metadata", "soundfile", "cffi", "pycparser")
    return ("audioldm-trt", *(_version(name) for name in names))


def _serve_requirements() -> tuple[str, ...]:
    """Ray Serve with what this package's ``serve`` extra asks for (its dependencies resolved at staging)."""
    return (_version("ray").replace("ray", "ray[serve]", 1), *(_version(n) for n in ("fastapi", "pydantic", "uvicorn")))


def _loadtest(preset: str, backend: str, modes: Sequence[str], requests: int, capacity: int) -> list[str]:
    """Step-level batching against one request at a time, on the fp16 export (fp32 where that is all)."""
    precision = "fp16" if backend != "onnxruntime-cpu" else "fp32"
    return [
        "audioldm-trt",
        "loadtest-batching",
        "--engine",
        f"{{root}}/cache/exports/{preset}-{precision}",
        "--modes",
        *modes,
        "--requests",
        str(requests),
        "--capacity-requests",
        str(capacity),
        "--concurrency",
        "2",
        "--unloaded-runs",
        "1",
        "--mix",
        "short=0.7:duration=1,steps=4",
        "long=0.3:duration=2,steps=8",
        "--serve-args",
        f"--backend {backend}",
        "--ready-timeout",
        "120",
        "--output",
        "{root}/results/loadtest",
    ]


PROFILES = {"gpu": gpu_profile, "rehearsal": rehearsal_profile}


class PlanError(RuntimeError):
    """A step of the plan cannot go on; the message is one line."""


# --- here: staging --------------------------------------------------------------------------------------------


def stage(output: Path, profile: Profile, wheels: Path | None = None) -> dict[str, Any]:
    """Write ``output``: the parts, ``plan.json`` and ``calls.md``. ``wheels``: a folder that keeps the wheels
    gathered, to look at (pip's own cache is what makes a second staging's downloads quick)."""
    output.mkdir(parents=True, exist_ok=True)
    for old in output.glob("part-*"):
        old.unlink()
    with tempfile.TemporaryDirectory() as scratch:
        downloads = wheels or Path(scratch) / "wheels"
        stream = Path(scratch) / "stream"
        bundles: list[dict[str, Any]] = []
        with open(stream, "wb") as sink:
            for spec in profile.bundles:
                earlier = {_distribution_name(wheel) for bundle in bundles for wheel in bundle["wheels"]}
                files = [
                    wheel
                    for wheel in _collect_wheels(spec, downloads / spec.name, profile)
                    if _distribution_name(wheel.name) not in earlier  # a dependency an earlier bundle brought
                ]
                start = sink.tell()
                sink.write(_bundle_bytes(files, profile.xz_preset))
                bundles.append(
                    {
                        "name": spec.name,
                        "offset": start,
                        "size": sink.tell() - start,
                        "wheels": sorted(f.name for f in files),
                    }
                )
        data = stream.read_bytes()
    for bundle in bundles:
        bundle["sha256"] = hashlib.sha256(data[bundle["offset"] : bundle["offset"] + bundle["size"]]).hexdigest()
    parts = []
    for index, offset in enumerate(range(0, len(data), profile.part_bytes), start=1):
        piece = data[offset : offset + profile.part_bytes]
        name = f"part-{index:02d}"
        _write_atomically(output / name, piece)
        parts.append({"file": name, "offset": offset, "size": len(piece), "sha256": hashlib.sha256(piece).hexdigest()})
    plan = {
        "profile": profile.name,
        "preset": profile.preset,
        "provider": profile.provider,
        "deadline_s": profile.deadline_s,
        "prepare_backends": list(profile.prepare_backends),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bundles": bundles,
        "parts": parts,
        "stages": [asdict(s) for s in profile.stages],
    }
    _write_atomically(output / "plan.json", json.dumps(plan, indent=1).encode())
    _write_atomically(output / "calls.md", calls_text(plan).encode())
    return plan


def _collect_wheels(spec: BundleSpec, directory: Path, profile: Profile) -> list[Path]:
    """The bundle's wheels for the target's Python and platform (this package built from its source)."""
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.whl"):
        old.unlink()
    requirements = list(spec.requirements)
    if "audioldm-trt" in requirements:
        requirements.remove("audioldm-trt")
        with tempfile.TemporaryDirectory() as source:
            _copy_sources(Path(__file__).resolve().parent.parent, Path(source))
            _pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(directory), source)
    if requirements:
        dependencies = [] if spec.with_dependencies else ["--no-deps"]
        arguments = ["--only-binary=:all:", *dependencies, *profile.pip_target, "-d", str(directory)]
        _pip("download", *arguments, *requirements)
    wheels = sorted(directory.glob("*.whl"))
    if spec.with_dependencies:
        for wheel in wheels:
            if _distribution_name(wheel.name) in IMAGE_PACKAGES:
                wheel.unlink()
        wheels = sorted(directory.glob("*.whl"))
    return wheels


def _copy_sources(repository: Path, target: Path) -> None:
    """The files git tracks or would track, so that the wheel holds neither a build folder's stale copies nor
    anything ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=repository,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        if (repository / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repository / name, target / name)


def _pip(*arguments: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "-q", *arguments], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise PlanError(f"pip {arguments[0]} failed: {last}")


def _distribution_name(wheel: str) -> str:
    return re.sub(r"[-_.]+", "-", wheel.split("-")[0]).lower()


def _bundle_bytes(wheels: Sequence[Path], preset: int) -> bytes:
    """An xz-compressed tar of the wheels, each rewritten uncompressed (stored) so that xz compresses their
    content: a deflated wheel is incompressible, onnxruntime-gpu's shrinks by a quarter this way."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for wheel in wheels:
            stored = _stored_zip(wheel)
            info = tarfile.TarInfo(wheel.name)
            info.size = len(stored)
            archive.addfile(info, io.BytesIO(stored))
    return lzma.compress(buffer.getvalue(), preset=preset)


def _stored_zip(wheel: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as target:
        for item in source.infolist():
            target.writestr(item, source.read(item), compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def calls_text(plan: dict[str, Any]) -> str:
    """The device calls, in order: each carries plan.json and one part."""
    lines = [
        f"# The {plan['profile']} plan: {len(plan['parts'])} calls, back to back (idle 30 s, the machine goes back)",
        "",
    ]
    for index, part in enumerate(plan["parts"], start=1):
        command = call_command(index)
        carry = [f"{PLAN_FOLDER}/plan.json", f"{PLAN_FOLDER}/{part['file']}"]
        timeout = 600 if index == len(plan["parts"]) else 120
        lines += [
            f"{index}. run(command={json.dumps(command)}, carry={json.dumps(carry)}, timeout_s={timeout})",
            f"   ({part['size'] / 2**20:.1f} MiB of bundles {', '.join(_bundles_in(plan, part))})",
        ]
    lines += ["", "Then give_back()."]
    return "\n".join(lines) + "\n"


def call_command(index: int) -> str:
    return f'PYTHONUNBUFFERED=1 python3 benchmarks/gpu_plan.py call {index} --out "$OUT"'


def _bundles_in(plan: dict[str, Any], part: dict[str, Any]) -> list[str]:
    start, end = part["offset"], part["offset"] + part["size"]
    return [b["name"] for b in plan["bundles"] if b["offset"] < end and b["offset"] + b["size"] > start]


def _write_atomically(path: Path, data: bytes) -> None:
    """``engine.files.write_atomically``'s rule, here again: on the machine this file runs before the package
    that holds it is installed."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


# --- there: receiving, the runner, collecting -----------------------------------------------------------------


@dataclass
class Device:
    """The plan's folder on the machine: received parts, the stream, installed bundles, results."""

    root: Path
    plan: dict[str, Any] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return self.root / "results"

    def load(self) -> Device:
        self.plan = json.loads((self.root / "plan.json").read_text())
        return self

    def receive(self, checkout: Path) -> list[str]:
        """Move the parts the call carried out of the checkout (each call lays the checkout anew), append them to
        the stream in order, and unpack every bundle that is complete; the names of those now unpacked."""
        carried = checkout / PLAN_FOLDER
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "parts").mkdir(exist_ok=True)
        shutil.copyfile(carried / "plan.json", self.root / "plan.json")
        self.load()
        for part in self.plan["parts"]:
            source = carried / part["file"]
            if source.is_file() and not (self.root / "parts" / part["file"]).exists():
                if hashlib.sha256(source.read_bytes()).hexdigest() != part["sha256"]:
                    raise PlanError(f"{part['file']} arrived corrupt (sha256 differs from plan.json)")
                shutil.move(str(source), self.root / "parts" / part["file"])
        stream = self.root / "stream"
        with open(stream, "ab") as sink:
            for part in self.plan["parts"]:
                path = self.root / "parts" / part["file"]
                if sink.tell() == part["offset"] and path.is_file():
                    sink.write(path.read_bytes())
                    path.unlink()
            received = sink.tell()
        unpacked = []
        for bundle in self.plan["bundles"]:
            folder = self.root / "bundles" / bundle["name"]
            if folder.is_dir() or received < bundle["offset"] + bundle["size"]:
                continue
            with open(stream, "rb") as source_stream:
                source_stream.seek(bundle["offset"])
                data = source_stream.read(bundle["size"])
            if hashlib.sha256(data).hexdigest() != bundle["sha256"]:
                raise PlanError(f"bundle {bundle['name']} is corrupt after joining its parts")
            partial = folder.with_name(f".{bundle['name']}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            with tarfile.open(fileobj=io.BytesIO(lzma.decompress(data))) as archive:
                archive.extractall(partial, filter="data")
            os.replace(partial, folder)
            unpacked.append(bundle["name"])
        return unpacked

    def has(self, bundle: str) -> bool:
        return (self.root / "bundles" / bundle).is_dir()

    def status(self) -> dict[str, Any]:
        path = self.results / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {"stages": [], "notes": [], "done": False}

    def write_status(self, status: dict[str, Any]) -> None:
        self.results.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.results / "status.json", json.dumps(status, indent=1).encode())
        _write_atomically(self.results / "table.md", summary(status).encode())

    def collect(self, out: Path) -> None:
        """What has finished, into ``out``: one archive of the results and the table of stages on its own."""
        out.mkdir(parents=True, exist_ok=True)
        if not self.results.is_dir():
            return
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            archive.add(self.results, arcname="results")
            if (self.root / "runner.log").is_file():
                archive.add(self.root / "runner.log", arcname="results/runner.log")
        _write_atomically(out / "gpu-plan-results.tar.gz", buffer.getvalue())
        if (self.results / "table.md").is_file():
            shutil.copyfile(self.results / "table.md", out / "gpu-plan-table.md")


def summary(status: dict[str, Any]) -> str:
    """The stages as they stand, then each finished bench's table."""
    lines = ["| stage | result | seconds |", "|---|---|--:|"]
    lines += [f"| {s['name']} | {s['result']} | {s['seconds']:.0f} |" for s in status["stages"]]
    lines += [f"\n- {note}" for note in status["notes"]]
    text = "\n".join(lines) + "\n"
    for table in status.get("tables", []):
        text += f"\n## {table['stage']}\n\n{table['markdown']}\n"
    return text


def call(index: int, out: Path, root: Path = DEVICE_ROOT, checkout: Path | None = None) -> None:
    """Device call ``index``: receive its part; call 1 also starts the runner; every call leaves what has finished
    in ``out``, and the last one first waits for the runner (or its deadline)."""
    checkout = checkout or Path.cwd()
    device = Device(root)
    unpacked = device.receive(checkout)
    parts = device.plan["parts"]
    print(
        f"call {index}/{len(parts)}: received {parts[index - 1]['file']}; unpacked {', '.join(unpacked) or 'nothing'}"
    )
    pid_file = root / "runner.pid"
    if index == 1 and not (pid_file.is_file() and _alive(int(pid_file.read_text()))):  # a retried call 1 starts none
        shutil.rmtree(root / "checkout", ignore_errors=True)
        shutil.copytree(checkout, root / "checkout", ignore=shutil.ignore_patterns(PLAN_FOLDER, ".git"))
        shutil.copyfile(Path(__file__), root / "gpu_plan.py")
        with open(root / "runner.log", "ab") as log:
            subprocess.Popen(
                [sys.executable, str(root / "gpu_plan.py"), "runner", "--root", str(root)],
                cwd=root / "checkout",
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: the runner outlives this call
            )
        print("the runner started; its log: runner.log in the results archive")
    if index == len(parts):
        _wait_for_runner(device)
    device.collect(out)
    status = device.status()
    for stage_result in status["stages"]:
        print(f"  {stage_result['name']}: {stage_result['result']} ({stage_result['seconds']:.0f} s)")
    for note in status["notes"]:
        print(f"  note: {note}")
    if (device.results / "table.md").is_file() and index == len(parts):
        print((device.results / "table.md").read_text())


def _wait_for_runner(device: Device, poll_s: float = 1.0) -> None:
    """Until the runner says it is done (it ends itself at the plan's deadline) or has stopped without saying so."""
    pid_file = device.root / "runner.pid"
    started = time.monotonic()
    limit = time.monotonic() + float(device.plan["deadline_s"]) + 60
    while not device.status().get("done"):
        if (pid_file.is_file() and not _alive(int(pid_file.read_text()))) or (
            not pid_file.is_file() and time.monotonic() > started + 60
        ):
            print("the runner stopped before it was done: see runner.log")
            return
        if time.monotonic() > limit:
            print("the runner is still running past the plan's deadline: see runner.log")
            return
        time.sleep(poll_s)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").is_file() and " Z " not in Path(f"/proc/{pid}/stat").read_text()[:60]


class Runner:
    """The detached process of call 1: install, prepare, check, then the stages within their budgets."""

    def __init__(self, root: Path) -> None:
        self.device = Device(root).load()
        self.started = time.monotonic()
        self.status: dict[str, Any] = {"stages": [], "notes": [], "tables": [], "done": False}
        self.environment = dict(os.environ)
        self.deadline = self.started + float(self.device.plan["deadline_s"])
        #: Bundles installed so far.
        self.installed: set[str] = set()

    def run(self) -> None:
        (self.device.root / "runner.pid").write_text(str(os.getpid()))
        try:
            self._step("install base", self._install_base, 60)
            self._step("prepare models", self._prepare, self.deadline - time.monotonic())
            self._step("install onnxruntime", self._install_onnxruntime, self.deadline - time.monotonic())
            for stage_spec in self.device.plan["stages"]:
                self._stage(Stage(**{**stage_spec, "needs": tuple(stage_spec["needs"])}))
        except PlanError as error:
            self.status["notes"].append(f"stopped: {error}")
        finally:
            self.status["done"] = True
            self.device.write_status(self.status)

    def _record(self, name: str, result: str, started: float) -> None:
        self.status["stages"].append({"name": name, "result": result, "seconds": time.monotonic() - started})
        self.device.write_status(self.status)
        print(f"{name}: {result} ({time.monotonic() - started:.0f} s)", flush=True)

    def _step(self, name: str, action: Any, budget: float) -> None:
        """A step every stage needs: its failure stops the run with its one-line reason."""
        started = time.monotonic()
        try:
            action(budget)
        except PlanError as error:
            self._record(name, f"failed: {error}", started)
            raise
        self._record(name, "ok", started)

    def _wait_for(self, bundle: str, until: float) -> bool:
        while not self.device.has(bundle):
            if time.monotonic() > until:
                return False
            time.sleep(1.0)
        return True

    def _install(self, bundle: str, target: Path, until: float) -> None:
        if not self._wait_for(bundle, until):
            raise PlanError(f"bundle {bundle} did not arrive in time")
        wheels = sorted(str(p) for p in (self.device.root / "bundles" / bundle).glob("*.whl"))
        command = ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade"]
        self._run([sys.executable, *command, "--target", str(target), *wheels], 300, f"install {bundle}")

    def _install_on_path(self, bundle: str, until: float) -> None:
        """``bundle`` into a folder of its own, put first on the path of every later command."""
        site = self.device.root / "site" / bundle
        self._install(bundle, site, until)
        self._prepend("PYTHONPATH", str(site))
        self._prepend("PATH", str(site / "bin"))
        self.installed.add(bundle)

    def _install_base(self, budget: float) -> None:
        self._install_on_path("base", time.monotonic() + budget)

    def _prepare(self, budget: float) -> None:
        """The random-weight model and its fp32 and fp16 exports, into the cache the bench stages read."""
        plan = self.device.plan
        command = ["audioldm-trt", "bench", "--prepare-only", "--preset", plan["preset"], "--cache", "{root}/cache"]
        command += ["--backends", *plan["prepare_backends"]]
        self._run(self._expand(command), budget, "prepare models", log="prepare.log")

    def _install_onnxruntime(self, budget: float) -> None:
        """ONNX Runtime into a folder of its own, ahead of the image's on the path; the image's CUDA libraries
        (torch's nvidia-* packages) on the loader's path, so a process that never imports torch finds them;
        then a session on the plan's provider in such a process, or stop here."""
        target = self.device.root / "onnxruntime"
        self._install("onnxruntime", target, time.monotonic() + budget)
        self._prepend("PYTHONPATH", str(target))
        for directory in reversed(_nvidia_library_folders()):
            self._prepend("LD_LIBRARY_PATH", directory)
        provider = self.device.plan["provider"]
        check = PROVIDER_CHECK.format(provider=provider, target=str(target))
        self._run([sys.executable, "-c", check], 120, f"a session on {provider}", log="provider-check.log")

    def _stage(self, stage_spec: Stage) -> None:
        started = time.monotonic()
        left = self.deadline - started
        if left < stage_spec.budget_s / 2:
            self._record(stage_spec.name, f"skipped: {left:.0f} s left of the plan's deadline", started)
            return
        for bundle in (b for b in stage_spec.needs if b not in self.installed):
            try:
                self._install_on_path(bundle, self.deadline - stage_spec.budget_s / 2)
            except PlanError as error:
                self._record(stage_spec.name, f"skipped: {error}", started)
                return
        budget = min(stage_spec.budget_s, self.deadline - time.monotonic())
        try:
            self._run(self._expand(stage_spec.command), budget, stage_spec.name, log=f"{stage_spec.name}.log")
        except PlanError as error:
            self._record(stage_spec.name, f"failed: {error}", started)
            return
        table = self.device.results / stage_spec.name / "bench.md"
        if table.is_file():
            self.status["tables"].append({"stage": stage_spec.name, "markdown": table.read_text()})
        self._record(stage_spec.name, "ok", started)

    def _expand(self, command: Sequence[str]) -> list[str]:
        plan = str(self.device.root / "gpu_plan.py")
        return [part.replace("{root}", str(self.device.root)).replace("{plan}", plan) for part in command]

    def _prepend(self, variable: str, value: str) -> None:
        old = self.environment.get(variable)
        self.environment[variable] = f"{value}{os.pathsep}{old}" if old else value

    def _run(self, command: Sequence[str], budget: float, what: str, log: str | None = None) -> None:
        """Run ``command`` within ``budget`` seconds (its process group killed past it), output to ``log``."""
        self.device.results.mkdir(parents=True, exist_ok=True)
        path = self.device.results / (log or "install.log")
        with open(path, "ab") as sink:
            sink.write(f"$ {shlex.join(command)}\n".encode())
            sink.flush()
            process = subprocess.Popen(
                command, stdout=sink, stderr=subprocess.STDOUT, env=self.environment, start_new_session=True
            )
            try:
                code = process.wait(timeout=max(budget, 1.0))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
                raise PlanError(f"{what} ran past its {budget:.0f} s budget and was stopped") from None
        if code != 0:
            raise PlanError(f"{what} exited with status {code}: {_last_line(path)}")


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


def _nvidia_library_folders() -> list[str]:
    """The lib folders of the image's nvidia-* wheels (CUDA 13's consolidated ``nvidia/cu13/lib``, cuDNN's own)."""
    import site

    folders = []
    for packages in site.getsitepackages():
        for folder in sorted(glob.glob(os.path.join(packages, "nvidia", "*", "lib"))):
            if glob.glob(os.path.join(folder, "*.so*")):
                folders.append(folder)
    return folders


#: Run in a fresh process without torch: the installed ONNX Runtime runs a graph on the provider.
PROVIDER_CHECK = """
import sys, numpy, onnx, onnx.helper as h
import onnxruntime
assert "torch" not in sys.modules, "torch was imported"
if not onnxruntime.__file__.startswith({target!r}):
    sys.exit(f"onnxruntime came from {{onnxruntime.__file__}}, not from the plan's install")
graph = h.make_graph([h.make_node("MatMul", ["a", "b"], ["c"])], "check",
    [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [64, 64]) for n in "ab"],
    [h.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [64, 64])])
model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
model.ir_version = 8
session = onnxruntime.InferenceSession(model.SerializeToString(), providers=[{provider!r}])
if session.get_providers()[0] != {provider!r}:
    sys.exit(f"the session runs on {{session.get_providers()}}, not {provider}")
a = numpy.random.default_rng(0).standard_normal((64, 64), dtype=numpy.float32)
(c,) = session.run(None, {{"a": a, "b": a}})
assert numpy.allclose(c, a @ a, rtol=1e-3, atol=1e-3), "wrong product"
print("onnxruntime", onnxruntime.__version__, "from", onnxruntime.__file__, "runs on", session.get_providers())
"""


def describe_machine() -> None:
    """The ``machine`` stage: the GPU, the CPU and the versions of the modules as imported here (ONNX Runtime
    first: its providers are those of a process without torch, as the engine's)."""
    import importlib

    from audioldm_trt.benchmarks import machine

    for name in ("onnxruntime", "torch", "diffusers", "transformers"):
        importlib.import_module(name)

    print(json.dumps({"machine": machine.describe_machine(), "versions": machine.imported_versions()}, indent=1))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_plan", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    staging = commands.add_parser("stage", help="here: stage the plan into DIR and print the device calls")
    staging.add_argument("output", type=Path, nargs="?", default=Path(PLAN_FOLDER), metavar="DIR")
    staging.add_argument("--rehearsal", action="store_true", help="for this machine, CPU standing in for CUDA")
    staging.add_argument("--wheels", type=Path, help="keep the gathered wheels in this folder")
    calling = commands.add_parser("call", help="there: device call N of the plan")
    calling.add_argument("index", type=int, metavar="N")
    calling.add_argument("--out", type=Path, required=True)
    calling.add_argument("--root", type=Path, default=DEVICE_ROOT)
    runner = commands.add_parser("runner", help="there: the detached runner (started by call 1)")
    runner.add_argument("--root", type=Path, default=DEVICE_ROOT)
    commands.add_parser("machine", help="there: the machine and the imported versions, as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "stage":
            plan = stage(args.output, PROFILES["rehearsal" if args.rehearsal else "gpu"](), wheels=args.wheels)
            print((args.output / "calls.md").read_text(), end="")
            print(f"staged {sum(p['size'] for p in plan['parts']) / 2**20:.1f} MiB in {len(plan['parts'])} parts")
        elif args.command == "call":
            call(args.index, args.out, args.root)
        elif args.command == "runner":
            Runner(args.root).run()
        else:
            describe_machine()
    except PlanError as error:
        print(f"gpu_plan: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
