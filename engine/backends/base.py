"""The small interface every backend implements: load a graph, run it with named numpy inputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..manifest import Manifest


class Graph(ABC):
    """One loaded network, ready to run; safe to call from several threads at once."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with the named inputs; returns the named outputs as host arrays the caller may keep."""


class Backend(ABC):
    """Loads the graphs of one engine directory for one kind of hardware."""

    #: The name users pick the backend by.
    name: str

    @abstractmethod
    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        """Load graph ``graph`` of the export in ``directory`` (created once per engine, reused every call)."""

    @abstractmethod
    def describe(self) -> str:
        """What it runs on, for the log line that says which backend an engine uses."""

    def close(self) -> None:  # noqa: B027 - backends that hold nothing beyond their graphs' lifetime
        """Release what the backend holds (sessions, GPU memory); its graphs cannot run afterwards."""

    def check_workload(self, batch: int, latent_height: int) -> None:  # noqa: B027 - most backends take any size
        """Raise ValueError if a generation of ``batch`` waveforms of ``latent_height`` latent rows cannot run
        (TensorRT engines are built for ranges); called before any graph runs."""
