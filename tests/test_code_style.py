"""The repository's Python passes ruff's lint and format checks (configured in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
SOURCES = ("engine", "export", "benchmarks", "serve", "tests")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *command, *SOURCES], capture_output=True, text=True, cwd=REPOSITORY
    )
    assert result.returncode == 0, result.stdout + result.stderr
