"""Errors the runtime raises on purpose; each message is one line that says what to do."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the errors below, so that a host can catch the engine's own failures in one place."""


class EngineDirectoryError(EngineError, ValueError):
    """The engine directory is missing, incomplete, corrupt or from an incompatible export or build."""


class BackendUnavailableError(EngineError, RuntimeError):
    """The requested backend cannot run here (library missing, no GPU, engines not built)."""


class NonFiniteOutputError(EngineError, RuntimeError):
    """A stage produced NaN or infinity, typically fp16 overflow; the message names the stage."""


class Cancelled(EngineError):
    """A step callback asked to stop its request (returned ``STOP`` or raised, the cause chained): no audio."""


class PartialFailureError(NonFiniteOutputError):
    """A call batched for several requests gave NaN or infinity in the rows of some of them: those failed (each
    with its own error, by position in the call's list), the others went on. ``results``: what ``start`` or
    ``decode`` gives for each request, None for those that failed."""

    def __init__(self, failed: dict[int, NonFiniteOutputError], results: list[object | None]) -> None:
        super().__init__(next(iter(failed.values())))
        self.failed = failed
        self.results = results
