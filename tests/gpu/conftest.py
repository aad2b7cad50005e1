"""tests/gpu: marked ``gpu``; each module says what it needs (``NEEDS``: "tensorrt" or "onnxruntime-cuda") and its
tests are skipped, saying why, where that is missing: the ONNX Runtime CUDA tests run on a GPU without TensorRT.

Run them on a GPU host with ``pytest -m gpu tests/gpu`` (README: "GPU quick start")."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@functools.cache
def _missing(need: str) -> str | None:
    """The one reason ``need`` cannot run here, or None."""
    from audioldm_trt.engine.backends.cuda import current_device
    from audioldm_trt.engine.backends.onnxruntime import CUDA, available_providers
    from audioldm_trt.engine.backends.tensorrt import require_tensorrt
    from audioldm_trt.engine.errors import BackendUnavailableError

    try:
        current_device()
    except BackendUnavailableError as error:
        return f"no CUDA device ({error})"
    if need == "onnxruntime-cuda":
        return None if CUDA in available_providers() else f"ONNX Runtime here has no {CUDA}"
    try:
        require_tensorrt()
    except BackendUnavailableError as error:
        return f"no TensorRT ({error})"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            continue
        item.add_marker(pytest.mark.gpu)
        reason = _missing(getattr(item.module, "NEEDS", "tensorrt"))
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
