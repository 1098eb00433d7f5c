"""Dataset names -> one flat array of transitions, whatever format the data came in.

Resolution order for each `--names` entry (first hit wins, the run log records which):
  1. a local Minari dataset `<dataset>/<env>/<name>` (MINARI_DATASETS_PATH, else ~/.minari/datasets);
  2. a D4RL HDF5 file under D4RL's own file name in D4RL_DATASET_DIR (else ~/.d4rl/datasets),
     read with h5py: `pip install d4rl` cannot work on Python 3.11 (it needs mujoco-py, old gym);
  3. generation from a bundled reference policy into the Minari directory;
  4. a PipelineError naming every place searched and how to get the data.
Minari is never asked to download: offline, `load_dataset(download=True)` retries ~24 s.

The env the pipeline runs on is resolved here too (`OfflineData.env_id/env_kwargs`): the hparam
entry's env when it takes the data's shapes, else the env a Minari dataset records, when that
one does and is the same env at another version (Minari's mujoco/ant data on Ant-v5 with an
Ant-v4 entry). See `_resolve_env`.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from atomic_file import exclusive
from collect_dataset import BUNDLED, D4RL_REF_SCORES, generate_bundled, minari_root
from errors import PipelineError
from preflight import dir_problem


@dataclass
class OfflineData:
    """Transitions of all episodes back to back; episode boundaries kept in `episode_ends`.

    `truncations` marks episodes cut by a time limit or by the end of the recording: their
    last value bootstraps from V(next_obs). `terminations` marks true ends (no bootstrap).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    next_observations: np.ndarray
    behaviour_log_probs: np.ndarray | None = None
    ref_scores: tuple[float, float] | None = None
    ref_scores_source: str = "none"
    provenance: list[dict] = field(default_factory=list)
    env_id: str | None = None
    """The env BC, fine-tuning and every evaluation run on (load_offline_data resolves it)."""
    env_kwargs: dict = field(default_factory=dict)
    env_note: str | None = None
    """One line saying why env_id is not the hparam entry's env; None when it is."""

    @property
    def episode_ends(self) -> np.ndarray:
        return self.terminations | self.truncations

    @property
    def episode_starts(self) -> np.ndarray:
        """Index of each episode's first transition."""
        ends = np.flatnonzero(self.episode_ends)
        return np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)

    @property
    def episode_returns(self) -> np.ndarray:
        return np.add.reduceat(self.rewards, self.episode_starts)

    def __len__(self) -> int:
        return len(self.rewards)

    def select_episodes(self, episode_ids: np.ndarray) -> OfflineData:
        """Subset by episode (used for the BC train/val split)."""
        starts = self.episode_starts
        stops = np.append(starts[1:], len(self))
        idx = np.concatenate([np.arange(starts[i], stops[i]) for i in episode_ids])
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return OfflineData(self.observations[idx], self.actions[idx], self.rewards[idx],
                           self.terminations[idx], self.truncations[idx],
                           self.next_observations[idx], pick(self.behaviour_log_probs),
                           self.ref_scores, self.ref_scores_source, self.provenance,
                           self.env_id, self.env_kwargs, self.env_note)


def normalized_score(raw_return: float, ref_scores: tuple[float, float] | None) -> float | None:
    """D4RL's 100*(R-min)/(max-min); None when the env has no reference scores (humanoid)."""
    if ref_scores is None:
        return None
    low, high = ref_scores
    return 100.0 * (raw_return - low) / (high - low)


def d4rl_ref_scores(env: str) -> tuple[float, float] | None:
    return D4RL_REF_SCORES.get(env)


# --------------------------------------------------------------------------- locations

def d4rl_dir() -> Path:
    return Path(os.environ.get("D4RL_DATASET_DIR") or Path.home() / ".d4rl" / "datasets")


def d4rl_file_name(env: str, name: str) -> str:
    """D4RL's download names: walker2d_expert.hdf5 (v0), walker2d_medium_replay-v2.hdf5."""
    m = re.fullmatch(r"(.+)-v(\d+)", name)
    if not m:
        raise PipelineError(f"Dataset name '{name}' must end in -v<N>, e.g. expert-v0")
    kind, version = m.group(1).replace("-", "_"), int(m.group(2))
    return f"{env}_{kind}.hdf5" if version == 0 else f"{env}_{kind}-v{version}.hdf5"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- readers

