"""Atomic file writes: a temporary file next to the target, ``fsync``, ``os.replace``.

A reader (or a run killed half-way) sees the old file or the new one, never a
torn one. Used for every file gainedvae writes: checkpoints, images, results.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

__all__ = ["atomic_save", "atomic_write_bytes"]

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    atomic_save(lambda f: f.write(data), path)


def atomic_save(writer, path: PathLike) -> None:
    """Call ``writer(fileobj)`` on a temp file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _about(err, path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename in (tmp, None):
            raise _about(err, path) from None
        raise


def _about(err: OSError, path: Path) -> OSError:
    """``err`` naming the output ``path`` instead of the temporary file being written."""
    return type(err)(err.errno, err.strerror or str(err), str(path))
