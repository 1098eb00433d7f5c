"""Write a real Minari dataset by rolling out an SB3 policy (no jax, no internet).

The bundled walker2d datasets are made this way from the reference policies in
`reference_policies/`, so the Quick Start runs on a fresh clone. Observations are recorded raw;
the policy sees them through its frozen VecNormalize statistics, as it did in training.
Several envs are stepped together with batched inference; each episode has its own seed, so a
seed (and the number of envs, see `collect_episodes`) gives byte-identical data.
Minari's DataCollector needs jax, so episodes are built as `EpisodeBuffer`s and written with
`minari.create_dataset_from_buffers`, into a temporary root first and then moved into place,
because a failed create leaves a partial folder that would block the next attempt.

Usage:
  python training_files/collect_dataset.py --env_id Walker2d-v4 \
      --policy reference_policies/walker2d/expert.zip --episodes 100 --seed 0 \
      --name mujoco/walker2d/expert-v0 --deterministic
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from errors import PipelineError, exit_code

REPO_ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = REPO_ROOT / "reference_policies"

# D4RL's reference returns (random, expert) per env, from d4rl/infos.py. Generated datasets
# record these, never their own policy's return, so scores stay comparable with papers.
D4RL_REF_SCORES = {
    "walker2d": (1.629008, 4592.3),
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "ant": (-325.6, 3879.7),
}

# Envs stepped together during collection: 4 to 32 took about the same time here, all about
# half of one env's (reference_policies/README.md). Part of a dataset's recipe, because the
# policy's actions can differ in the last bit between batch sizes.
DEFAULT_N_ENVS = 8


@dataclass(frozen=True)
class BundledRecipe:
    """How one bundled dataset name is generated from a committed reference policy."""

    env_id: str
    policy: str  # file stem inside reference_policies/<env>/
    seed: int
    episodes: int = 100
    deterministic: bool = False
    action_noise: float = 0.0
    n_envs: int = DEFAULT_N_ENVS  # part of the recipe: see collect_episodes
    env_kwargs: dict = field(default_factory=dict)
    """gym.make kwargs of env_id, recorded in the dataset's env spec (Ant-v4 needs
    use_contact_forces=True for D4RL's 111-dim observation)."""


# expert-v0 and expert-v1 are two collections of the same expert with different seeds, medium-v0
# and medium-v1 of the medium policy. The expert acts deterministically: its sampled actions
# make it fall now and then (stochastic mean return ~2,800 against ~3,900 deterministic, see
# reference_policies/README.md), and 0.1 Gaussian action noise already cost a third of the
# return. The medium datasets sample from the medium policy's own Gaussian, which gives the
# spread a medium dataset should have.
BUNDLED = {
    ("mujoco", "walker2d", "expert-v0"): BundledRecipe("Walker2d-v4", "expert", seed=0,
                                                       deterministic=True),
    ("mujoco", "walker2d", "expert-v1"): BundledRecipe("Walker2d-v4", "expert", seed=1,
                                                       deterministic=True),
    ("mujoco", "walker2d", "medium-v0"): BundledRecipe("Walker2d-v4", "medium", seed=0),
    # other episodes of the same medium policy: data no setting was chosen on (docs/RESULTS.md, test G)
    ("mujoco", "walker2d", "medium-v1"): BundledRecipe("Walker2d-v4", "medium", seed=1),
    # a weaker PPO policy's sampled episodes, at the return of issue 12's independent data
    # (~1,135): the regime where BC does little better than its data (docs/RESULTS.md, test W)
    ("mujoco", "walker2d", "simple-v0"): BundledRecipe("Walker2d-v4", "simple", seed=0),
    # Ant-v4 with contact forces (D4RL's 111-dim observation); named by measured quality:
    # its sampled actions score ~22 on D4RL's scale, below a third of the expert reference.
    ("mujoco", "ant", "simple-v0"): BundledRecipe("Ant-v4", "simple", seed=0,
                                                  env_kwargs={"use_contact_forces": True}),
    # Humanoid-v4 (376-dim): no reference score exists; `simple` because the policy falls
    # within ~150 of its 1,000 steps (reference_policies/README.md gives the naming rule).
    ("mujoco", "humanoid", "simple-v0"): BundledRecipe("Humanoid-v4", "simple", seed=0),
}


def parse_env_kwargs(items: list[str] | None) -> dict:
    """`--env_kwargs` as one JSON object or as key=value pairs (values read as JSON, else text).

    '{"use_contact_forces": true}' and `use_contact_forces=true` give the same dict.
    """
    if not items:
        return {}
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        try:
            kwargs = json.loads(items[0])
        except json.JSONDecodeError as exc:
            raise PipelineError(f"--env_kwargs {items[0]!r} is not valid JSON: {exc}") from exc
        if not isinstance(kwargs, dict):
            raise PipelineError(f"--env_kwargs {items[0]!r} must be a JSON object")
        return kwargs
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise PipelineError(f"--env_kwargs {item!r} is not key=value (or give one JSON object)")
        try:
            kwargs[key] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key] = text  # a plain string, e.g. xml_file=ant.xml
    return kwargs


