"""Shared fixtures for the tests: isolated directories and tiny real data.

Every test runs with HOME, MINARI_DATASETS_PATH, D4RL_DATASET_DIR and the working directory
pointing into a fresh temporary folder, so it never reads or writes a user's data or the
repository's run outputs.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import unittest
import warnings
from pathlib import Path

import numpy as np
import torch
import yaml

TRAINING_FILES = Path(__file__).resolve().parent
REPO_ROOT = TRAINING_FILES.parent
ENTRY_SCRIPT = TRAINING_FILES / "train_hybrid_pipeline.py"

warnings.filterwarnings("ignore", message=".*is out of date.*")

# One intra-op thread for every test: with the tiny nets used here, a second thread only adds
# synchronisation, and on a 2-core machine with another busy core each backward pass was seen
# ~50x slower. (Subprocesses started by the tests keep torch's default.)
torch.set_num_threads(1)


def load_benchmark(name: str):
    """benchmarks/<name>.py as a module, for tests of its parts. The scripts import their
    siblings (confirmation.py) from beside them, as `python benchmarks/x.py` lets them."""
    script = REPO_ROOT / "benchmarks" / f"{name}.py"
    if str(script.parent) not in sys.path:
        sys.path.append(str(script.parent))
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class IsolatedTestCase(unittest.TestCase):
    """A temporary HOME / Minari / D4RL / working directory per test."""

    def setUp(self):
        super().setUp()
        self._tmp = tempfile.TemporaryDirectory(prefix="hybrid-test-")
        self.tmp = Path(self._tmp.name)
        self._old_cwd = os.getcwd()
        self._old_env = {k: os.environ.get(k) for k in
                         ("HOME", "MINARI_DATASETS_PATH", "D4RL_DATASET_DIR", "WANDB_MODE", "WANDB_DIR")}
        os.environ.update(HOME=str(self.tmp / "home"),
                          MINARI_DATASETS_PATH=str(self.tmp / "minari"),
                          D4RL_DATASET_DIR=str(self.tmp / "d4rl"), WANDB_MODE="offline",
                          WANDB_DIR=str(self.tmp))
        (self.tmp / "home").mkdir()
        self.work = self.tmp / "work"
        self.work.mkdir()
        os.chdir(self.work)

    def tearDown(self):
        os.chdir(self._old_cwd)
        for key, value in self._old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._tmp.cleanup()
        super().tearDown()

    def run_cli(self, *args: str, timeout: float = 600, stdin: str | None = None):
        """Run the entry script as a user would (its own process, no TTY)."""
        return subprocess.run([sys.executable, str(ENTRY_SCRIPT), *args], cwd=self.work,
                              capture_output=True, text=True, timeout=timeout,
                              input=stdin if stdin is not None else "", env=os.environ.copy())


def interruptible() -> None:
    """preexec_fn for a child the test interrupts with SIGINT. A shell that starts the suite in
    the background (`nohup ... &`) ignores SIGINT, children inherit that, and Python then never
    raises KeyboardInterrupt: the Ctrl-C tests would test the invoker, not the pipeline."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def save_tiny_policy(path: Path, env_id: str = "Walker2d-v4", seed: int = 0,
                     with_vecnormalize: bool = True, env_kwargs: dict | None = None) -> Path:
    """An untrained SB3 PPO zip (+ VecNormalize stats) standing in for a reference policy."""
    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    venv = DummyVecEnv([lambda: gym.make(env_id, **(env_kwargs or {}))])
    if with_vecnormalize:
        venv = VecNormalize(venv)
    model = PPO("MlpPolicy", venv, n_steps=64, seed=seed, device="cpu",
                policy_kwargs={"net_arch": [16]})
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    if with_vecnormalize:
        venv.save(str(path.with_name(path.stem + "_vecnormalize.pkl")))
    return path


def write_tiny_minari(dataset_id: str, episodes: int = 4, seed: int = 0,
                      env_id: str = "Walker2d-v4", policy: Path | None = None) -> Path:
    """A real Minari dataset in MINARI_DATASETS_PATH, rolled out by a tiny policy."""
    from collect_dataset import D4RL_REF_SCORES, collect_episodes, write_minari_dataset

    policy = policy or save_tiny_policy(Path(os.environ["HOME"]) / f"policy_{seed}.zip", env_id, seed)
    buffers = collect_episodes(env_id, policy, episodes, seed, progress=False)
    env = dataset_id.split("/")[-2]
    return write_minari_dataset(dataset_id, buffers, env_id, None, D4RL_REF_SCORES.get(env),
                                algorithm_name="tiny test policy", description="test")


