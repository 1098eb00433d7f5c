"""Append-only run log shared by every pipeline stage.

All runs are recorded in one JSON array so a researcher can load the whole history with a
single ``json.load``. Several runs may finish at the same time and any of them may be killed
(OOM, SIGKILL, power loss), so each append happens under a file lock and replaces the log
atomically: a reader or a later writer sees either the old array or the new one, never a
torn file. A log that is already corrupt is moved aside rather than overwritten, because it
may be the only record of earlier runs.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path

from filelock import FileLock

from atomic_file import fsync_dir, write_bytes_atomically

DEFAULT_LOG_PATH = Path("logs/pipeline_runs.json")


def _finite(obj):
    """Map NaN/inf to None: strict JSON has no spelling for them, and a diverged run's
    NaN loss must still be recordable rather than make the whole append fail."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _default(obj):
    """Accept the values callers naturally have at hand (paths, numpy scalars/arrays) without
    importing numpy; anything else is a caller bug and must fail before the log is touched."""
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        try:
            return _finite(obj.item())
        except (TypeError, ValueError):
            pass
    if hasattr(obj, "tolist"):
        return _finite(obj.tolist())
    raise TypeError(f"run log entry value of type {type(obj).__name__} is not JSON serialisable")


def _dumps(obj) -> str:
    return json.dumps(_finite(obj), indent=2, allow_nan=False, default=_default)


def _load(path: Path) -> list:
    data = json.loads(path.read_bytes())  # UnicodeDecodeError/JSONDecodeError are ValueErrors
    if not isinstance(data, list):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, expected an array of runs")
    return data


def _quarantine(path: Path, reason: Exception) -> Path:
    """Keep a corrupt log's bytes for forensics instead of overwriting earlier runs."""
    base = f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    target, n = path.with_name(base), 0
    while target.exists():
        n += 1
        target = path.with_name(f"{base}-{n}")
    os.replace(path, target)
    fsync_dir(path.parent)
    warnings.warn(
        f"run log {path} was corrupt ({type(reason).__name__}); moved it to {target} "
        "and started a new log",
        RuntimeWarning,
        stacklevel=3,
    )
    return target


def append_run(entry: dict, log_path: Path | str = DEFAULT_LOG_PATH, lock_timeout_s: float = 60.0) -> Path:
    """Append one entry; returns the log path.

    The entry is serialised before the lock is taken so a bad entry fails without touching
    the log, and what is stored is exactly what JSON can round-trip.
    """
    if not isinstance(entry, dict):
        raise TypeError(f"run log entries must be dicts, got {type(entry).__name__}")
    clean_entry = json.loads(_dumps(entry))
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock", timeout=lock_timeout_s):
        runs: list = []
        if path.exists():
            try:
                runs = _load(path)
            except ValueError as exc:
                _quarantine(path, exc)
        runs.append(clean_entry)
        # Only lock holders write the log, so every temp file of it found now is an orphan.
        write_bytes_atomically(path, (_dumps(runs) + "\n").encode("utf-8"), locked=True)
    return path


def read_runs(log_path: Path | str = DEFAULT_LOG_PATH) -> list[dict]:
    """Entries of the log ([] when absent); raises ValueError if corrupt.

    No lock is needed: writers replace the file atomically, so a reader always sees a whole
    array. A corrupt log is reported, not repaired, so reading never moves data around.
    """
    path = Path(log_path)
    try:
        return _load(path)
    except FileNotFoundError:
        return []
