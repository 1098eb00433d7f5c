"""Tests for bc.py (training, checkpoint files, metrics CSV, frozen normalisation) and
checkpoints.py (best-checkpoint selection, reuse-or-retrain decision).

Real BC runs on tiny real data (a Minari dataset rolled out in Walker2d-v4, or small synthetic
arrays with Walker2d-v4's 17-dim observations / 6-dim actions) and 32x32 networks.

Run with ``python test_bc_checkpoints.py`` or ``python -m pytest -q test_bc_checkpoints.py``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
import warnings
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import PPO  # noqa: E402

import bc  # noqa: E402
import checkpoints  # noqa: E402
import hparams  # noqa: E402
import offline_data  # noqa: E402
from errors import PipelineError  # noqa: E402
from normalized_policy import FrozenObsNormalizer, obs_normalizer  # noqa: E402
from testing_utils import IsolatedTestCase, write_hparam_file, write_tiny_minari  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)

OBS_DIM, ACT_DIM = 17, 6  # Walker2d-v4
CKPT_RE = re.compile(r"^(?P<name>.+)_epoch(?P<epoch>\d+) with avg loss (?P<loss>-?\d+\.\d{4})\.zip$")
HEADER = "epoch,train_loss,val_loss"


# --------------------------------------------------------------------------- helpers

def synthetic_data(n_episodes: int = 10, ep_len: int = 40, seed: int = 0) -> offline_data.OfflineData:
    """Walker2d-shaped transitions whose actions are a smooth function of the observations.

    Observations have non-trivial per-dimension means/scales and a per-episode offset, so the
    statistics of the training split differ from those of the full dataset.
    """
    rng = np.random.default_rng(seed)
    base = rng.uniform(-3, 3, OBS_DIM)
    scale = rng.uniform(0.5, 4.0, OBS_DIM)
    weights = rng.normal(0, 1 / math.sqrt(OBS_DIM), (OBS_DIM, ACT_DIM)) * 2.0
    obs = np.concatenate([base + rng.normal(0, 1.0, OBS_DIM) * scale
                          + scale * rng.standard_normal((ep_len, OBS_DIM))
                          for _ in range(n_episodes)]).astype(np.float32)
    z = (obs - base) / scale
    actions = np.clip(np.tanh(z @ weights) * 0.8 + 0.05 * rng.standard_normal((len(obs), ACT_DIM)),
                      -1, 1).astype(np.float32)
    n = len(obs)
    truncs = np.zeros(n, bool)
    truncs[ep_len - 1::ep_len] = True
    next_obs = np.concatenate([obs[1:], obs[-1:]]).astype(np.float32)
    return offline_data.OfflineData(obs, actions, rng.standard_normal(n).astype(np.float32),
                                    np.zeros(n, bool), truncs, next_obs)


def settings(epochs: int = 3, save_every: int = 1, seed: int = 0, batch_size: int = 64,
             log_interval: int = 1000) -> bc.BCSettings:
    return bc.BCSettings(epochs=epochs, batch_size=batch_size, log_interval=log_interval,
                         save_every_epochs=save_every, seed=seed, device="cpu")


def read_csv(path: Path) -> list[tuple[int, float, float]]:
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER, lines[0]
    return [(int(e), float(t), float(v)) for e, t, v in (ln.split(",") for ln in lines[1:])]


def quiet():
    """Silence BC's progress output (tqdm writes to stderr, log lines to stdout)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    return stack


def train_capturing_model(data, cfg, sett, out_dir: Path, name: str):
    """Run the real train_bc, keeping a handle on the model it builds (a spy, not a mock)."""
    captured = []
    real = bc.build_model

    def spy(*args, **kwargs):
        model = real(*args, **kwargs)
        captured.append(model)
        return model

    with mock.patch.object(bc, "build_model", spy), quiet():
        csv_path = bc.train_bc(data, cfg, sett, out_dir, name)
    assert len(captured) == 1
    return csv_path, captured[0]


class FakeTerminal:
    def __init__(self, tty: bool):
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


class ScriptedAsk:
    """`ask` replacement answering from a script and recording the prompts."""

    def __init__(self, *answers: str):
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise AssertionError(f"asked more often than scripted: {prompt!r}")
        return self.answers.pop(0)


def never_ask(prompt: str) -> str:
    raise AssertionError(f"should not prompt: {prompt!r}")


class BCTestCase(IsolatedTestCase):
    def setUp(self):
        super().setUp()
        self.hparam_path = write_hparam_file(self.tmp / "hparam.yml")
        self.cfg, _ = hparams.load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                           path=self.hparam_path)
        self.ckpt_dir = bc.checkpoint_dir(Path("bc_checkpoints"), "mujoco", "walker2d")

    def assertNoTempFiles(self, root: Path):
        leftovers = [p for p in root.rglob("*") if p.name.endswith(".tmp")
                     or (p.name.startswith(".") and not p.name.endswith(".lock"))]
        self.assertEqual(leftovers, [], "temporary files left behind")


