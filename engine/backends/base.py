"""The small interface every backend implements: load a graph, run it with named numpy inputs, close."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..manifest import GRAPH_NAMES, Manifest
from .profiles import Shape


class Graph(ABC):
    """One loaded network, ready to run; safe to call from several threads at once."""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        """Run with the named inputs; returns the named outputs as host arrays the caller may keep.

        ``reuse`` names inputs that are often equal to the previous call's (the UNet's class labels from one
        denoising step to the next): a backend may keep them on its device and upload them only when they differ.
        """


@dataclass(frozen=True)
class Link:
    """How a chain hands one graph's output to the next graph: ``output`` becomes ``input``, with axis ``squeeze``
    (of size 1) removed. The values are the same in the same order, so a device can pass the bytes as they are."""

    output: str
    input: str
    squeeze: int | None = None

    def shape(self, shape: Shape) -> Shape:
        if self.squeeze is None:
            return shape
        if shape[self.squeeze] != 1:
            raise ValueError(f"{self.output} has shape {shape}: axis {self.squeeze} is not of size 1")
        return shape[: self.squeeze] + shape[self.squeeze + 1 :]


class Chain(Graph):
    """``first`` then ``second``, the first's output feeding the second's only input; this one hands it over
    through the host, backends with a device override ``Backend.chain`` to keep it there."""

    def __init__(self, first: Graph, second: Graph, link: Link) -> None:
        super().__init__(f"{first.name}+{second.name}")
        self.first, self.second, self.link = first, second, link

    def run(self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()) -> dict[str, np.ndarray]:
        return self.run_timed(feeds, reuse)[0]

    def run_timed(
        self, feeds: Mapping[str, np.ndarray], reuse: Collection[str] = ()
    ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """``run``, with the seconds each graph took, by graph name."""
        started = time.perf_counter()
        intermediate = self.first.run(feeds, reuse)[self.link.output]
        handed = time.perf_counter()
        outputs = self.second.run({self.link.input: intermediate.reshape(self.link.shape(intermediate.shape))})
        return outputs, {self.first.name: handed - started, self.second.name: time.perf_counter() - handed}


class Backend(ABC):
    """Loads the graphs of one engine directory for one kind of hardware."""

    #: The name users pick the backend by.
    name: str
    #: Whether the graphs compute in host memory, which a request's weights and activations must then fit.
    graphs_on_host = False

    @abstractmethod
    def load(self, directory: Path, manifest: Manifest, graph: str) -> Graph:
        """Load graph ``graph`` of the export in ``directory`` (created once per engine, reused every call)."""

    def load_graphs(self, directory: Path, manifest: Manifest) -> dict[str, Graph]:
        """Every graph of the export, by name in pipeline order; one at a time unless a backend knows better."""
        return {name: self.load(directory, manifest, name) for name in GRAPH_NAMES}

    @abstractmethod
    def describe(self) -> str:
        """What it runs on, for the log line that says which backend an engine uses."""

    def check_workload(self, batch: int, latent_height: int) -> None:  # noqa: B027 - most backends take any size
        """Raise ValueError if a generation of ``batch`` waveforms of ``latent_height`` latent rows cannot run
        (TensorRT engines are built for ranges); called before any graph runs."""

    def max_rows(self, graph: str) -> int | None:
        """The most rows (batch entries) one call of ``graph`` takes, or None for any: what bounds how many
        requests a server may batch into one call."""
        return None

    def chain(self, first: Graph, second: Graph, link: Link) -> Chain:
        """A graph that runs ``first`` then ``second`` as ``Chain`` does (cheap to create: it holds no resources)."""
        return Chain(first, second, link)

    def close(self) -> None:  # noqa: B027 - backends whose graphs free themselves have nothing to do
        """Free what the backend holds on its device; its graphs cannot run afterwards. Calling it again does
        nothing."""
