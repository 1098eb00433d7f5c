"""Rollback: after a periodic evaluation falls far below the best so far, training goes on from
the best evaluation's policy instead of the fallen one.

Why: on medium walker2d data a run's late falls are lasting moves of the deterministic policy,
not oscillations (docs/RESULTS.md: the averaged actor did not cancel them), and the run keeps training
the fallen policy to the end. The best-model keeper already hands over the best policy; this
lets training continue from it. It is the exploit step of Population Based Training
(Jaderberg et al. 2017, truncation selection copies a better member's weights) within one run.

What goes back: the policy's parameters (actor, critic, log_std) and its optimizer's state, as
they were when the best evaluation was measured. What does not: the env steps, the learning-rate
and noise schedules (log_std keeps the decay the schedule has applied since), the random number
generators, the rollout env. The evaluation that fell stays recorded with `rollback_to`, so the
worst-evaluation figures still see it. The restore waits for the next rollout's start, so each
rollout is collected by one policy and every PPO ratio still starts at 1.
"""

from __future__ import annotations

import copy

from stable_baselines3.common.callbacks import BaseCallback

from exploration_noise import lower_log_std


class PolicyRollback(BaseCallback):
    """Snapshots the policy at each new best evaluation; restores it after a fall of more than
    `drop` x |best mean return|. The best-model keeper calls `after_eval` for every evaluation."""

    def __init__(self, drop: float):
        super().__init__()
        if not 0.0 < drop < 1.0:
            raise ValueError(f"rollback drop must be in (0, 1), got {drop}")
        self.drop = drop
        self.best: dict | None = None  # the best evaluation and the state it was measured on
        self.pending: dict | None = None  # a snapshot to restore at the next rollout's start
        # {"at": steps of the fallen evaluation, "to": the best's, "applied": whether a rollout
        # started from the restored state (not after the run's last evaluations)}
        self.rollbacks: list[dict] = []

    def after_eval(self, result: dict, model, new_best: bool) -> None:
        if new_best:
            self.best = {"timesteps": result["timesteps"], "mean_reward": result["mean_reward"],
                         "state": snapshot(model)}
            self.pending = None  # a recovery beat the best: train on from here
            return
        if self.best is None or result.get("note"):
            # a noted evaluation is the offline-improvement gate's candidate: the gate keeps it
            # or reverts to BC itself; a fall rule on it would log a step-0 "rollback" to step 0
            return
        if fell_past(self.best["mean_reward"], result["mean_reward"], self.drop):
            result["rollback_to"] = self.best["timesteps"]
            self.rollbacks.append({"at": result["timesteps"], "to": self.best["timesteps"],
                                   "applied": False})
            self.pending = self.best["state"]

    def _on_rollout_start(self) -> None:
        if self.pending is not None:
            restore(self.model, self.pending)
            self.pending = None
            self.rollbacks[-1]["applied"] = True

    def _on_step(self) -> bool:
        return True


def fell_past(best: float, value: float, drop: float) -> bool:
    """The rollback rule: `value` lies more than drop x |best| below `best`."""
    return value < best - drop * abs(best)


def snapshot(model) -> dict:
    """What a rollback puts back (see the module docstring); also the state a reverted offline
    improvement goes back to (HybridPPO.settle_offline_improvement)."""
    return {"policy": copy.deepcopy(model.policy.state_dict()),
            "optimizer": copy.deepcopy(model.policy.optimizer.state_dict()),
            "log_std_decayed": getattr(model, "log_std_decayed", 0.0)}


def restore(model, state: dict) -> None:
    """Load a snapshot; log_std then drops by the noise decay applied since it was taken."""
    model.policy.load_state_dict(state["policy"])
    model.policy.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    since = getattr(model, "log_std_decayed", 0.0) - state["log_std_decayed"]
    if since:  # floored at HybridPPO's log_std_min
        lower_log_std(model.policy, since, getattr(model, "log_std_min", None))
