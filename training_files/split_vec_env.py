"""`vec_env: split`: half the training envs step in a worker process that runs the policy itself.

Why: in the rollouts MuJoCo's stepping takes most of the time and runs on one core. SB3's
SubprocVecEnv, and every split of the envs tried before, meets its workers once per env step,
and that round trip cost what the second core gave (docs/RESULTS.md, Speed). Here the worker
meets the main process once per rollout: told that a rollout of n steps begins, it gets the
policy's weights and the state of torch's random generator, then samples its envs' actions
itself and streams each step's results back without waiting for the main process.

Its actions are, bit for bit, the ones SB3's `collect_rollouts` computes in the main process:
the worker starts from a copy of the generator as it stands after the rollout's first draw
(whose actions the main process hands over), so its draws are the main process's draws, and
it runs the same policy forward on a batch of the same n_envs rows (its own rows filled in,
the others zero; a row of a matrix product depends on that row only, which the first rollout
checks: where it does not hold, the worker's envs step in lockstep instead). The main process
compares the actions at every step and stops with an error if one differs, so a run with
`split` gives the same samples, updates and results as with `dummy`.

Outside a rollout announced by `begin_rollout` (evaluation code, tests, plain SB3 algorithms),
the worker's envs step one round trip per step, like SubprocVecEnv: correct, not faster.
Nothing in the main process may draw from torch's global generator during a rollout
(SB3's rollout does not; the periodic evaluations are deterministic).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
import warnings

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper, VecEnv


def _env_actions(policy, actions: np.ndarray, space) -> np.ndarray:
    """What SB3's collect_rollouts hands env.step for the policy's actions (SB3 2.x)."""
    if not isinstance(space, gym.spaces.Box):
        return actions
    if policy.squash_output:
        return policy.unscale_action(actions)
    return np.clip(actions, space.low, space.high)


def _rollout(remote, venv: DummyVecEnv, policy, data) -> None:
    """Step `venv` for a whole rollout, sampling actions as the main process does."""
    state, rng_state, first_actions, n_steps, first_row, n_rows = data
    policy.load_state_dict(state)
    policy.set_training_mode(False)
    torch.set_rng_state(rng_state)
    actions, batch = first_actions, None
    for step in range(n_steps):
        if step > 0:
            if batch is None:  # the main process's rows stay zero: they change no other row
                batch = np.zeros((n_rows,) + obs.shape[1:], dtype=obs.dtype)
            batch[first_row:] = obs
            with torch.no_grad():
                sampled, _, _ = policy(obs_as_tensor(batch, policy.device))
            actions = _env_actions(policy, sampled.cpu().numpy()[first_row:], venv.action_space)
        obs, rewards, dones, infos = venv.step(actions)
        remote.send(("ok", (actions, obs, rewards, dones, infos)))


def rows_independent(policy, obs: np.ndarray, first_row: int) -> bool:
    """Whether the policy's action means for rows first_row: are the same, bit for bit, with
    the other rows zeroed, as the worker computes them (no random draw)."""
    zeroed = obs.copy()
    zeroed[:first_row] = 0
    with torch.no_grad():
        means = [policy.get_distribution(obs_as_tensor(o, policy.device)).distribution.mean
                 for o in (obs, zeroed)]
    return torch.equal(means[0][first_row:], means[1][first_row:])


class _NoOptimizer:
    """Stands in for the policy's optimizer in the worker, which only samples actions."""

    def __init__(self, params, lr):
        pass