# --------------------------------------------------------------------------- BC training

class TestBCCheckpointFiles(BCTestCase):
    def test_config_is_tiny(self):
        self.assertIsInstance(self.cfg, hparams.BCConfig)
        self.assertEqual(self.cfg.policy.net_arch.pi, [32, 32])
        self.assertEqual(self.cfg.env_id, "Walker2d-v4")

    def check_run_files(self, name: str, expected_epochs: list[int], csv_path: Path):
        directory = self.work / "bc_checkpoints" / "mujoco" / "walker2d"
        self.assertEqual(csv_path.resolve(), (directory / f"{name}_metrics.csv").resolve())
        lines = csv_path.read_text().splitlines()
        self.assertEqual(lines[0], HEADER)
        rows = read_csv(csv_path)
        self.assertEqual([r[0] for r in rows], expected_epochs)
        for _, train_loss, val_loss in rows:
            self.assertTrue(math.isfinite(train_loss) and math.isfinite(val_loss))
        expected_zips = {f"{name}_epoch{e} with avg loss {v:.4f}.zip" for e, _, v in rows}
        zips = {p.name for p in directory.glob("*.zip")}
        self.assertEqual(zips, expected_zips)
        for z in zips:
            m = CKPT_RE.match(z)
            self.assertIsNotNone(m, z)
            self.assertEqual(m["name"], name)
        self.assertEqual({p.name for p in directory.iterdir() if not p.name.endswith(".lock")},
                         expected_zips | {csv_path.name})
        self.assertNoTempFiles(self.work)
        # every zip is a real SB3 checkpoint
        for z in sorted(zips):
            model = PPO.load(str(directory / z), device="cpu")
            self.assertIsInstance(model.policy.features_extractor, FrozenObsNormalizer)
        return rows

    def test_minari_two_names_epochs_2_4_5(self):
        write_tiny_minari("mujoco/walker2d/tiny-v0", episodes=3, seed=0)
        write_tiny_minari("mujoco/walker2d/tiny-v1", episodes=3, seed=1)
        names = ["tiny-v0", "tiny-v1"]
        data = offline_data.load_offline_data("mujoco", "walker2d", names, "Walker2d-v4")
        self.assertEqual(data.observations.shape[1:], (OBS_DIM,))
        self.assertEqual(data.actions.shape[1:], (ACT_DIM,))
        name = bc.run_name(names)
        self.assertEqual(name, "tiny-v0+tiny-v1")
        with quiet():
            csv_path = bc.train_bc(data, self.cfg, settings(epochs=5, save_every=2),
                                   self.ckpt_dir, name)
        self.check_run_files(name, [2, 4, 5], csv_path)

    def test_synthetic_save_every_divides_epochs(self):
        name = bc.run_name(["expert-v0"])
        with quiet():
            csv_path = bc.train_bc(synthetic_data(6, 20), self.cfg, settings(epochs=6, save_every=3),
                                   self.ckpt_dir, name)
        self.check_run_files(name, [3, 6], csv_path)

    def test_a_single_episode_validates_on_its_training_data(self):
        name = bc.run_name(["expert-v0"])
        with quiet():
            csv_path = bc.train_bc(synthetic_data(1, 30), self.cfg, settings(epochs=2),
                                   self.ckpt_dir, name)
        self.check_run_files(name, [1, 2], csv_path)

    def test_save_every_larger_than_epochs_saves_last(self):
        name = bc.run_name(["expert-v0", "medium-v0"])
        with quiet():
            csv_path = bc.train_bc(synthetic_data(6, 20), self.cfg, settings(epochs=2, save_every=5),
                                   self.ckpt_dir, name)
        self.check_run_files("expert-v0+medium-v0", [2], csv_path)

    def test_checkpoint_loss_is_that_epochs_val_loss(self):
        """The number in the file name is the epoch's validation NLL of that checkpoint."""
        data = synthetic_data(10, 30)
        name = "expert-v0"
        with quiet():
            csv_path = bc.train_bc(data, self.cfg, settings(epochs=3), self.ckpt_dir, name)
        train_ids, val_ids = bc.split_episodes(data, self.cfg.val_fraction, 0)
        val = data.select_episodes(val_ids)
        for epoch, _, val_loss in read_csv(csv_path):
            path = bc.checkpoint_file(self.ckpt_dir, name, epoch, val_loss)
            model = PPO.load(str(path), device="cpu")
            with torch.no_grad():
                nll = bc.evaluate_nll(model.policy, torch.as_tensor(val.observations),
                                      torch.as_tensor(val.actions))
            self.assertAlmostEqual(nll, val_loss, places=4)


