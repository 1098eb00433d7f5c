"""Tests for run_log: real files, real processes, real SIGKILLs (POSIX only).

Run with ``python test_run_log.py`` or ``python -m pytest -q test_run_log.py``.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import filelock  # noqa: E402

from run_log import append_run, read_runs  # noqa: E402

try:
    import numpy as np
except ImportError:  # numpy is optional for run_log itself
    np = None


def _child(body: str, cwd: Path, **popen_kw) -> subprocess.Popen:
    """Start a fresh interpreter that imports run_log from this directory."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r})\n" + textwrap.dedent(body)
    return subprocess.Popen([sys.executable, "-c", code], cwd=cwd, **popen_kw)


def _run_child(body: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = _child(body, cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


class _TmpDirCase(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.log = self.dir / "logs" / "pipeline_runs.json"

    def temp_files(self) -> list[Path]:
        return sorted(self.log.parent.glob(".pipeline_runs.json.*.tmp"))


class TestAppendAndRead(_TmpDirCase):
    def test_absent_log_then_two_appends_keep_order(self):
        self.assertEqual(read_runs(self.log), [])
        self.assertEqual(append_run({"run": 1}, self.log), self.log)
        self.assertEqual(json.loads(self.log.read_text()), [{"run": 1}])
        append_run({"run": 2}, str(self.log))
        self.assertEqual(read_runs(self.log), [{"run": 1}, {"run": 2}])
        self.assertEqual(read_runs(str(self.log)), json.loads(self.log.read_text()))
        self.assertEqual(self.temp_files(), [])

    def test_round_trip_of_plain_json(self):
        entry = {"s": "é", "i": 3, "f": 0.25, "b": True, "n": None, "l": [1, {"x": [2]}]}
        append_run(entry, self.log)
        self.assertEqual(read_runs(self.log), [entry])

    def test_non_finite_floats_become_null(self):
        append_run({"loss": math.nan, "v": [math.inf, {"w": -math.inf}], "t": (1.5, math.nan)}, self.log)
        text = self.log.read_text()
        self.assertNotIn("NaN", text)
        self.assertNotIn("Infinity", text)
        self.assertEqual(read_runs(self.log), [{"loss": None, "v": [None, {"w": None}], "t": [1.5, None]}])

    def test_path_and_numpy_like_values(self):
        class Scalar:  # duck-typed stand-in for a numpy scalar
            def __init__(self, v):
                self.v = v

            def item(self):
                return self.v

        append_run({"ckpt": Path("runs/a/model.zip"), "ret": Scalar(12.5), "bad": Scalar(math.nan)}, self.log)
        self.assertEqual(read_runs(self.log), [{"ckpt": "runs/a/model.zip", "ret": 12.5, "bad": None}])

    @unittest.skipIf(np is None, "numpy not installed")
    def test_real_numpy_values(self):
        entry = {"a": np.float32(1.5), "b": np.int64(7), "c": np.float32("nan"), "d": np.float64("inf"),
                 "e": np.arange(3), "f": np.array([0.5, np.nan]), "g": np.bool_(True)}
        append_run(entry, self.log)
        self.assertEqual(read_runs(self.log),
                         [{"a": 1.5, "b": 7, "c": None, "d": None, "e": [0, 1, 2], "f": [0.5, None], "g": True}])

    def test_file_mode_is_not_mkstemp_private(self):
        append_run({"run": 1}, self.log)
        self.assertEqual(self.log.stat().st_mode & 0o777, 0o644)


class TestConcurrency(_TmpDirCase):
    N_PROCS, N_EACH = 20, 5

    def test_concurrent_processes_lose_nothing(self):
        body = f"""
            import run_log
            p = int(sys.argv[1])
            for i in range({self.N_EACH}):
                run_log.append_run({{"proc": p, "i": i}}, {str(self.log)!r}, lock_timeout_s=60)
        """
        code = f"import sys; sys.path.insert(0, {str(HERE)!r})\n" + textwrap.dedent(body)
        procs = [subprocess.Popen([sys.executable, "-c", code, str(p)], cwd=self.dir, stderr=subprocess.PIPE)
                 for p in range(self.N_PROCS)]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 0, err.decode())
        runs = read_runs(self.log)
        pairs = [(r["proc"], r["i"]) for r in runs]
        self.assertEqual(len(pairs), self.N_PROCS * self.N_EACH)
        self.assertEqual(sorted(pairs), [(p, i) for p in range(self.N_PROCS) for i in range(self.N_EACH)])
        for p in range(self.N_PROCS):  # each writer's own entries stay in its order
            self.assertEqual([i for q, i in pairs if q == p], list(range(self.N_EACH)))
        self.assertEqual(self.temp_files(), [])

    def test_lock_held_elsewhere_times_out_and_is_freed_when_holder_dies(self):
        append_run({"run": 0}, self.log)
        holder = _child(f"""
            import time, filelock
            lock = filelock.FileLock({str(self.log) + ".lock"!r})
            lock.acquire()
            print("locked", flush=True)
            time.sleep(60)
        """, self.dir, stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(holder.stdout.readline().strip(), "locked")
            with self.assertRaises(filelock.Timeout):
                append_run({"run": "blocked"}, self.log, lock_timeout_s=0.3)
        finally:
            holder.kill()
            holder.communicate(timeout=10)
        self.assertEqual(holder.returncode, -signal.SIGKILL)
        t0 = time.monotonic()
        append_run({"run": 1}, self.log, lock_timeout_s=5)
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(read_runs(self.log), [{"run": 0}, {"run": 1}])


class TestKilledWriter(_TmpDirCase):
    def _prime(self):
        append_run({"run": 0}, self.log)
        append_run({"run": 1, "loss": 0.5}, self.log)
        return self.log.read_bytes()

    def _recover_and_check(self, before: bytes):
        self.assertEqual(self.log.read_bytes(), before)  # the killed writer changed nothing
        t0 = time.monotonic()
        append_run({"run": 2}, self.log, lock_timeout_s=2)
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(read_runs(self.log), [{"run": 0}, {"run": 1, "loss": 0.5}, {"run": 2}])
        self.assertEqual(self.temp_files(), [])

    def test_killed_between_temp_write_and_rename(self):
        before = self._prime()
        res = _run_child(f"""
            import os, signal, run_log
            def die(*args, **kwargs):
                os.kill(os.getpid(), signal.SIGKILL)
            os.replace = die  # atomic_file's rename, run_log's writer
            run_log.append_run({{"run": "doomed"}}, {str(self.log)!r}, lock_timeout_s=5)
            print("NOT KILLED")
        """, self.dir)
        self.assertEqual(res.returncode, -signal.SIGKILL, res.stderr)
        self.assertNotIn("NOT KILLED", res.stdout)
        # It died exactly at the rename: the complete new array sits in an orphaned temp file.
        (tmp,) = self.temp_files()
        self.assertEqual(json.loads(tmp.read_text())[-1], {"run": "doomed"})
        self._recover_and_check(before)

    def test_killed_mid_write_of_temp_file(self):
        before = self._prime()
        res = _run_child(f"""
            import os, signal, tempfile, run_log
            real_mkstemp, real_write = tempfile.mkstemp, os.write
            temp_fds = set()
            def mkstemp(*args, **kwargs):
                fd, name = real_mkstemp(*args, **kwargs)
                temp_fds.add(fd)
                return fd, name
            def write(fd, data):
                if fd in temp_fds:  # write half of the new log, then die inside the write
                    real_write(fd, bytes(data[: len(data) // 2]))
                    os.kill(os.getpid(), signal.SIGKILL)
                return real_write(fd, data)
            tempfile.mkstemp = mkstemp  # what atomic_file, run_log's writer, calls
            os.write = write
            run_log.append_run({{"run": "doomed"}}, {str(self.log)!r}, lock_timeout_s=5)
            print("NOT KILLED")
        """, self.dir)
        self.assertEqual(res.returncode, -signal.SIGKILL, res.stderr)
        self.assertNotIn("NOT KILLED", res.stdout)
        (tmp,) = self.temp_files()
        partial = tmp.read_bytes()
        self.assertGreater(len(partial), 0)
        with self.assertRaises(ValueError):
            json.loads(partial)  # truly torn
        self._recover_and_check(before)


class TestCorruptLog(_TmpDirCase):
    CORRUPT_RE = r"pipeline_runs\.json\.corrupt-\d{8}T\d{6}Z(-\d+)?"

    def _check_moved_aside(self, original: bytes):
        with self.assertWarnsRegex(RuntimeWarning, "moved it to") as cm:
            append_run({"run": "new"}, self.log)
        self.assertEqual(len(str(cm.warning).splitlines()), 1)
        moved = [p for p in self.log.parent.iterdir() if re.fullmatch(self.CORRUPT_RE, p.name)]
        self.assertEqual(len(moved), 1)
        self.assertIn(str(moved[0]), str(cm.warning))
        self.assertEqual(moved[0].read_bytes(), original)
        self.assertEqual(read_runs(self.log), [{"run": "new"}])

    def _write_corrupt(self, data: bytes):
        self.log.parent.mkdir(parents=True)
        self.log.write_bytes(data)

    def test_garbage_bytes(self):
        garbage = b"\x00\xff[{\"run\": 1}, {\"ru"
        self._write_corrupt(garbage)
        with self.assertRaises(ValueError):
            read_runs(self.log)
        self.assertEqual(self.log.read_bytes(), garbage)  # reading never moves anything
        self._check_moved_aside(garbage)

    def test_json_object_instead_of_list(self):
        obj = b'{"run": 1, "note": "someone wrote a dict"}\n'
        self._write_corrupt(obj)
        with self.assertRaises(ValueError):
            read_runs(self.log)
        self._check_moved_aside(obj)

    def test_existing_quarantine_name_gets_a_counter(self):
        self._write_corrupt(b"not json")
        # Occupy the names for this second and the next so the move must add a counter.
        now = time.time()
        taken = {}
        for t in (now, now + 1):
            name = f"pipeline_runs.json.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(t))}"
            (self.log.parent / name).write_bytes(b"older quarantine")
            taken[name] = b"older quarantine"
        with self.assertWarns(RuntimeWarning):
            append_run({"run": "new"}, self.log)
        for name, data in taken.items():
            self.assertEqual((self.log.parent / name).read_bytes(), data)
        (moved,) = [p for p in self.log.parent.iterdir() if re.fullmatch(self.CORRUPT_RE, p.name)
                    and p.name not in taken]
        self.assertTrue(moved.name.endswith("-1"), moved.name)
        self.assertEqual(moved.read_bytes(), b"not json")


class TestUnserialisableEntry(_TmpDirCase):
    def _assert_rejected(self, entry, exc=(TypeError, ValueError)):
        before_listing = sorted(p.name for p in self.log.parent.iterdir())
        before = self.log.read_bytes()
        with self.assertRaises(exc):
            append_run(entry, self.log)
        self.assertEqual(self.log.read_bytes(), before)
        self.assertEqual(sorted(p.name for p in self.log.parent.iterdir()), before_listing)

    def test_bad_entries_leave_log_byte_identical(self):
        append_run({"run": 0, "loss": math.nan}, self.log)
        self._assert_rejected({"model": object()})
        self._assert_rejected({"nested": [1, {"deep": {1, 2}}]})
        self._assert_rejected({("tuple", "key"): 1})
        self._assert_rejected(["not", "a", "dict"], TypeError)
        self.assertEqual(read_runs(self.log), [{"run": 0, "loss": None}])

    def test_bad_entry_on_absent_log_creates_nothing(self):
        with self.assertRaises(TypeError):
            append_run({"model": object()}, self.log)
        self.assertFalse(self.log.parent.exists())


if __name__ == "__main__":
    unittest.main()