def _worker(remote, parent_remote, env_fns: CloudpickleWrapper, n_threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    parent_remote.close()
    torch.set_num_threads(n_threads)
    venv = DummyVecEnv(env_fns.var)
    policy = None
    while True:
        try:
            cmd, data = remote.recv()
        except (EOFError, OSError):  # the main process has gone
            break
        try:
            if cmd == "close":
                venv.close()
                remote.send(("ok", None))
                break
            if cmd == "rollout":
                if policy is None:
                    policy_class, kwargs = data[0]
                    # no optimizer: the worker never trains, and torch's first optimizer
                    # imports torch._dynamo (~1 s in a fresh process)
                    policy = policy_class(**{**kwargs, "optimizer_class": _NoOptimizer,
                                             "optimizer_kwargs": {}})
                _rollout(remote, venv, policy, data[1:])
                continue
            if cmd == "reset":
                venv._seeds, venv._options = data
                result = venv.reset()
            elif cmd == "step":
                result = venv.step(data)
            elif cmd == "spaces":
                result = (venv.observation_space, venv.action_space)
            elif cmd == "call":  # (VecEnv method name, args, kwargs)
                name, args, kwargs = data
                result = getattr(venv, name)(*args, **kwargs)
            else:
                raise ValueError(f"unknown command {cmd!r}")
            remote.send(("ok", result))
        except (BrokenPipeError, ConnectionResetError):  # the main process has gone
            break
        except Exception:  # noqa: BLE001 - handed to the main process, which raises it
            remote.send(("error", traceback.format_exc()))


class SplitVecEnv(VecEnv):
    """The first half of the envs in this process (DummyVecEnv), the rest in one worker."""

    def __init__(self, env_fns, start_method: str | None = None):
        if len(env_fns) < 2:
            raise ValueError("vec_env split needs n_envs >= 2")
        self.first_remote = len(env_fns) // 2
        self.local = DummyVecEnv(env_fns[:self.first_remote])
        if start_method is None:  # SB3's SubprocVecEnv makes the same choice
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        ctx = mp.get_context(start_method)
        self.remote, work_remote = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker, daemon=True,
            args=(work_remote, self.remote, CloudpickleWrapper(env_fns[self.first_remote:]),
                  torch.get_num_threads()))
        self.process.start()
        work_remote.close()
        self.closed = False
        self._policy = None      # set by begin_rollout
        self._steps_left = 0     # steps of the announced rollout still to come
        self._sent_class = False
        self._actions = None
        self._streaming = False  # the worker is stepping an announced rollout on its own
        self._rollout_step = 0
        self._broken: str | None = None  # why this env can no longer be used
        self._obs: np.ndarray | None = None  # the envs' latest observations
        self._rows_independent: bool | None = None  # checked at the first rollout
        self.worker_sampled_steps = 0  # steps whose actions the worker sampled itself
        super().__init__(len(env_fns), self.local.observation_space, self.local.action_space)
        # wait until the worker is up, as SB3's SubprocVecEnv does, so that its start-up is
        # the constructor's and not the first rollout's
        if self._request("spaces") != (self.observation_space, self.action_space):
            raise ValueError("vec_env split: the envs' spaces differ")

    # -- the worker ------------------------------------------------------------------------
    def _request(self, cmd: str, data=None):
        if self._streaming:
            raise RuntimeError(f"vec_env split: {cmd!r} during a rollout, while the worker "
                               "steps its envs on its own")
        self.remote.send((cmd, data))
        return self._receive()

    def _receive(self):
        status, result = self.remote.recv()
        if status == "error":
            raise RuntimeError(f"split VecEnv worker failed:\n{result}")
        return result

    def _call(self, name: str, *args, **kwargs):
        return self._request("call", (name, args, kwargs))

    # -- rollouts --------------------------------------------------------------------------
    def begin_rollout(self, policy, n_steps: int) -> None:
        """The next n_steps steps are a rollout of `policy` (SB3's collect_rollouts)."""
        if self._streaming:  # a callback stopped the last rollout early: its worker ran ahead
            self._broken = ("vec_env split: a rollout stopped early, so the worker's envs ran "
                            "ahead of this process; make a new env to go on")
        self._check_usable()
        self._policy, self._steps_left, self._rollout_step = policy, n_steps, 0

    def _check_usable(self) -> None:
        if self._broken:
            raise RuntimeError(self._broken)

    def _start_streaming(self, actions: np.ndarray) -> None:
        policy = self._policy
        constructor = None
        if not self._sent_class:
            constructor = (type(policy), policy._get_constructor_parameters())
            self._sent_class = True
        # copies: the pipe's pickler (torch's reductions) moves a tensor's storage into shared
        # memory, which must not happen to the live parameters the next update changes
        state = {k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}
        self.remote.send(("rollout", (constructor, state, torch.get_rng_state(), actions,
                                      self._steps_left, self.first_remote, self.num_envs)))
        self._streaming = True

    def _check_rows(self) -> bool:
        """Once: can the worker's actions be this process's? If not, step in lockstep."""
        if self._rows_independent is None:
            self._rows_independent = rows_independent(self._policy, self._obs, self.first_remote)
            if not self._rows_independent:
                warnings.warn("vec_env split: on this machine a policy row depends on the "
                              "others, so the worker's envs step in lockstep (as SubprocVecEnv)")
        if not self._rows_independent:
            self._steps_left = 0
        return self._rows_independent

    def _receive_streamed(self):
        """One step the worker took on its own; its actions must be this process's."""
        actions, *result = self._receive()
        self._steps_left -= 1
        self._streaming = self._steps_left > 0
        self.worker_sampled_steps += self._rollout_step > 0  # step 0's actions were handed over
        self._rollout_step += 1
        if not np.array_equal(actions, self._actions[self.first_remote:]):
            self._broken = ("vec_env split: the worker's actions differ from the policy's in "
                            "this process (something drew from torch's random generator during "
                            "the rollout, or this machine's arithmetic depends on the batch); "
                            "use --vec_env dummy")
            raise RuntimeError(self._broken)
        return result

    # -- VecEnv ----------------------------------------------------------------------------
    def reset(self):
        self._check_usable()
        k = self.first_remote
        self.local._seeds, self.local._options = self._seeds[:k], self._options[:k]
        local_obs = self.local.reset()
        remote_obs = self._request("reset", (self._seeds[k:], self._options[k:]))
        self._reset_seeds()
        self._reset_options()
        self._obs = np.concatenate([local_obs, remote_obs])
        return self._obs

    def step_async(self, actions: np.ndarray) -> None:
        self._check_usable()
        k = self.first_remote
        self._actions = actions
        if self._steps_left and not self._streaming and self._check_rows():
            self._start_streaming(actions[k:])
        elif not self._steps_left:
            self.remote.send(("step", actions[k:]))
        self.local.step_async(actions[:k])

    def step_wait(self):
        local_obs, local_rewards, local_dones, local_infos = self.local.step_wait()
        if self._streaming:
            remote_obs, remote_rewards, remote_dones, remote_infos = self._receive_streamed()
        else:
            remote_obs, remote_rewards, remote_dones, remote_infos = self._receive()
        self._obs = np.concatenate([local_obs, remote_obs])
        return (self._obs, np.concatenate([local_rewards, remote_rewards]),
                np.concatenate([local_dones, remote_dones]),
                list(local_infos) + list(remote_infos))

    def close(self) -> None:
        if self.closed:
            return
        self.local.close()
        try:
            if self._streaming or self._broken:  # the worker may be blocked on the pipe
                self.process.terminate()
            else:
                self._request("close")
        except (EOFError, BrokenPipeError, OSError):
            pass
        self.process.join(timeout=10)
        self.closed = True

    def _split(self, indices):
        k = self.first_remote
        indices = list(self._get_indices(indices))
        return [i for i in indices if i < k], [i - k for i in indices if i >= k]

    def _both(self, name: str, indices, *args, **kwargs) -> list:
        local, remote = self._split(indices)
        out = list(getattr(self.local, name)(*args, indices=local, **kwargs) or []) if local else []
        if remote:
            out += list(self._call(name, *args, indices=remote, **kwargs) or [])
        return out

    def get_attr(self, attr_name, indices=None):
        return self._both("get_attr", indices, attr_name)

    def set_attr(self, attr_name, value, indices=None):
        self._both("set_attr", indices, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        return self._both("env_method", indices, method_name, *method_args, **method_kwargs)

    def env_is_wrapped(self, wrapper_class, indices=None):
        return self._both("env_is_wrapped", indices, wrapper_class)

    def get_images(self):
        return list(self.local.get_images()) + list(self._call("get_images"))
