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
import tempfile
import time
import warnings
from pathlib import Path

from filelock import FileLock

DEFAULT_LOG_PATH = Path("logs/pipeline_runs.json")
_TMP_SUFFIX = ".tmp"


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


def _tmp_prefix(path: Path) -> str:
    # Hidden and tied to the log's name, so stale leftovers are recognisable and globbable.
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    """A writer killed before its rename leaves its temp file behind; only the lock holder
    ever creates one, so while we hold the lock every such file is an orphan."""
    for tmp in path.parent.glob(f"{_tmp_prefix(path)}*{_TMP_SUFFIX}"):
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass


def _fsync_dir(directory: Path) -> None:
    """The rename lives in the directory entry; without this a power loss can undo it."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    _fsync_dir(path.parent)
    warnings.warn(
        f"run log {path} was corrupt ({type(reason).__name__}); moved it to {target} "
        "and started a new log",
        RuntimeWarning,
        stacklevel=3,
    )
    return target


def _write_atomically(path: Path, text: str) -> None:
    """Write the complete new array beside the log, then rename over it, so a crash at any
    instant leaves either the old log or the new one in place."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644  # mkstemp would give 0600
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        try:
            os.fchmod(fd, mode)
            data = memoryview(text.encode("utf-8"))
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


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
        _remove_stale_temps(path)
        runs: list = []
        if path.exists():
            try:
                runs = _load(path)
            except ValueError as exc:
                _quarantine(path, exc)
        runs.append(clean_entry)
        _write_atomically(path, _dumps(runs) + "\n")
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
