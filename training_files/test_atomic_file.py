"""Tests for atomic_file: the one write-then-rename helper behind checkpoints, the metrics CSV,
the hybrid model and the run log.

Durability cannot be observed without pulling the plug, so the fsync test records the order
of the real os calls (fsync of the temp file's data, rename, fsync of the directory): it fails
if either fsync is dropped or moved after the rename.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import atomic_file  # noqa: E402
from atomic_file import remove_stale_temps, replace_atomically, write_bytes_atomically  # noqa: E402


class _Case(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.path = self.dir / "model.zip"

    def temps(self) -> list[Path]:
        return sorted(self.dir.glob(".model.zip.*.tmp"))

    def record_calls(self):
        """Spy on os.fsync / os.replace (the real ones still run)."""
        calls = []
        real_fsync, real_replace = os.fsync, os.replace

        def fsync(fd):
            kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
            size = os.fstat(fd).st_size
            calls.append(("fsync", kind, size))
            return real_fsync(fd)

        def replace(src, dst):
            calls.append(("replace", Path(src).name, Path(dst).name))
            return real_replace(src, dst)

        patches = [mock.patch.object(atomic_file.os, "fsync", fsync),
                   mock.patch.object(atomic_file.os, "replace", replace)]
        for p in patches:
            p.start()
            self.addCleanup(p.stop)
        return calls


class TestDurability(_Case):
    def _check_order(self, calls, size):
        kinds = [c[0] if c[0] == "replace" else f"fsync-{c[1]}" for c in calls]
        self.assertEqual(kinds, ["fsync-file", "replace", "fsync-dir"], calls)
        self.assertEqual(calls[0][2], size, "the data must be written before its fsync")
        self.assertTrue(calls[1][1].startswith(".model.zip.") and calls[1][1].endswith(".tmp"))
        self.assertEqual(calls[1][2], "model.zip")

    def test_bytes_fsync_file_then_rename_then_fsync_dir(self):
        calls = self.record_calls()
        write_bytes_atomically(self.path, b"x" * 1000)
        self._check_order(calls, 1000)
        self.assertEqual(self.path.read_bytes(), b"x" * 1000)

    def test_callback_fsync_file_then_rename_then_fsync_dir(self):
        calls = self.record_calls()
        replace_atomically(self.path, lambda tmp: tmp.write_bytes(b"y" * 77))
        self._check_order(calls, 77)
        self.assertEqual(self.path.read_bytes(), b"y" * 77)

    def test_run_log_uses_the_helper(self):
        import run_log

        calls = self.record_calls()
        run_log.append_run({"a": 1}, self.dir / "runs.json")
        self.assertEqual([c[0] if c[0] == "replace" else f"fsync-{c[1]}" for c in calls],
                         ["fsync-file", "replace", "fsync-dir"])


class TestFailures(_Case):
    def test_failed_write_leaves_target_and_no_temp(self):
        self.path.write_bytes(b"old")

        def boom(tmp):
            tmp.write_bytes(b"half")
            raise OSError("disk full")

        with self.assertRaises(OSError):
            replace_atomically(self.path, boom)
        self.assertEqual(self.path.read_bytes(), b"old")
        self.assertEqual(self.temps(), [])

    def test_mode_kept_or_default(self):
        write_bytes_atomically(self.path, b"a")
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o644)
        os.chmod(self.path, 0o640)
        write_bytes_atomically(self.path, b"b")
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o640)


class TestStaleTemps(_Case):
    def _dead_pid(self) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        return proc.pid

    def test_temp_of_a_dead_writer_is_removed_on_next_write(self):
        dead = self._dead_pid()
        old_style = self.dir / f".model.zip.{dead}.tmp"  # the earlier helper's name
        new_style = self.dir / f".model.zip.{dead}.abc123.tmp"
        for p in (old_style, new_style):
            p.write_bytes(b"orphan")
        write_bytes_atomically(self.path, b"new")
        self.assertEqual(self.temps(), [])

    def test_temp_of_a_live_writer_is_kept_unless_locked(self):
        live = self.dir / f".model.zip.{os.getppid()}.abc.tmp"
        unknown = self.dir / ".model.zip.notapid.tmp"
        for p in (live, unknown):
            p.write_bytes(b"busy")
        write_bytes_atomically(self.path, b"new")
        self.assertEqual(self.temps(), sorted([live, unknown]))
        removed = remove_stale_temps(self.path, all_orphans=True)
        self.assertEqual(sorted(removed), sorted([live, unknown]))
        self.assertEqual(self.temps(), [])

    def test_other_files_are_never_touched(self):
        dead = self._dead_pid()
        keep = [self.dir / f".other.zip.{dead}.x.tmp", self.dir / f"model.zip.{dead}.tmp",
                self.dir / f".model.zip.{dead}.x.tmpx"]
        for p in keep:
            p.write_bytes(b"keep")
        remove_stale_temps(self.path, all_orphans=True)
        self.assertTrue(all(p.exists() for p in keep))


if __name__ == "__main__":
    unittest.main()
