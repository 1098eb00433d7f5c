"""Files shared between runs: write-then-rename, so a crash never leaves half a checkpoint,
CSV, model or run log behind, and the lock that serialises runs sharing a resource.

One helper for every file the project replaces: the new content goes to a hidden temp file
beside the target (`.NAME.PID.XXXX.tmp`), is fsynced, renamed over the target, and the
directory is fsynced (the rename lives in the directory entry; without that a power loss can
undo it). A writer killed before its rename leaves its temp file behind; the next write of the
same target removes such leftovers (all of them when the caller holds a lock that only writers
of this target take, else those whose process is gone).
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

_TMP_SUFFIX = ".tmp"


def _tmp_prefix(path: Path) -> str:
    return f".{path.name}."


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: Path, all_orphans: bool = False) -> list[Path]:
    """Remove temp files of `path` left by killed writers; returns what was removed.

    all_orphans: the caller holds a lock every writer of `path` takes, so any temp file is an
    orphan. Otherwise only those whose writer process (the PID in the name) is gone."""
    path = Path(path)
    prefix = _tmp_prefix(path)
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.(?:.*\.)?tmp$")
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*{_TMP_SUFFIX}"):
        match = pattern.match(tmp.name)
        if not all_orphans:
            if match is None:
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or _alive(pid):
                continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _new_temp(path: Path, mode: int | None, locked: bool) -> tuple[int, Path]:
    remove_stale_temps(path, all_orphans=locked)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = 0o644
    fd, name = tempfile.mkstemp(prefix=f"{_tmp_prefix(path)}{os.getpid()}.", suffix=_TMP_SUFFIX,
                                dir=path.parent)
    try:
        os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        os.unlink(name)
        raise
    return fd, Path(name)


def _finish(tmp: Path, path: Path, fill: Callable[[], object]) -> Path:
    """Run fill() (which writes and fsyncs tmp), rename tmp onto path, fsync the directory;
    on any failure remove tmp and leave path untouched."""
    try:
        fill()
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)
    return path


def replace_atomically(path: Path, write: Callable[[Path], object], mode: int | None = None,
                       locked: bool = False) -> Path:
    """Call write(tmp) on a hidden temp file beside `path` (e.g. `model.save`), fsync it,
    rename it onto `path`, fsync the directory. On failure `path` is untouched.

    mode: permission bits of the new file (default: the existing file's, else 0o644; the
    temp file would otherwise keep mkstemp's private 0o600). locked: see remove_stale_temps."""
    path = Path(path)
    fd, tmp = _new_temp(path, mode, locked)
    os.close(fd)

    def fill():
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)  # by name: write() used its own file object
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return _finish(tmp, path, fill)


def write_bytes_atomically(path: Path, data: bytes, mode: int | None = None,
                           locked: bool = False) -> Path:
    """replace_atomically for content already in memory."""
    path = Path(path)
    fd, tmp = _new_temp(path, mode, locked)

    def fill():
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    return _finish(tmp, path, fill)


@contextmanager
def exclusive(lock_path: Path, waiting_message: str):
    """Hold a file lock (filelock, as the run log uses); say so once if another process has it.
    The OS releases it when its holder dies, so a killed run never blocks the next one."""
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"{waiting_message} (lock {lock_path})...", flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
