"""Write-then-rename, so a crash never leaves half a checkpoint, CSV or model behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call write(tmp) on a hidden temp file beside `path`, fsync it, rename it onto `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
