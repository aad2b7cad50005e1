"""The runtime must not pull in torch, diffusers or transformers: hosts embed it without them."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers", "onnx", "scipy")


def test_engine_imports_no_heavy_library() -> None:
    code = (
        "import sys\n"
        "import audioldm_trt.engine, audioldm_trt.engine.cli, audioldm_trt.engine.pipeline\n"
        "import audioldm_trt.engine.backends, audioldm_trt.engine.schedulers, audioldm_trt.engine.random\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"the runtime imported {result.stdout.strip()}"


def test_no_top_level_engine_or_export_module_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('engine'), u.find_spec('export'))"],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert result.stdout.strip() == "None None"