class TestBCDeterminism(BCTestCase):
    def run_in(self, sub: str, seed: int) -> tuple[str, set[str]]:
        out = self.work / sub / "bc_checkpoints" / "mujoco" / "walker2d"
        with quiet():
            csv_path = bc.train_bc(synthetic_data(8, 25), self.cfg, settings(epochs=3, seed=seed),
                                   out, "expert-v0")
        return csv_path.read_text(), {p.name for p in out.glob("*.zip")}

    def test_same_seed_same_losses_different_seed_different(self):
        text_a, zips_a = self.run_in("a", seed=3)
        text_b, zips_b = self.run_in("b", seed=3)
        text_c, _ = self.run_in("c", seed=4)
        self.assertEqual(len(text_a.splitlines()), 4)
        self.assertEqual(text_a, text_b)
        self.assertEqual(zips_a, zips_b)
        rows_a, rows_c = read_csv_text(text_a), read_csv_text(text_c)
        self.assertEqual([r[0] for r in rows_a], [r[0] for r in rows_c])
        self.assertNotEqual([r[1] for r in rows_a], [r[1] for r in rows_c])
        self.assertNotEqual([r[2] for r in rows_a], [r[2] for r in rows_c])


def read_csv_text(text: str) -> list[tuple[int, float, float]]:
    lines = text.splitlines()
    return [(int(e), float(t), float(v)) for e, t, v in (ln.split(",") for ln in lines[1:])]


class TestBCLearns(BCTestCase):
    def test_val_loss_decreases(self):
        with quiet():
            csv_path = bc.train_bc(synthetic_data(10, 40), self.cfg, settings(epochs=8, batch_size=32),
                                   self.ckpt_dir, "expert-v0")
        rows = read_csv(csv_path)
        self.assertEqual([r[0] for r in rows], list(range(1, 9)))
        first_val, last_val = rows[0][2], rows[-1][2]
        self.assertLess(last_val, first_val - 0.1, rows)
        self.assertLess(rows[-1][1], rows[0][1], rows)
        best = checkpoints.find_best_checkpoint(self.ckpt_dir, "expert-v0")
        self.assertEqual(best.val_loss, min(r[2] for r in rows))
        self.assertNotEqual(best.epoch, 1)
        self.assertEqual(best.epochs_trained, 8)


