"""What the benchmark ran on: the machine, the library versions, and the GPU as ``nvidia-smi`` reports it.

GPU facts come from ``nvidia-smi`` in the parent rather than from torch or CUDA in a worker: it needs no CUDA
context (which would itself take GPU memory) and reads the same for every contender.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions go into the record, where installed.
PACKAGES = (
    "audioldm-trt",
    "torch",
    "diffusers",
    "transformers",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "numpy",
)


def describe_machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "cpu_bf16": _cpu_bf16_flags(),
        "logical_cores": os.cpu_count(),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": gpu_query("name"),
        "gpu_memory_mib": gpu_query("memory.total"),
        "gpu_driver": gpu_query("driver_version"),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


#: Modules whose versions a worker reports as imported.
IMPORTED_MODULES = ("torch", "diffusers", "transformers", "onnxruntime", "openvino", "tensorrt", "numpy")


def imported_versions() -> dict[str, str]:
    """The versions of the modules this process has imported, read from the modules themselves: where two
    builds are installed (the image's onnxruntime and a carried onnxruntime-gpu), the one that runs."""
    found = {"audioldm-trt": versions().get("audioldm-trt", "unknown")}
    for name in IMPORTED_MODULES:
        module = sys.modules.get(name)
        version = getattr(module, "__version__", None)
        if not isinstance(version, str):
            continue
        if name == "torch" and getattr(getattr(module, "version", None), "cuda", None):
            version += f" (CUDA {module.version.cuda})"  # type: ignore[union-attr]
        if name == "onnxruntime":
            version += f" ({', '.join(module.get_available_providers())})"  # type: ignore[union-attr]
        found[name] = version
    return found


def merged_versions(per_process: Sequence[dict[str, str]]) -> dict[str, str]:
    """One version per module over the processes that imported it (all of them, where they differ)."""
    merged: dict[str, list[str]] = {}
    for found in per_process:
        for name, version in found.items():
            if version not in merged.setdefault(name, []):
                merged[name].append(version)
    return {name: " / ".join(values) for name, values in merged.items()}


def gpu_query(field: str) -> str | None:
    """One ``nvidia-smi --query-gpu`` field of the first visible GPU; None without a GPU."""
    if shutil.which("nvidia-smi") is None:
        return None
    device = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0]
    command = ["nvidia-smi", f"--query-gpu={field}", "--format=csv,noheader,nounits", "-i", device]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return value if result.returncode == 0 and value else None


def gpu_memory_used_mib() -> float | None:
    """Device memory in use on the GPU, all processes together (MiB); None without a GPU."""
    used = gpu_query("memory.used")
    return float(used) if used is not None else None


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


#: CPU flags of native bf16 arithmetic: AVX-512 BF16 (Intel Cooper Lake and later, AMD Zen 4 and later) and AMX.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_bf16_flags() -> list[str]:
    """Which of BF16_FLAGS the CPU has (Linux; empty elsewhere): the record says whether bf16 was native."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return []
    for line in cpuinfo.read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return [flag for flag in BF16_FLAGS if flag in flags]
    return []