def minari_root() -> Path:
    """Minari's own rule: MINARI_DATASETS_PATH, else ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")


def _load_policy(policy_path: Path, env_id: str, env_kwargs: dict | None):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    if not policy_path.exists():
        raise PipelineError(f"Policy file not found: {policy_path}")
    try:  # SB3 raises several types for a file that is not a model (ValueError, BadZipFile, ...)
        model = PPO.load(policy_path, device="cpu")
    except Exception as exc:
        raise PipelineError(f"Cannot load policy {policy_path}: {exc}") from exc
    model.policy.set_training_mode(False)
    stats = policy_path.with_name(policy_path.stem + "_vecnormalize.pkl")
    normalizer = None
    if stats.exists():
        # VecNormalize only holds the frozen statistics here (its env checks the spaces); the
        # episodes are stepped in a gymnasium vector env, which can reset one slot with its
        # own seed.
        spaces_only = DummyVecEnv([lambda: gym.make(env_id, **(env_kwargs or {}))])
        try:
            normalizer = VecNormalize.load(str(stats), spaces_only)
        except Exception as exc:  # a truncated pickle, or statistics of other spaces
            raise PipelineError(f"Cannot load observation statistics {stats}: {exc}") from exc
        finally:
            spaces_only.close()
        normalizer.training = False
    return model, normalizer


def episode_seeds(seed: int, episodes: int) -> list[np.random.SeedSequence]:
    """Episode k's own seed sequence: spawned children do not depend on how many are spawned.

    Not seed+k: the expert-v0 (seed 0) and expert-v1 (seed 1) recipes would then share 99 of
    their 100 episodes.
    """
    return np.random.SeedSequence(seed).spawn(episodes)


@dataclass
class _Recording:
    """One episode being recorded in one slot of the vector env."""

    episode: int
    observations: list
    actions: list = field(default_factory=list)
    rewards: list = field(default_factory=list)
    terminations: list = field(default_factory=list)
    truncations: list = field(default_factory=list)


def collect_episodes(env_id: str, policy_path: Path, episodes: int, seed: int,
                     env_kwargs: dict | None = None, deterministic: bool = False,
                     action_noise: float = 0.0, progress: bool = True,
                     n_envs: int = DEFAULT_N_ENVS) -> list:
    """Roll out the policy; returns minari EpisodeBuffers with raw observations (T+1 rows).

    `n_envs` copies of the env are stepped together and the policy acts on all of them in one
    batch: with one env, SB3's per-call inference overhead costs as much as MuJoCo itself.
    Episode k is reset with its own seed, draws its action noise from its own generator
    (`episode_seeds`) and is returned k-th whichever slot ran it, so a seed gives the same
    bytes every time. The policy's actions can still differ in the last bit between batch sizes
    (MKL picks its matmul kernel by batch size, measured here), so the data also depend on the
    batch size, which is always min(n_envs, episodes): the bundled recipes fix `n_envs`. Slots
    with no episode left run unrecorded episodes until the last recorded one ends.
    """
    from minari.data_collector import EpisodeBuffer
    from stable_baselines3.common.distributions import DiagGaussianDistribution

    if episodes <= 0 or n_envs <= 0:
        raise PipelineError(f"episodes and n_envs must be positive (got {episodes}, {n_envs})")
    model, normalizer = _load_policy(Path(policy_path), env_id, env_kwargs)
    n_envs = min(n_envs, episodes)
    sequences = episode_seeds(seed, episodes)
    reset_seeds = [int(s.generate_state(1)[0]) for s in sequences]
    noise_rngs = [np.random.default_rng(s) for s in sequences]
    # Autoreset off, so that a finished slot is reset here with its next episode's seed.
    envs = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.DISABLED},
                        **(env_kwargs or {}))
    low, high = envs.single_action_space.low, envs.single_action_space.high
    act_dim = envs.single_action_space.shape[0]
    pending = iter(range(episodes))  # a freed slot takes the lowest episode not yet started
    slots: list[_Recording | None] = [None] * n_envs  # None: an unrecorded episode
    buffers: list = [None] * episodes

    def reset(indices: list[int]) -> np.ndarray:
        mask = np.zeros(n_envs, dtype=bool)
        mask[indices] = True
        chosen = {i: next(pending, None) for i in indices}
        obs, _ = envs.reset(seed=[None if chosen.get(i) is None else reset_seeds[chosen[i]]
                                  for i in range(n_envs)], options={"reset_mask": mask})
        for i, k in chosen.items():
            slots[i] = None if k is None else _Recording(k, [obs[i]])
        return obs

    bar = tqdm(total=episodes, desc=f"collect {env_id}", unit="ep", disable=not progress)
    # One intra-op thread: batches of a few rows gain nothing from a second one, and with torch's
    # default of 2 on this 2-core machine, 8-row inference ran ~10x slower while the other core
    # was busy (the pipeline sets 1 itself; the CLI and other callers may not). Same results.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        obs = reset(list(range(n_envs)))
        while any(b is None for b in buffers):
            policy_obs = normalizer.normalize_obs(obs) if normalizer is not None else obs
            with torch.no_grad():
                dist = model.policy.get_distribution(model.policy.obs_to_tensor(policy_obs)[0])
            action = dist.mode().numpy().astype(np.float64)
            if not deterministic and not isinstance(dist, DiagGaussianDistribution):
                raise PipelineError(f"{policy_path}: sampling actions needs a diagonal Gaussian "
                                    f"policy, not {type(dist).__name__}")
            for i, rec in enumerate(slots):
                if rec is None:
                    continue
                # Noise from the episode's own generator, so it does not depend on which
                # episodes run beside it (SB3 samples from torch's one global generator).
                rng = noise_rngs[rec.episode]
                if not deterministic:
                    std = dist.distribution.stddev[i].numpy()
                    action[i] += std * rng.standard_normal(act_dim)
                if action_noise > 0:
                    action[i] += action_noise * rng.standard_normal(act_dim)
            action = np.clip(action, low, high).astype(np.float32)
            obs, rewards, terminated, truncated, _ = envs.step(action)
            for i, rec in enumerate(slots):
                if rec is None:
                    continue
                rec.observations.append(obs[i])
                rec.actions.append(action[i])
                rec.rewards.append(float(rewards[i]))
                rec.terminations.append(bool(terminated[i]))
                rec.truncations.append(bool(truncated[i]))
                if terminated[i] or truncated[i]:
                    buffers[rec.episode] = EpisodeBuffer(
                        id=rec.episode, seed=reset_seeds[rec.episode],
                        observations=np.asarray(rec.observations, dtype=np.float32),
                        actions=np.asarray(rec.actions, dtype=np.float32), rewards=rec.rewards,
                        terminations=rec.terminations, truncations=rec.truncations, infos={})
                    bar.update(1)
                    bar.set_postfix(ret=f"{sum(rec.rewards):.0f}")
            finished = np.flatnonzero(terminated | truncated).tolist()
            if finished and any(b is None for b in buffers):
                obs = reset(finished)
    finally:
        torch.set_num_threads(torch_threads)
        bar.close()
        envs.close()
    return buffers


@contextmanager
def _minari_root_env(root: Path):
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _check_buffers(buffers: list, env: gym.Env) -> None:
    """Minari checks no shapes: a wrong buffer would become an unusable dataset under the name."""
    if not buffers:
        raise PipelineError("No episodes to write")
    obs_shape, act_shape = env.observation_space.shape, env.action_space.shape
    for i, b in enumerate(buffers):
        obs, act = np.asarray(b.observations), np.asarray(b.actions)
        if obs.shape[1:] != obs_shape or act.shape[1:] != act_shape:
            raise PipelineError(f"Episode {i}: obs/action shapes {obs.shape[1:]}/{act.shape[1:]} "
                                f"do not match {env.spec.id}'s {obs_shape}/{act_shape}")
        if len(obs) != len(act) + 1 or len(b.rewards) != len(act):
            raise PipelineError(f"Episode {i}: {len(obs)} observations, {len(act)} actions, "
                                f"{len(b.rewards)} rewards (need T+1, T, T)")


def write_minari_dataset(dataset_id: str, buffers: list, env_id: str, env_kwargs: dict | None,
                         ref_scores: tuple[float, float] | None, algorithm_name: str,
                         description: str) -> Path:
    """Create the dataset under a temporary root, then move it into Minari's directory."""
    import minari
    from minari.namespace import create_namespace, list_local_namespaces

    if not re.fullmatch(r"([^/]+/)*[^/]+-v\d+", dataset_id):
        raise PipelineError(f"Minari dataset id '{dataset_id}' must look like "
                            "namespace/env/name-v<N>, e.g. mujoco/walker2d/expert-v0")
    recorded_env = gym.make(env_id, **(env_kwargs or {}))  # its spec keeps the kwargs
    _check_buffers(buffers, recorded_env)
    root = minari_root()
    root.mkdir(parents=True, exist_ok=True)
    final = root / dataset_id
    if final.exists():
        raise PipelineError(f"Minari dataset {dataset_id} already exists at {final}")
    ref_min, ref_max = ref_scores if ref_scores else (None, None)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        with _minari_root_env(staging):
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id, buffer=buffers, env=recorded_env,
                algorithm_name=algorithm_name, author="hybrid-ppo-pipeline",
                author_email="none (generated locally)", eval_env=recorded_env.spec,
                code_permalink="training_files/collect_dataset.py (hybrid PPO pipeline)",
                ref_min_score=ref_min, ref_max_score=ref_max, description=description)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / dataset_id, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    namespace = dataset_id.rsplit("/", 1)[0] if "/" in dataset_id else None
    with _minari_root_env(root):
        if namespace and namespace not in list_local_namespaces():
            create_namespace(namespace)
    return final


