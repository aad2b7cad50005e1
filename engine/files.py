"""Files written so that readers see all of one or none of it."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def temporary_beside(path: Path) -> Path:
    """A new empty file in ``path``'s directory (so that renaming it onto ``path`` is atomic), created with the
    permissions of a plain write under the user's umask: ``tempfile.mkstemp`` would make it private."""
    while True:
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(6)}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return candidate


def write_atomically(path: Path, data: bytes | memoryview) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    temporary = temporary_beside(path)
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
