"""Directories that appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_directory(output: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``output``; on success it is renamed to ``output`` (replacing an
    existing one only with ``force``), on failure it is deleted. An interrupted run never leaves a directory
    at ``output`` that looks complete."""
    if output.exists() and not force:
        raise FileExistsError(f"{output} already exists (pass --force to replace it)")
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield work
        if output.exists():
            old = output.with_name(f".{output.name}.old-{os.getpid()}")
            os.replace(output, old)
            os.replace(work, output)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
