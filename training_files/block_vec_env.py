"""Envs spread over a few worker processes, several envs per process (hparam vec_env_workers).

Why: SB3's SubprocVecEnv runs one process per env. On this project's 2-core build machine,
8 such processes rolled out walker2d slower than one process stepping all 8 envs in turn
(SB3's DummyVecEnv: 0.63-0.69 against 0.40 s per 1k steps), since 8 pipe round trips and
context switches per step cost more than the second core gives; and DummyVecEnv's rollout
already runs at ~94% of raw MuJoCo stepping speed on one core, so the second core is the only
lever left for rollouts. Here each of k processes steps its block of n_envs/k envs in a
DummyVecEnv of its own: one round trip per process per step, and MuJoCo runs on k cores.
SB3 has no such class (its issue #815: "not supported in SB3"; openai/baselines had it as
`in_series`). The envs, their seeds and their order are those of a DummyVecEnv over the same
env_fns, so a run's samples do not depend on the vec env kind (tested).
"""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper, VecEnvIndices


def _worker(remote, parent_remote, env_fns: CloudpickleWrapper) -> None:
    """One process: a DummyVecEnv over its block of envs, driven by commands on a pipe."""
    parent_remote.close()
    venv = DummyVecEnv(env_fns.var)
    while True:
        try:
            cmd, data = remote.recv()
        except (EOFError, KeyboardInterrupt):  # the parent has gone
            break
        if cmd == "step":
            venv.step_async(data)
            remote.send((*venv.step_wait(), venv.reset_infos))
        elif cmd == "reset":
            # DummyVecEnv.reset reads the per-env seeds and options the parent set on itself
            venv._seeds, venv._options = data
            remote.send((venv.reset(), venv.reset_infos))
        elif cmd == "call":  # a VecEnv method of the block (get_attr, env_method, ...)
            name, args, kwargs = data
            remote.send(getattr(venv, name)(*args, **kwargs))
        elif cmd == "spaces":
            remote.send((venv.observation_space, venv.action_space, venv.render_mode))
        elif cmd == "close":
            venv.close()
            remote.close()
            break


def _concat(parts: list) -> Any:
    """Stack the blocks' observations along the env axis (Box or Dict spaces)."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)


class BlockSubprocVecEnv(VecEnv):
    """n_workers processes, each stepping a contiguous block of the envs in turn.

    :param env_fns: one function per env, as for SB3's vec envs (make_vec_env passes them)
    :param n_workers: processes (1 <= n_workers <= len(env_fns)); blocks differ by at most 1 env
    :param start_method: multiprocessing start method; default as SB3's SubprocVecEnv
        (forkserver where available, else spawn)
    """

    def __init__(self, env_fns: list, n_workers: int = 2, start_method: str | None = None):
        if not 1 <= n_workers <= len(env_fns):
            raise ValueError(f"n_workers must be between 1 and the number of envs "
                             f"({len(env_fns)}), got {n_workers}")
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        bounds = np.linspace(0, len(env_fns), n_workers + 1).round().astype(int)
        self.blocks = [range(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
        self.remotes, self.processes = [], []
        for block in self.blocks:
            remote, work_remote = ctx.Pipe()
            fns = CloudpickleWrapper([env_fns[i] for i in block])
            # daemon: a crashed parent does not leave its workers behind
            process = ctx.Process(target=_worker, args=(work_remote, remote, fns), daemon=True)
            process.start()
            work_remote.close()
            self.remotes.append(remote)
            self.processes.append(process)
        self.waiting, self.closed = False, False
        self.remotes[0].send(("spaces", None))
        observation_space, action_space, render_mode = self.remotes[0].recv()
        super().__init__(len(env_fns), observation_space, action_space)
        self.render_mode = render_mode

    def step_async(self, actions: np.ndarray) -> None:
        for remote, block in zip(self.remotes, self.blocks):
            remote.send(("step", actions[block.start:block.stop]))
        self.waiting = True

    def step_wait(self):
        results = [remote.recv() for remote in self.remotes]
        self.waiting = False
        obs, rews, dones, infos, reset_infos = zip(*results)
        self.reset_infos = [info for part in reset_infos for info in part]
        return (_concat(list(obs)), np.concatenate(rews), np.concatenate(dones),
                [info for part in infos for info in part])

    def reset(self):
        for remote, block in zip(self.remotes, self.blocks):
            remote.send(("reset", ([self._seeds[i] for i in block],
                                   [self._options[i] for i in block])))
        obs, reset_infos = zip(*[remote.recv() for remote in self.remotes])
        self.reset_infos = [info for part in reset_infos for info in part]
        self._reset_seeds()  # seeds and options are used once, as in SB3's vec envs
        self._reset_options()
        return _concat(list(obs))

    def close(self) -> None:
        if self.closed:
            return
        if self.waiting:
            for remote in self.remotes:
                remote.recv()
        for remote in self.remotes:
            remote.send(("close", None))
        for process in self.processes:
            process.join()
        for remote in self.remotes:
            remote.close()
        self.closed = True

    def _call(self, name: str, indices: VecEnvIndices, *args, **kwargs) -> list:
        """A DummyVecEnv method on the blocks holding `indices`; results in index order."""
        wanted = list(self._get_indices(indices))
        calls = []
        for remote, block in zip(self.remotes, self.blocks):
            local = [i - block.start for i in wanted if i in block]
            if local:
                remote.send(("call", (name, args, {**kwargs, "indices": local})))
                calls.append((remote, [i for i in wanted if i in block]))
        by_index = {}
        for remote, globals_ in calls:
            by_index.update(zip(globals_, remote.recv()))
        return [by_index[i] for i in wanted]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call("get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        wanted = list(self._get_indices(indices))
        for remote, block in zip(self.remotes, self.blocks):
            local = [i - block.start for i in wanted if i in block]
            if local:
                remote.send(("call", ("set_attr", (attr_name, value), {"indices": local})))
                remote.recv()

    def env_method(self, method_name: str, *method_args, indices: VecEnvIndices = None,
                   **method_kwargs) -> list[Any]:
        return self._call("env_method", indices, method_name, *method_args, **method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices: VecEnvIndices = None) -> list[bool]:
        return self._call("env_is_wrapped", indices, wrapper_class)

    def has_attr(self, attr_name: str) -> bool:
        for remote in self.remotes:
            remote.send(("call", ("has_attr", (attr_name,), {})))
        return all([remote.recv() for remote in self.remotes])

    def get_images(self) -> list:
        for remote in self.remotes:
            remote.send(("call", ("get_images", (), {})))
        return [image for remote in self.remotes for image in remote.recv()]
