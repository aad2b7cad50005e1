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