def _from_arrays(obs, next_obs, actions, rewards, terms, truncs, where: str,
                 log_probs=None) -> OfflineData:
    n = len(rewards)
    if n == 0:
        raise PipelineError(f"Dataset {where} is empty")
    for label, arr in (("observations", obs), ("next_observations", next_obs),
                       ("actions", actions), ("terminations", terms), ("truncations", truncs)):
        if len(arr) != n:
            raise PipelineError(f"Dataset {where}: {label} has {len(arr)} rows but rewards has {n}")
    if log_probs is not None and len(log_probs) != n:
        raise PipelineError(f"Dataset {where}: behaviour log-probs have {len(log_probs)} rows "
                            f"but rewards has {n}")
    if np.shape(next_obs)[1:] != np.shape(obs)[1:]:
        raise PipelineError(f"Dataset {where}: next_observations have shape "
                            f"{np.shape(next_obs)[1:]} but observations {np.shape(obs)[1:]}")
    for label, arr in (("observations", obs), ("next_observations", next_obs),
                       ("actions", actions), ("rewards", rewards), ("behaviour log-probs", log_probs)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise PipelineError(f"Dataset {where}: {label} contain NaN or inf values")
    terms, truncs = np.asarray(terms, bool), np.asarray(truncs, bool)
    truncs = truncs & ~terms
    truncs[-1] |= not terms[-1]  # the recording's end is a cut, not a termination
    return OfflineData(np.asarray(obs, np.float32), np.asarray(actions, np.float32),
                       np.asarray(rewards, np.float32).reshape(-1), terms, truncs,
                       np.asarray(next_obs, np.float32),
                       None if log_probs is None else np.asarray(log_probs, np.float32))


def _load_minari(dataset_id: str, path: Path) -> tuple[OfflineData, dict]:
    import minari

    try:
        ds = minari.load_dataset(dataset_id)
        episodes = list(ds.iterate_episodes())
    except Exception as exc:  # minari raises many types for a broken folder
        raise PipelineError(f"Minari dataset {dataset_id} at {path} cannot be read: {exc}") from exc
    if not episodes:
        raise PipelineError(f"Minari dataset {dataset_id} at {path} is empty")
    if not isinstance(episodes[0].observations, np.ndarray):
        raise PipelineError(f"Minari dataset {dataset_id}: only flat Box observations are supported")
    first = episodes[0]
    for ep in episodes:
        if (ep.observations.shape[1:], np.shape(ep.actions)[1:]) != (
                first.observations.shape[1:], np.shape(first.actions)[1:]):
            raise PipelineError(f"Minari dataset {dataset_id}: episode {ep.id} has obs/action "
                                f"shapes {ep.observations.shape[1:]}/{np.shape(ep.actions)[1:]}, "
                                f"episode {first.id} {first.observations.shape[1:]}/"
                                f"{np.shape(first.actions)[1:]}")
        if len(ep.observations) != len(ep.rewards) + 1:
            raise PipelineError(f"Minari dataset {dataset_id}: episode {ep.id} has "
                                f"{len(ep.observations)} observations for {len(ep.rewards)} steps")
    cat = np.concatenate
    data = _from_arrays(
        cat([ep.observations[:-1] for ep in episodes]), cat([ep.observations[1:] for ep in episodes]),
        cat([ep.actions for ep in episodes]), cat([ep.rewards for ep in episodes]),
        cat([ep.terminations for ep in episodes]),
        cat([_episode_cut(ep.truncations, ep.terminations) for ep in episodes]), dataset_id)
    meta = ds.storage.metadata
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        data.ref_scores = (float(meta["ref_min_score"]), float(meta["ref_max_score"]))
        data.ref_scores_source = f"minari:{dataset_id}"
    env_spec = ds.env_spec
    info = {"source": "minari", "dataset_id": dataset_id, "path": str(path),
            "episodes": len(episodes), "transitions": len(data),
            "minari_version": str(ds.minari_version),
            "recorded_env_id": env_spec.id if env_spec is not None else None,
            "recorded_env_kwargs": _recorded_kwargs(env_spec),
            "algorithm": meta.get("algorithm_name"),
            "sha256": _sha256(path / "data" / "main_data.hdf5")
            if (path / "data" / "main_data.hdf5").exists() else None}
    return data, info


def _recorded_kwargs(env_spec) -> dict | None:
    """The kwargs that rebuild the recorded env with `gym.make(env_spec.id, **kwargs)`.

    Its own kwargs (never the hparam entry's: Ant-v5 has no use_contact_forces), plus its time
    limit when that differs from the registered one; render_mode is dropped (a recorded
    "human" would open a window on every evaluation env).
    """
    if env_spec is None:
        return None
    kwargs = {k: v for k, v in dict(env_spec.kwargs or {}).items() if k != "render_mode"}
    registered = gym.registry.get(env_spec.id)
    if (env_spec.max_episode_steps is not None and registered is not None
            and env_spec.max_episode_steps != registered.max_episode_steps):
        kwargs["max_episode_steps"] = env_spec.max_episode_steps
    return kwargs


def _episode_cut(truncs: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """Every episode ends in a termination or truncation, even if the recorder forgot one."""
    truncs = np.array(truncs, dtype=bool)
    if len(truncs) and not (truncs[-1] or terms[-1]):
        truncs[-1] = True
    return truncs


def _load_d4rl(path: Path, max_episode_steps: int | None) -> tuple[OfflineData, dict]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
            if missing:
                raise PipelineError(f"D4RL file {path} lacks the key(s) {', '.join(missing)}")
            obs = f["observations"][:]
            actions = f["actions"][:]
            rewards = f["rewards"][:].reshape(-1)
            terms = f["terminals"][:].reshape(-1).astype(bool)
            timeouts = f["timeouts"][:].reshape(-1).astype(bool) if "timeouts" in f else None
            next_obs = f["next_observations"][:] if "next_observations" in f else None
            log_probs = f["infos/action_log_probs"][:] if "infos/action_log_probs" in f else None
            if log_probs is not None and log_probs.ndim > 1 and log_probs.shape[1:] != (1,):
                raise PipelineError(f"D4RL file {path}: infos/action_log_probs has shape "
                                    f"{log_probs.shape}; expected one log-prob per row")
    except PipelineError:
        raise
    except (OSError, KeyError, ValueError) as exc:
        raise PipelineError(f"D4RL file {path} is not a readable HDF5 dataset: {exc}") from exc
    n = len(rewards)
    if n == 0:
        raise PipelineError(f"D4RL file {path} is empty (0 rows)")
    lengths = {"observations": len(obs), "actions": len(actions), "rewards": n,
               "terminals": len(terms)}
    if timeouts is not None:
        lengths["timeouts"] = len(timeouts)
    if len(set(lengths.values())) > 1:
        raise PipelineError(f"D4RL file {path}: array lengths differ ("
                            + ", ".join(f"{k} {v}" for k, v in lengths.items()) + ")")
    if timeouts is None:
        # v0 files have no timeouts key: D4RL's own loader counts steps to the time limit.
        timeouts = np.zeros(n, bool)
        step = 0
        for i in range(n):
            step += 1
            if terms[i] or (max_episode_steps and step >= max_episode_steps):
                timeouts[i] = not terms[i]
                step = 0
    if next_obs is None:
        # Without next_observations the last step of each episode has no successor: dropped,
        # as d4rl.qlearning_dataset does. obs[t+1] is the successor everywhere else.
        drop = timeouts.copy()
        drop[-1] |= not terms[-1]
        next_obs = np.concatenate([obs[1:], obs[-1:]])
        timeouts = np.zeros(n, bool)
        timeouts[:-1] = drop[1:] & ~terms[:-1]
        keep = ~drop
        idx = np.flatnonzero(keep)
        obs, next_obs, actions, rewards = obs[idx], next_obs[idx], actions[idx], rewards[idx]
        terms, timeouts = terms[idx], timeouts[idx]
        log_probs = None if log_probs is None else log_probs[idx]
    data = _from_arrays(obs, next_obs, actions, rewards, terms, timeouts, str(path), log_probs)
    info = {"source": "d4rl", "path": str(path), "episodes": int(data.episode_ends.sum()),
            "transitions": len(data), "sha256": _sha256(path),
            "behaviour_log_probs": log_probs is not None}
    return data, info


# --------------------------------------------------------------------------- resolution

def _resolve_one(dataset: str, env: str, name: str, max_episode_steps: int | None,
                 generate: bool, progress: bool = True) -> tuple[OfflineData, dict]:
    dataset_id = f"{dataset}/{env}/{name}"
    minari_path = minari_root() / dataset_id
    if (minari_path / "data").exists():
        return _load_minari(dataset_id, minari_path)
    d4rl_path = d4rl_dir() / d4rl_file_name(env, name)
    if d4rl_path.exists():
        return _load_d4rl(d4rl_path, max_episode_steps)
    if generate and (dataset, env, name) in BUNDLED:
        # One generation per dataset: a second run waits here, then finds the dataset made.
        with exclusive(minari_root() / f".{dataset}@{env}@{name}.generate.lock",
                       f"Waiting for another process generating {dataset_id}"):
            if (minari_path / "data").exists():
                return _load_minari(dataset_id, minari_path)
            generate_bundled(dataset, env, name, progress=progress)
        data, info = _load_minari(dataset_id, minari_path)
        info["source"] = "generated"
        return data, info
    bundled = sorted(n for (d, e, n) in BUNDLED if (d, e) == (dataset, env))
    hint = (f"; bundled names that generate offline: {', '.join(bundled)}" if bundled else
            f"; no bundled policy for {env}")
    raise PipelineError(
        f"Dataset {dataset_id} not found. Searched: Minari {minari_path} and D4RL {d4rl_path}"
        f"{hint}. Get it with `minari download {dataset_id}` on a connected machine (copy "
        f"{minari_root()} over), place D4RL's {d4rl_path.name} in {d4rl_dir()}, or write one "
        f"with `python training_files/collect_dataset.py --name {dataset_id} ...`")


def _check_generation_target(dataset: str, env: str, names: list[str]) -> None:
    """Before rolling anything out: the Minari directory must take the generated dataset."""
    for name in names:
        found = ((minari_root() / dataset / env / name / "data").exists()
                 or (d4rl_dir() / d4rl_file_name(env, name)).exists())
        if found or (dataset, env, name) not in BUNDLED:
            continue
        problem = dir_problem(minari_root())
        if problem:
            raise PipelineError(
                f"Cannot generate {dataset}/{env}/{name} into the Minari directory "
                f"{minari_root()}: {problem}; set MINARI_DATASETS_PATH to a writable directory")
        minari_root().mkdir(parents=True, exist_ok=True)  # the generation lock lives there
        return


def _env_shapes(env_id: str, env_kwargs: dict) -> tuple[tuple, tuple]:
    try:
        env = gym.make(env_id, **env_kwargs)
    except Exception as exc:  # gymnasium raises several types for a bad id or kwargs
        raise PipelineError(f"Cannot create env {env_id} {env_kwargs}: {exc}") from exc
    shapes = env.observation_space.shape, env.action_space.shape
    env.close()
    return shapes


def env_text(env_id: str, env_kwargs: dict | None) -> str:
    """'Ant-v4 {'use_contact_forces': True}', or just 'Ant-v5' without kwargs."""
    return f"{env_id} {env_kwargs}" if env_kwargs else env_id


def _same_env_family(a: str, b: str) -> bool:
    """Ant-v4 and Ant-v5 are one env at two versions; Hopper-v4 and Walker2d-v4 are not."""
    parse = gym.envs.registration.parse_env_id
    return parse(a)[:2] == parse(b)[:2]


def _resolve_env(data: OfflineData, infos: list[dict], env_id: str, env_kwargs: dict,
                 candidates: dict[str, tuple[str, dict]]) -> tuple[str, dict, str | None]:
    """(env_id, env_kwargs, note) the pipeline runs on, or a PipelineError.

    1. The hparam entry's env takes the data's shapes: use it (a dataset recorded on another
       version of it gets a warning: same shapes, possibly different dynamics).
    2. Else, if every dataset records the same env (Minari's env spec), that env is the entry's
       env at another version, and it takes the shapes: use it, built from the dataset's own
       spec and kwargs, and say so (`note`). Restricted to one env family so that a wrong key
       (a Hopper entry on walker2d data) stays an error instead of silently training another env.
    3. Else one error line: both shapes, the recorded env and the hparam entries that fit.
    """
    obs_shape, act_shape = _env_shapes(env_id, env_kwargs)
    got_obs, got_act = data.observations.shape[1:], data.actions.shape[1:]
    if (got_obs, got_act) == (obs_shape, act_shape):
        for info in infos:
            recorded = info.get("recorded_env_id")
            if recorded and recorded != env_id:
                warnings.warn(f"{info.get('dataset_id', info['path'])} was recorded on {recorded} "
                              f"but fine-tuning uses {env_id}: same shapes, different dynamics "
                              "possible", stacklevel=2)
        return env_id, env_kwargs, None
    recorded_envs = {(i.get("recorded_env_id"), repr(sorted((i.get("recorded_env_kwargs") or {}).items())))
                     for i in infos}
    recorded_ids = sorted({i.get("recorded_env_id") for i in infos} - {None})
    why_not = ""
    if recorded_ids and any(i.get("recorded_env_id") is None for i in infos):
        why_not = " (not every dataset records its env, so none is used in its place)"
    elif len(recorded_envs) == 1 and recorded_ids:
        rec_id, rec_kwargs = recorded_ids[0], dict(infos[0].get("recorded_env_kwargs") or {})
        if not _same_env_family(rec_id, env_id):
            why_not = f" (not {env_id} at another version, so not used in its place)"
        else:
            try:
                rec_shapes = _env_shapes(rec_id, rec_kwargs)
            except PipelineError as exc:
                rec_shapes, why_not = None, f", which cannot be created here ({exc})"
            if rec_shapes == (got_obs, got_act):
                note = (f"the hparam entry's env {env_text(env_id, env_kwargs)} has obs "
                        f"{obs_shape}, actions {act_shape} but the dataset has obs {got_obs}, "
                        f"actions {got_act}: BC, fine-tuning and evaluation run on "
                        f"{env_text(rec_id, rec_kwargs)}, the env the dataset records")
                return rec_id, rec_kwargs, note
            if rec_shapes is not None:
                why_not = (f"{' ' + str(rec_kwargs) if rec_kwargs else ''}, whose obs "
                           f"{rec_shapes[0]}, actions {rec_shapes[1]} do not fit it either")
    elif len(recorded_envs) > 1:
        why_not = " (different envs or kwargs per dataset, so none is used in its place)"
    fits = []
    for key, (cand_id, cand_kwargs) in candidates.items():
        try:
            if _env_shapes(cand_id, cand_kwargs) == (got_obs, got_act):
                fits.append(key)
        except PipelineError:  # an entry whose env is not installed simply does not fit
            continue
    raise PipelineError(
        f"Dataset has obs {got_obs}, actions {got_act} but {env_id} {env_kwargs or ''} has "
        f"obs {obs_shape}, actions {act_shape}"
        + (f"; it was recorded on {', '.join(recorded_ids)}{why_not}" if recorded_ids else "")
        + (f"; hparam entries that fit: {', '.join(fits)}" if fits
           else "; no hparam entry fits: add one with the recorded env_id"))


def load_offline_data(dataset: str, env: str, names: list[str], env_id: str,
                      env_kwargs: dict | None = None,
                      candidates: dict[str, tuple[str, dict]] | None = None,
                      generate: bool = True, progress: bool = True) -> OfflineData:
    """All `names` resolved, concatenated with episode boundaries kept, checked against env_id.

    `data.env_id/env_kwargs` is the env to run on: env_id itself, or the env the data record
    when env_id cannot take them (see `_resolve_env`; `data.env_note` then says so).
    """
    env_kwargs = env_kwargs or {}
    if generate:
        _check_generation_target(dataset, env, names)
    max_steps = gym.spec(env_id).max_episode_steps if env_id in gym.registry else None
    parts = [_resolve_one(dataset, env, name, max_steps, generate, progress) for name in names]
    shapes = {(d.observations.shape[1:], d.actions.shape[1:]) for d, _ in parts}
    if len(shapes) > 1:
        raise PipelineError(f"Datasets {', '.join(names)} have different obs/action shapes: {shapes}")
    datas = [d for d, _ in parts]
    has_log_probs = all(d.behaviour_log_probs is not None for d in datas)
    cat = lambda attr: np.concatenate([getattr(d, attr) for d in datas])  # noqa: E731
    data = OfflineData(cat("observations"), cat("actions"), cat("rewards"), cat("terminations"),
                       cat("truncations"), cat("next_observations"),
                       cat("behaviour_log_probs") if has_log_probs else None)
    data.provenance = [dict(info, name=name) for (_, info), name in zip(parts, names)]
    own = {d.ref_scores for d in datas if d.ref_scores is not None}
    if len(own) == 1 and all(d.ref_scores is not None for d in datas):
        data.ref_scores, data.ref_scores_source = own.pop(), datas[0].ref_scores_source
    elif (d4rl := d4rl_ref_scores(env)) is not None:
        data.ref_scores, data.ref_scores_source = d4rl, f"d4rl:{env}"
    data.env_id, data.env_kwargs, data.env_note = _resolve_env(
        data, data.provenance, env_id, env_kwargs, candidates or {})
    return data