def generate_bundled(dataset: str, env: str, name: str, progress: bool = True) -> Path | None:
    """Generate a bundled dataset name into the Minari directory; None if not bundled."""
    recipe = BUNDLED.get((dataset, env, name))
    if recipe is None:
        return None
    policy_path = REFERENCE_DIR / env / f"{recipe.policy}.zip"
    dataset_id = f"{dataset}/{env}/{name}"
    print(f"GENERATING offline dataset {dataset_id}: {recipe.episodes} episodes of the bundled "
          f"'{recipe.policy}' policy ({policy_path.relative_to(REPO_ROOT)}), seed {recipe.seed}, "
          f"{recipe.n_envs} envs at once, into {minari_root()}", flush=True)
    buffers = collect_episodes(recipe.env_id, policy_path, recipe.episodes, recipe.seed,
                               env_kwargs=recipe.env_kwargs, deterministic=recipe.deterministic,
                               action_noise=recipe.action_noise, progress=progress,
                               n_envs=recipe.n_envs)
    return write_minari_dataset(
        dataset_id, buffers, recipe.env_id, recipe.env_kwargs, D4RL_REF_SCORES.get(env),
        algorithm_name=f"SB3 PPO reference policy '{recipe.policy}' (bundled)",
        description=f"Generated by collect_dataset.py from reference_policies/{env}/"
                    f"{recipe.policy}.zip, seed {recipe.seed}, {recipe.episodes} episodes, "
                    f"{recipe.n_envs} envs stepped together.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env_id", required=True, help="Gymnasium env id, e.g. Walker2d-v4")
    parser.add_argument("--policy", type=Path, required=True,
                        help="SB3 PPO zip; <stem>_vecnormalize.pkl beside it is used if present")
    parser.add_argument("--env_kwargs", nargs="+", default=None, metavar="KEY=VALUE",
                        help="gym.make kwargs, as key=value pairs or one JSON object, e.g. "
                             "use_contact_forces=true; recorded in the dataset's env spec")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", required=True,
                        help="Minari dataset id, e.g. mujoco/walker2d/expert-v0")
    parser.add_argument("--action_noise", type=float, default=0.0,
                        help="std of Gaussian noise added to each action (default: 0)")
    parser.add_argument("--deterministic", action="store_true",
                        help="use the policy's mean action instead of sampling")
    parser.add_argument("--n_envs", type=int, default=DEFAULT_N_ENVS,
                        help="envs stepped together; part of what the data depend on "
                             "(default: %(default)s)")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        if args.episodes <= 0:
            raise PipelineError("--episodes must be positive")
        if args.n_envs <= 0:
            raise PipelineError("--n_envs must be positive")
        if not re.fullmatch(r"([^/]+/)*[^/]+-v\d+", args.name):
            raise PipelineError(f"--name '{args.name}' must look like namespace/env/name-v<N>")
        env = args.name.split("/")[-2] if args.name.count("/") >= 2 else None
        env_kwargs = parse_env_kwargs(args.env_kwargs)
        buffers = collect_episodes(args.env_id, args.policy, args.episodes, args.seed,
                                   env_kwargs=env_kwargs, deterministic=args.deterministic,
                                   action_noise=args.action_noise,
                                   progress=not args.no_progress, n_envs=args.n_envs)
        returns = [sum(b.rewards) for b in buffers]
        path = write_minari_dataset(args.name, buffers, args.env_id, env_kwargs,
                                    D4RL_REF_SCORES.get(env), algorithm_name=str(args.policy),
                                    description=f"collect_dataset.py seed {args.seed}, "
                                                f"{args.n_envs} envs")
    except (KeyboardInterrupt, Exception) as exc:
        return exit_code(exc, "Interrupted: no dataset was written (nothing is left half-written)")
    print(f"Wrote {path}: {len(buffers)} episodes, mean return {np.mean(returns):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
