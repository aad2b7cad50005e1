"""What the benchmarks timed on one export (``bench-audio``, ``bench-stream``) share: their common settings, the
head of their record (settings, backend, machine) and its write."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..engine.files import write_atomically
from .machine import describe_machine


@dataclass(frozen=True)
class EngineBenchSettings:
    engine: Path
    backend: str = "auto"
    duration: float = 10.0
    steps: int = 10
    runs: int = 5
    warmup: int = 1
    threads: int | None = None

    def load(self) -> Engine:
        return Engine.load(self.engine, backend=self.backend, threads=self.threads)


def record_head(settings: EngineBenchSettings, engine: Engine) -> dict[str, Any]:
    """What was run, on which backend and machine."""
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "backend": engine.backend.describe(),
        "machine": describe_machine(),
    }


def write_record(record: dict[str, Any], output: Path, name: str) -> Path:
    """``output/name`` as JSON, written whole or not at all."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / name
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())
    return path