class TestFrozenNormalisation(BCTestCase):
    def setUp(self):
        super().setUp()
        self.data = synthetic_data(10, 30, seed=5)
        self.csv_path, self.live = train_capturing_model(
            self.data, self.cfg, settings(epochs=2, seed=1), self.ckpt_dir, "expert-v0")
        rows = read_csv(self.csv_path)
        epoch, _, val_loss = rows[-1]
        self.last_ckpt = bc.checkpoint_file(self.ckpt_dir, "expert-v0", epoch, val_loss)
        self.assertTrue(self.last_ckpt.exists())
        # Expected statistics, computed here from the raw arrays of the training episodes.
        train_ids, val_ids = bc.split_episodes(self.data, self.cfg.val_fraction, 1)
        self.assertTrue(len(val_ids) >= 1 and not set(train_ids) & set(val_ids))
        ep_len = 30
        idx = np.concatenate([np.arange(i * ep_len, (i + 1) * ep_len) for i in sorted(train_ids)])
        self.expected_mean = self.data.observations[idx].mean(0)
        self.expected_std = self.data.observations[idx].std(0)
        # the test can tell the training split from the whole dataset
        self.assertFalse(np.allclose(self.expected_mean, self.data.observations.mean(0), atol=1e-3))
        rng = np.random.default_rng(11)
        self.raw_obs = np.concatenate([
            self.data.observations[:40],
            self.data.observations[:5] * 100.0,   # far outside the data: exercises the clip
            rng.standard_normal((5, OBS_DIM)).astype(np.float32)]).astype(np.float32)

    def assert_stats(self, policy):
        norm = obs_normalizer(policy)
        np.testing.assert_allclose(norm.obs_mean.cpu().numpy(), self.expected_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(norm.obs_std.cpu().numpy(), self.expected_std, rtol=1e-5, atol=1e-5)

    def test_buffers_are_training_split_statistics(self):
        self.assert_stats(self.live.policy)
        names = dict(self.live.policy.named_buffers())
        self.assertTrue(any(k.endswith("obs_mean") for k in names))
        params = dict(self.live.policy.named_parameters())
        self.assertFalse(any("obs_mean" in k or "obs_std" in k for k in params),
                         "statistics must be buffers, not trainable parameters")

    def test_load_in_process_gives_identical_actions(self):
        live_actions, _ = self.live.predict(self.raw_obs, deterministic=True)
        loaded = PPO.load(str(self.last_ckpt), device="cpu")
        self.assert_stats(loaded.policy)
        loaded_actions, _ = loaded.predict(self.raw_obs, deterministic=True)
        np.testing.assert_array_equal(loaded_actions, live_actions)
        # and the normalisation matters: the same weights without the stats act differently
        obs_t = torch.as_tensor(self.raw_obs)
        with torch.no_grad():
            means = loaded.policy.get_distribution(obs_t).distribution.mean.numpy()
            norm = obs_normalizer(loaded.policy)
            norm.obs_mean.zero_()
            norm.obs_std.fill_(1.0)
            unnormalised = loaded.policy.get_distribution(obs_t).distribution.mean.numpy()
        self.assertFalse(np.allclose(means, unnormalised, atol=1e-3))

    def test_load_in_foreign_process_gives_identical_actions(self):
        live_actions, _ = self.live.predict(self.raw_obs, deterministic=True)
        elsewhere = Path(tempfile.mkdtemp(dir=self.tmp, prefix="elsewhere-"))
        np.save(elsewhere / "obs.npy", self.raw_obs)
        code = textwrap.dedent("""
            import sys
            import numpy as np
            bad = [p for p in sys.path if "training_files" in p]
            assert not bad, bad
            try:
                import normalized_policy  # noqa: F401
            except ModuleNotFoundError:
                pass
            else:
                raise SystemExit("normalized_policy is importable: the test is not isolated")
            from stable_baselines3 import PPO
            model = PPO.load(sys.argv[1], device="cpu")
            actions, _ = model.predict(np.load("obs.npy"), deterministic=True)
            np.save("actions.npy", actions)
            ext = model.policy.features_extractor
            np.save("mean.npy", ext.obs_mean.numpy())
            np.save("std.npy", ext.obs_std.numpy())
            print(type(ext).__name__)
        """)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([sys.executable, "-c", code, str(self.last_ckpt.resolve())],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        self.assertIn("FrozenObsNormalizer", proc.stdout)
        np.testing.assert_array_equal(np.load(elsewhere / "actions.npy"), live_actions)
        np.testing.assert_allclose(np.load(elsewhere / "mean.npy"), self.expected_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.load(elsewhere / "std.npy"), self.expected_std, rtol=1e-5, atol=1e-5)


class TestArchivePrevious(BCTestCase):
    def test_previous_run_moved_and_selection_sees_new_run_only(self):
        name = "expert-v0"
        d = self.ckpt_dir
        self.assertIsNone(bc.archive_previous(d, name) if d.is_dir() else None)
        # an old run trained longer (lower losses) ...
        with quiet():
            bc.train_bc(synthetic_data(10, 40), self.cfg, settings(epochs=6, save_every=2, batch_size=32),
                        d, name)
        old_rows = read_csv(bc.metrics_file(d, name))
        old_zips = {p.name for p in d.glob("*.zip")}
        # ... and another dataset's files, which must stay where they are
        other_csv = bc.metrics_file(d, "other-v0")
        other_csv.write_text(HEADER + "\n1,0.1,0.1\n")
        other_zip = bc.checkpoint_file(d, "other-v0", 1, 0.1)
        shutil.copy(d / sorted(old_zips)[0], other_zip)

        dest = bc.archive_previous(d, name)
        self.assertIsNotNone(dest)
        self.assertEqual(dest.parent.resolve(), (d / "superseded").resolve())
        self.assertTrue(dest.name.startswith(f"{name}_"))
        self.assertEqual({p.name for p in dest.iterdir()}, old_zips | {f"{name}_metrics.csv"})
        self.assertEqual(read_csv(dest / f"{name}_metrics.csv"), old_rows)
        self.assertTrue(other_csv.exists() and other_zip.exists())
        self.assertEqual(list(d.glob(f"{name}_*")), [])
        self.assertFalse(checkpoints.has_checkpoint(d, name))
        with self.assertRaises(PipelineError):
            checkpoints.find_best_checkpoint(d, name)

        # new, shorter run: higher losses than the old run's best
        with quiet():
            bc.train_bc(synthetic_data(10, 40), self.cfg, settings(epochs=1, seed=2), d, name)
        new_rows = read_csv(bc.metrics_file(d, name))
        self.assertEqual([r[0] for r in new_rows], [1])
        self.assertLess(min(r[2] for r in old_rows), new_rows[0][2],
                        "test setup: the old run should look better than the new one")
        best = checkpoints.find_best_checkpoint(d, name)
        self.assertEqual(best.epoch, 1)
        self.assertEqual(best.val_loss, new_rows[0][2])
        self.assertEqual(best.epochs_trained, 1)
        self.assertEqual(best.path.parent.resolve(), d.resolve())
        self.assertNoTempFiles(self.work)


# --------------------------------------------------------------------------- selection

class SelectionTestCase(IsolatedTestCase):
    """Hand-written CSVs next to copies of one real SB3 checkpoint."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        import gymnasium as gym

        cls._cls_tmp = tempfile.TemporaryDirectory(prefix="bc-ckpt-src-")
        root = Path(cls._cls_tmp.name)
        cfg, _ = hparams.load_hparams("Walker2d-v4-bc-large", "Walker2d-v4-hybrid",
                                      path=write_hparam_file(root / "hparam.yml"))
        env = gym.make(cfg.env_id)
        model = bc.build_model(cfg, env, "cpu", 0)
        env.close()
        cls.valid_zip = root / "valid.zip"
        model.save(str(cls.valid_zip))

    @classmethod
    def tearDownClass(cls):
        cls._cls_tmp.cleanup()
        super().tearDownClass()

    def setUp(self):
        super().setUp()
        self.dir = Path("bc_checkpoints") / "mujoco" / "walker2d"
        self.dir.mkdir(parents=True)
        self.name = "expert-v0"

    def write_csv(self, body: str, name: str | None = None) -> Path:
        path = bc.metrics_file(self.dir, name or self.name)
        path.write_text(HEADER + "\n" + body)
        return path

    def add_zip(self, epoch: int, val_loss: float, name: str | None = None,
                content: bytes | None = None) -> Path:
        path = bc.checkpoint_file(self.dir, name or self.name, epoch, val_loss)
        if content is None:
            shutil.copy(self.valid_zip, path)
        else:
            path.write_bytes(content)
        return path


class TestFindBestCheckpoint(SelectionTestCase):
    def test_lowest_val_loss_wins(self):
        self.write_csv("1,1.5,0.9\n2,1.2,0.3\n3,1.1,0.5\n")
        paths = {e: self.add_zip(e, v) for e, v in ((1, 0.9), (2, 0.3), (3, 0.5))}
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # a clean CSV warns about nothing
            best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.epoch, 2)
        self.assertEqual(best.path, paths[2])
        self.assertEqual(best.train_loss, 1.2)
        self.assertEqual(best.val_loss, 0.3)
        self.assertEqual(best.epochs_trained, 3)
        self.assertTrue(best.path.name.endswith("_epoch2 with avg loss 0.3000.zip"))

    def test_negative_losses_full_precision(self):
        self.write_csv("1,-0.5,-1.23456789\n2,-0.6,-1.2345\n")
        self.add_zip(1, -1.23456789)
        self.add_zip(2, -1.2345)
        best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.epoch, 1)
        self.assertEqual(best.path.name, "expert-v0_epoch1 with avg loss -1.2346.zip")

    def test_damaged_rows_are_skipped_with_warnings(self):
        # Each damaged row names a loss lower than the good row's; where a zip can be named
        # for it, one exists, so only the row check keeps it from winning.
        body = ("1,1.0,0.9\n"        # line 2: good
                "7,0.5\n"            # line 3: truncated
                "8,0.4,\n"           # line 4: half row
                "abc,def,ghi\n"      # line 5: garbage
                "9,nan,0.1\n"        # line 6: NaN train loss
                "10,0.2,nan\n"       # line 7: NaN val loss
                "11,inf,0.05\n"      # line 8: inf
                "12,0.2,-inf\n"      # line 9: -inf
                "13,0.1,0.01,5\n"    # line 10: extra column
                "14,0.0")            # line 11: cut mid-write, no newline
        self.write_csv(body)
        good = self.add_zip(1, 0.9)
        for epoch, val in ((9, 0.1), (11, 0.05), (13, 0.01)):
            self.add_zip(epoch, val)
        with self.assertWarns(UserWarning) as cm:
            best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.path, good)
        self.assertEqual(best.epoch, 1)
        self.assertEqual(best.epochs_trained, 1)
        messages = "\n".join(str(w.message) for w in cm.warnings)
        for line_no in range(3, 12):
            self.assertRegex(messages, rf"_metrics\.csv:{line_no}\b")

    def test_missing_zip_is_skipped(self):
        self.write_csv("1,1.0,0.9\n2,0.8,0.2\n3,0.7,0.4\n")
        self.add_zip(1, 0.9)
        expected = self.add_zip(3, 0.4)
        with self.assertWarns(UserWarning) as cm:
            best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.path, expected)
        self.assertEqual(best.epoch, 3)
        self.assertEqual(best.epochs_trained, 3)
        self.assertIn("epoch 2", "\n".join(str(w.message) for w in cm.warnings))

    def test_corrupt_zip_is_skipped_and_next_best_chosen(self):
        self.write_csv("1,1.0,0.9\n2,0.8,0.2\n3,0.7,0.4\n4,0.6,0.3\n")
        self.add_zip(1, 0.9)
        self.add_zip(2, 0.2, content=b"garbage bytes, not a zip at all" * 10)
        truncated = self.valid_zip.read_bytes()[: self.valid_zip.stat().st_size // 2]
        self.add_zip(4, 0.3, content=truncated)
        expected = self.add_zip(3, 0.4)
        with self.assertWarns(UserWarning) as cm:
            best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.path, expected)
        self.assertEqual(best.epoch, 3)
        messages = "\n".join(str(w.message) for w in cm.warnings)
        self.assertIn("epoch2 with avg loss 0.2000.zip", messages)

    # Regression: a truncated zip opens but holds no params; it must still warn.
    def test_truncated_zip_is_skipped_with_warning(self):
        self.write_csv("1,1.0,0.9\n2,0.8,0.3\n")
        expected = self.add_zip(1, 0.9)
        truncated = self.valid_zip.read_bytes()[: self.valid_zip.stat().st_size // 2]
        self.add_zip(2, 0.3, content=truncated)
        with self.assertWarns(UserWarning) as cm:
            best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.path, expected)
        self.assertIn("epoch2 with avg loss 0.3000.zip", "\n".join(str(w.message) for w in cm.warnings))

    def test_other_names_csvs_ignored(self):
        self.write_csv("1,1.0,0.9\n2,0.9,0.5\n")
        expected = self.add_zip(2, 0.5)
        self.add_zip(1, 0.9)
        for other in ("medium-v0", "expert-v0+medium-v0", "expert-v1"):
            self.write_csv("1,0.01,0.001\n", name=other)
            self.add_zip(1, 0.001, name=other)
        best = checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(best.path, expected)
        self.assertEqual(best.val_loss, 0.5)

    def test_no_csv(self):
        self.add_zip(1, 0.5)
        with self.assertRaises(PipelineError) as cm:
            checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(str(cm.exception), "No metrics CSV files found in bc_checkpoints/mujoco/walker2d")

    def test_no_csv_of_this_name_but_others(self):
        self.write_csv("1,0.1,0.1\n", name="medium-v0")
        self.add_zip(1, 0.1, name="medium-v0")
        out = io.StringIO()
        with self.assertRaises(PipelineError) as cm, contextlib.redirect_stdout(out):
            checkpoints.find_best_checkpoint(self.dir, self.name)
        self.assertEqual(str(cm.exception), f"No metrics CSV files found in {self.dir}")

    def test_no_usable_row(self):
        cases = {
            "header only": "",
            "all damaged": "1,0.5\nabc,def,ghi\n2,nan,0.3\n",
            "zips missing": "1,1.0,0.9\n2,0.8,0.7\n",
        }
        for label, body in cases.items():
            with self.subTest(label):
                self.write_csv(body)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with self.assertRaises(PipelineError) as cm:
                        checkpoints.find_best_checkpoint(self.dir, self.name)
                self.assertEqual(str(cm.exception), "Pipeline failed: No BC checkpoint available")
        with self.subTest("zips corrupt"):
            self.write_csv("1,1.0,0.9\n")
            self.add_zip(1, 0.9, content=b"\x00" * 100)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with self.assertRaises(PipelineError) as cm:
                    checkpoints.find_best_checkpoint(self.dir, self.name)
            self.assertEqual(str(cm.exception), "Pipeline failed: No BC checkpoint available")

    def test_missing_dir(self):
        missing = Path("bc_checkpoints") / "mujoco" / "hopper"
        with self.assertRaises(PipelineError) as cm:
            checkpoints.find_best_checkpoint(missing, self.name)
        self.assertEqual(str(cm.exception), "BC checkpoint dir not found: bc_checkpoints/mujoco/hopper")


# --------------------------------------------------------------------------- reuse or retrain

class TestShouldTrainBC(SelectionTestCase):
    def with_checkpoint(self):
        self.write_csv("1,1.0,0.9\n")
        self.add_zip(1, 0.9)
        self.assertTrue(checkpoints.has_checkpoint(self.dir, self.name))

    def decide(self, directory=None, skip_bc=False, force=False, stdin=None, ask=never_ask):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            result = checkpoints.should_train_bc(directory or self.dir, self.name, skip_bc, force,
                                                 stdin=stdin, ask=ask)
        return result, out.getvalue()

    def test_force_retrains_even_with_checkpoint(self):
        self.with_checkpoint()
        result, _ = self.decide(force=True, stdin=FakeTerminal(True))
        self.assertIs(result, True)

    def test_missing_dir_trains_and_says_so(self):
        shutil.rmtree("bc_checkpoints")
        result, out = self.decide(directory=Path("bc_checkpoints/mujoco/walker2d"),
                                  stdin=FakeTerminal(True))
        self.assertIs(result, True)
        self.assertIn("BC checkpoint dir not found: bc_checkpoints/mujoco/walker2d", out)

    def test_skip_bc_with_checkpoint_reuses(self):
        self.with_checkpoint()
        result, _ = self.decide(skip_bc=True, stdin=FakeTerminal(True))
        self.assertIs(result, False)

    def test_skip_bc_without_checkpoint_trains_and_says_so(self):
        for label, setup in (("empty dir", lambda: None),
                             ("csv without zip", lambda: self.write_csv("1,1.0,0.9\n")),
                             ("other name only", lambda: (self.write_csv("1,1,1\n", name="medium-v0"),
                                                          self.add_zip(1, 1.0, name="medium-v0")))):
            with self.subTest(label):
                for p in self.dir.iterdir():
                    p.unlink()
                setup()
                result, out = self.decide(skip_bc=True, stdin=FakeTerminal(False))
                self.assertIs(result, True)
                self.assertIn("--skip_bc", out)
                self.assertIn("training BC", out)

    def test_no_checkpoint_on_terminal_trains_without_asking(self):
        result, _ = self.decide(stdin=FakeTerminal(True))
        self.assertIs(result, True)

    def test_non_tty_reuses_and_says_so(self):
        self.with_checkpoint()
        for label, stdin in (("StringIO", io.StringIO("t\n")), ("isatty False", FakeTerminal(False))):
            with self.subTest(label):
                result, out = self.decide(stdin=stdin)
                self.assertIs(result, False)
                self.assertIn("reusing", out)
                self.assertIn("not a terminal", out)

    def test_tty_answers(self):
        self.with_checkpoint()
        for answer, expected in (("t", True), ("retrain", True), (" T \n", True),
                                 ("r", False), ("", False), ("reuse", False)):
            with self.subTest(answer=answer):
                ask = ScriptedAsk(answer)
                result, _ = self.decide(stdin=FakeTerminal(True), ask=ask)
                self.assertIs(result, expected)
                self.assertEqual(len(ask.prompts), 1)
                self.assertIn(self.name, ask.prompts[0])

    def test_tty_invalid_answer_asks_again(self):
        self.with_checkpoint()
        ask = ScriptedAsk("maybe", "t")
        result, out = self.decide(stdin=FakeTerminal(True), ask=ask)
        self.assertIs(result, True)
        self.assertEqual(len(ask.prompts), 2)
        self.assertIn("Please answer", out)

    # ------------------------------------------------------- with the settings record
    WANTED = {"seed": 7, "epochs": 50, "batch_size": 128, "hparam_bc": "k", "bc_config": {},
              "data": [{"name": "expert-v0", "source": "minari", "sha256": "s"}]}

    def with_recorded(self, **changes):
        self.with_checkpoint()
        bc.write_settings(self.dir, self.name, {**self.WANTED, **changes})

    def decide_full(self, skip_bc=False, force=False, stdin=None, ask=never_ask):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            decision = checkpoints.decide_bc(self.dir, self.name, self.WANTED, skip_bc, force,
                                             stdin=stdin, ask=ask)
        return decision, out.getvalue()

    def test_matching_settings_reuse_without_terminal(self):
        self.with_recorded()
        decision, out = self.decide_full(stdin=FakeTerminal(False))
        self.assertFalse(decision.train)
        self.assertEqual(decision.differences, [])
        self.assertIn("not a terminal, reusing", out)

    def test_other_settings_retrain_without_terminal_and_say_why(self):
        """Was a bug: a 1-epoch checkpoint of another seed was reused for --num_bc_epochs 50."""
        self.with_recorded(seed=1, epochs=1)
        decision, out = self.decide_full(stdin=FakeTerminal(False))
        self.assertTrue(decision.train)
        self.assertEqual(decision.differences, ["epochs: 1 -> 50", "seed: 1 -> 7"])
        self.assertIn("seed: 1 -> 7", out)
        self.assertIn("retraining", out)
        self.assertEqual(decision.as_log()["differences"], decision.differences)

    def test_no_record_retrains_without_terminal(self):
        self.with_checkpoint()
        decision, out = self.decide_full(stdin=FakeTerminal(False))
        self.assertTrue(decision.train)
        self.assertIn("no record", out)

    def test_skip_bc_reuses_other_settings_and_says_what_differs(self):
        self.with_recorded(batch_size=64)
        decision, out = self.decide_full(skip_bc=True, stdin=FakeTerminal(False))
        self.assertFalse(decision.train)
        self.assertEqual(decision.reason, "--skip_bc")
        self.assertIn("batch_size: 64 -> 128", out)

    def test_terminal_shows_the_difference_then_asks(self):
        self.with_recorded(hparam_bc="other")
        ask = ScriptedAsk("r")
        decision, out = self.decide_full(stdin=FakeTerminal(True), ask=ask)
        self.assertFalse(decision.train)
        self.assertIn("hparam_bc: 'other' -> 'k'", out)
        self.assertEqual(len(ask.prompts), 1)
        self.assertLess(out.index("hparam_bc"), len(out))

    def test_end_of_input_at_the_prompt_is_one_line(self):
        self.with_recorded()

        def eof(prompt):
            raise EOFError

        with self.assertRaises(PipelineError) as cm:
            self.decide_full(stdin=FakeTerminal(True), ask=eof)
        self.assertNotIn("\n", str(cm.exception))
        self.assertIn("--skip_bc", str(cm.exception))

    def test_default_stdin_is_sys_stdin(self):
        self.with_checkpoint()
        with mock.patch.object(sys, "stdin", io.StringIO("")):
            result, out = self.decide(stdin=None)
        self.assertIs(result, False)
        self.assertIn("reusing", out)


class TestSettingsRecord(BCTestCase):
    PROVENANCE = [{"name": "expert-v0", "source": "generated", "sha256": "ab" * 32, "path": "x"}]

    def test_record_holds_what_changes_the_weights(self):
        record = bc.settings_record(settings(epochs=7, seed=3, batch_size=32),
                                    "Walker2d-v4-bc-large", self.cfg, self.PROVENANCE)
        self.assertEqual((record["seed"], record["epochs"], record["batch_size"]), (3, 7, 32))
        self.assertEqual(record["hparam_bc"], "Walker2d-v4-bc-large")
        self.assertEqual(record["bc_config"]["learning_rate"], self.cfg.learning_rate)
        self.assertNotIn("eval_episodes", record["bc_config"])  # evaluation, not training
        self.assertEqual(record["data"], [{"name": "expert-v0", "source": "minari",
                                           "sha256": "ab" * 32}])
        # A generated dataset is the same Minari dataset on the next run.
        again = bc.settings_record(settings(epochs=7, seed=3, batch_size=32),
                                   "Walker2d-v4-bc-large", self.cfg,
                                   [{**self.PROVENANCE[0], "source": "minari"}])
        self.assertEqual(checkpoints.settings_differences(record, again), [])

    def test_written_atomically_read_back_and_archived(self):
        record = bc.settings_record(settings(), "k", self.cfg, self.PROVENANCE)
        self.ckpt_dir.mkdir(parents=True)
        path = bc.write_settings(self.ckpt_dir, "expert-v0", record)
        self.assertEqual(path.name, "expert-v0_bc_settings.json")
        self.assertEqual(bc.read_settings(self.ckpt_dir, "expert-v0"), record)
        self.assertNoTempFiles(self.work)
        path.write_text("{not json")
        with self.assertWarnsRegex(UserWarning, "unreadable"):
            self.assertIsNone(bc.read_settings(self.ckpt_dir, "expert-v0"))
        path.write_text(json.dumps(record))
        (self.ckpt_dir / "expert-v0_metrics.csv").write_text(HEADER + "\n")
        dest = bc.archive_previous(self.ckpt_dir, "expert-v0")
        self.assertTrue((dest / "expert-v0_bc_settings.json").exists())
        self.assertIsNone(bc.read_settings(self.ckpt_dir, "expert-v0"))

    def test_differences_name_field_and_both_values(self):
        old = bc.settings_record(settings(seed=1), "k", self.cfg, self.PROVENANCE)
        new = bc.settings_record(settings(seed=7, epochs=50), "k", self.cfg,
                                 [{**self.PROVENANCE[0], "sha256": "cd" * 32}])
        diffs = checkpoints.settings_differences(old, new)
        self.assertIn("seed: 1 -> 7", diffs)
        self.assertIn("epochs: 3 -> 50", diffs)
        self.assertTrue(any(d.startswith("data:") and "cd" * 32 in d for d in diffs), diffs)
        self.assertEqual(len(diffs), 3)
        cfg2 = self.cfg.model_copy(update={"learning_rate": 0.5})
        diffs = checkpoints.settings_differences(old, bc.settings_record(
            settings(seed=1), "k", cfg2, self.PROVENANCE))
        self.assertEqual(diffs, [f"bc_config.learning_rate: {self.cfg.learning_rate!r} -> 0.5"])
        self.assertIn("no record", checkpoints.settings_differences(None, new)[0])


class TestMetricsCsvConcurrentAppends(BCTestCase):
    def test_three_processes_lose_no_row(self):
        """Was a bug: an unlocked read-modify-write kept 317 of 600 rows."""
        path = self.work / "m_metrics.csv"
        code = textwrap.dedent(f"""
            import sys; sys.path.insert(0, {str(HERE)!r})
            from pathlib import Path
            import bc
            for i in range(60):
                bc._append_metrics_row(Path({str(path)!r}), int(sys.argv[1]) * 1000 + i, 0.5, 0.25)
        """)
        procs = [subprocess.Popen([sys.executable, "-c", code, str(k)]) for k in range(3)]
        for proc in procs:
            self.assertEqual(proc.wait(timeout=300), 0)
        rows = read_csv(path)
        self.assertEqual(sorted(r[0] for r in rows),
                         sorted(k * 1000 + i for k in range(3) for i in range(60)))
        # each writer's rows stay in its own order
        for k in range(3):
            mine = [r[0] for r in rows if r[0] // 1000 == k]
            self.assertEqual(mine, sorted(mine))


if __name__ == "__main__":
    unittest.main()