def write_random_minari(dataset_id: str, env_id: str, episodes: int = 3, max_steps: int = 20,
                        seed: int = 0, recorded_env_id: str | None = None,
                        recorded_env_kwargs: dict | None = None,
                        ref_scores: tuple[float, float] | None = None) -> Path:
    """A real Minari dataset of short random-action episodes, written as Minari's own mujoco
    data are shaped (e.g. Ant-v5: 105-dim obs), recording its env spec.

    Episodes are cut after `max_steps` (a truncation). The recorded env is `env_id` unless
    `recorded_env_id/recorded_env_kwargs` say otherwise: create_dataset_from_buffers checks no
    shapes, so a dataset whose recorded env does not match its own data can be written too.
    """
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make(env_id)
    env.action_space.seed(seed)
    buffers = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        rows, actions, rewards, terms, truncs = [obs], [], [], [], []
        for t in range(max_steps):
            action = env.action_space.sample()
            obs, reward, terminated, truncated, _ = env.step(action)
            truncated = truncated or t == max_steps - 1
            rows.append(obs)
            actions.append(action)
            rewards.append(float(reward))
            terms.append(bool(terminated))
            truncs.append(bool(truncated and not terminated))
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(id=k, seed=seed + k,
                                     observations=np.asarray(rows, dtype=np.float32),
                                     actions=np.asarray(actions, dtype=np.float32),
                                     rewards=rewards, terminations=terms, truncations=truncs,
                                     infos={}))
    env.close()
    recorded = gym.make(recorded_env_id or env_id, **(recorded_env_kwargs or {}))
    low, high = ref_scores if ref_scores else (None, None)
    minari.create_dataset_from_buffers(
        dataset_id=dataset_id, buffer=buffers, env=recorded, eval_env=recorded.spec,
        algorithm_name="random actions",
        author="tests", author_email="none", code_permalink="testing_utils.py",
        ref_min_score=low, ref_max_score=high, description="test")
    recorded.close()
    return Path(os.environ["MINARI_DATASETS_PATH"]) / dataset_id


def write_d4rl_hdf5(path: Path, obs_dim: int, act_dim: int, episode_lengths: list[int],
                    terminal_last: list[bool] | None = None, seed: int = 0,
                    with_timeouts: bool = True, with_next_obs: bool = False,
                    with_log_probs: bool = False) -> Path:
    """A file in D4RL's layout (observations/actions/rewards/terminals/timeouts)."""
    import h5py

    rng = np.random.default_rng(seed)
    n = sum(episode_lengths)
    terminals, timeouts = np.zeros(n, bool), np.zeros(n, bool)
    end = 0
    for i, length in enumerate(episode_lengths):
        end += length
        if terminal_last and terminal_last[i]:
            terminals[end - 1] = True
        else:
            timeouts[end - 1] = True
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["observations"] = rng.standard_normal((n, obs_dim)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, (n, act_dim)).astype(np.float32)
        f["rewards"] = rng.standard_normal(n).astype(np.float32)
        f["terminals"] = terminals
        if with_timeouts:
            f["timeouts"] = timeouts
        if with_next_obs:
            f["next_observations"] = rng.standard_normal((n, obs_dim)).astype(np.float32)
        if with_log_probs:
            f["infos/action_log_probs"] = rng.standard_normal(n).astype(np.float32)
    return path


def write_hparam_file(path: Path, bc: dict | None = None, hybrid: dict | None = None,
                      bc_key: str = "Walker2d-v4-bc-large",
                      hybrid_key: str = "Walker2d-v4-hybrid") -> Path:
    """Two of hparam.yml's entries (walker2d's unless named) shrunk to test size, with
    optional overrides."""
    data = yaml.safe_load((REPO_ROOT / "hparam.yml").read_text())
    bc_entry = {**data[bc_key], "eval_episodes": 1, **(bc or {})}
    hybrid_entry = {**data[hybrid_key], "n_envs": 1, "n_steps": 128, "batch_size": 64, "n_epochs": 2,
                    "total_timesteps": 256, "eval_freq": 128, "eval_episodes": 1,
                    "confirm_episodes": 2, "test_episodes": 2, "segment_length": 16,
                    **(hybrid or {})}
    small = {"net_arch": {"pi": [32, 32], "vf": [32, 32]}, "activation": "tanh"}
    bc_entry["policy"] = hybrid_entry["policy"] = small
    path.write_text(yaml.safe_dump({bc_key: bc_entry, hybrid_key: hybrid_entry}))
    return path
