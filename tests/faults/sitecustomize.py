"""Stand-ins for faults, for tests/test_serve_lifecycle.py: with this directory on PYTHONPATH, every Python
process that imports the server's modules (its Ray workers included) gets

- a UNet call that hangs for good when a request's prompt is "wedge", as a call on a wedged CUDA context never
  returns (it touches the file named by FAULTS_MARKER when it hangs);
- a bug in the ingress: answering a request of seed ``EXPLODING_SEED`` raises.

Everything else runs the real engine and server."""

import importlib.abc
import importlib.machinery
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

EXPLODING_SEED = 13


def _wedge(pipeline: ModuleType) -> None:
    step = pipeline.Engine.step

    def step_or_hang(self: Any, states: Sequence[Any]) -> None:
        if any("wedge" in state.request.prompts for state in states):
            Path(os.environ["FAULTS_MARKER"]).touch()
            threading.Event().wait()
        step(self, states)

    pipeline.Engine.step = step_or_hang


def _explode(ingress: ModuleType) -> None:
    # The class Ray Serve runs (its methods see a copy of the module's globals, so the method is what to patch).
    served = ingress.Ingress.func_or_class
    answer = served._answer

    def answer_or_raise(self: Any, result: dict[str, Any], *arguments: Any) -> Any:
        if result["seed"] == EXPLODING_SEED:
            raise RuntimeError("a bug in the ingress")
        return answer(self, result, *arguments)

    served._answer = answer_or_raise


FAULTS: dict[str, Callable[[ModuleType], None]] = {
    "audioldm_trt.engine.pipeline": _wedge,
    "audioldm_trt.serve.ingress": _explode,
}


class _FaultsOnImport(importlib.abc.MetaPathFinder):
    """Patches a module as it is imported, so that processes that never import it pay nothing."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        fault = FAULTS.get(name)
        if fault is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_with_fault(module: ModuleType) -> None:
            exec_module(module)
            fault(module)

        spec.loader.exec_module = exec_with_fault  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _FaultsOnImport())
