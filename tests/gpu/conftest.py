"""tests/gpu: marked ``gpu``; skipped, saying why, on machines without a CUDA device or without TensorRT.

Run them on a GPU host with ``pytest -m gpu tests/gpu`` (README: "GPU quickstart")."""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _missing() -> str | None:
    """The one reason the GPU tests cannot run here, or None."""
    from audioldm_trt.engine.backends.cuda import current_device
    from audioldm_trt.engine.backends.tensorrt import require_tensorrt
    from audioldm_trt.engine.errors import BackendUnavailableError

    try:
        current_device()
    except BackendUnavailableError:
        return "no CUDA device"
    try:
        require_tensorrt()
    except BackendUnavailableError:
        return "tensorrt not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    ours = [item for item in items if HERE in Path(str(item.path)).parents]
    if not ours:
        return
    reason = _missing()
    for item in ours:
        item.add_marker(pytest.mark.gpu)
        if reason:
            item.add_marker(pytest.mark.skip(reason=reason))
