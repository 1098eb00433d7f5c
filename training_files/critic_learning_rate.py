"""A learning rate of the critic's own, inside the policy's one optimizer.

Why: SB3's PPO steps actor and critic with one optimizer at one rate. Fine-tuning code built on
PPO gives the critic a larger one: Uni-O4 trains walker2d-medium with an actor rate of 3e-5
and a critic rate of 2e-4 (its `ppo_finetune/scripts/mujoco_loco/wm.sh` and `main.py`), so
the value targets, which move as the policy improves, are tracked faster than the policy
moves. Here the optimizer keeps SB3's class and settings but holds two parameter groups, the
actor's and the critic's; the critic's rate follows the same schedule, scaled by
critic_learning_rate / learning_rate. Measured on walker2d medium-v0 (docs/RESULTS.md): not better than
one rate, so it is off by default.

Saved zips stay SB3's: `one_group` writes the optimizer state back as one group at the actor's
rate, so `PPO.load` reads them, and `two_groups` splits such a state again for HybridPPO.
"""

from __future__ import annotations

import torch
from stable_baselines3.common.save_util import load_from_zip_file


def critic_parameters(policy) -> list[torch.nn.Parameter]:
    """The critic's own parameters (a shared features extractor stays with the actor)."""
    modules = [policy.mlp_extractor.value_net, policy.value_net]
    if not policy.share_features_extractor:
        modules.append(policy.vf_features_extractor)
    return [p for module in modules for p in module.parameters()]


def actor_and_critic_parameters(policy) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The actor's group (every other parameter, in policy.parameters() order) and the critic's."""
    critic = critic_parameters(policy)
    ids = {id(p) for p in critic}
    return [p for p in policy.parameters() if id(p) not in ids], critic


def _order(policy) -> tuple[list[int], int]:
    """For each parameter in policy.parameters() order, its index in the two-group state (the
    groups' own orders: a critic-only features extractor comes first in policy.parameters()
    but last in the critic's group)."""
    actor, critic = actor_and_critic_parameters(policy)
    position = {id(p): i for i, p in enumerate(actor + critic)}
    return [position[id(p)] for p in policy.parameters()], len(actor)


def split_optimizer(policy, ratio: float) -> None:
    """Rebuild policy.optimizer (same class and settings) with an actor and a critic group."""
    old = policy.optimizer
    settings = {k: v for k, v in old.param_groups[0].items() if k != "params"}
    actor, critic = actor_and_critic_parameters(policy)
    policy.optimizer = type(old)([{"params": actor}, {"params": critic}], **settings)
    set_rates(policy.optimizer, settings["lr"], ratio)


def set_rates(optimizer, lr: float, ratio: float) -> None:
    actor, critic = optimizer.param_groups
    actor["lr"], critic["lr"] = lr, lr * ratio


def one_group(policy, state: dict) -> dict:
    """The two-group optimizer state as SB3's one group (in policy.parameters() order)."""
    index, _ = _order(policy)
    return {"state": {i: state["state"][j] for i, j in enumerate(index) if j in state["state"]},
            "param_groups": [{**state["param_groups"][0], "params": list(range(len(index)))}]}


def two_groups(policy, state: dict, ratio: float) -> dict:
    """The inverse of `one_group`: SB3's one-group state split into the actor's and critic's."""
    index, actor_count = _order(policy)
    group = state["param_groups"][0]
    return {"state": {j: state["state"][i] for i, j in enumerate(index) if i in state["state"]},
            "param_groups": [{**group, "params": list(range(actor_count))},
                             {**group, "lr": group["lr"] * ratio,
                              "params": list(range(actor_count, len(index)))}]}


def saved_parameters(policy, params: dict) -> dict:
    """SB3's get_parameters() output with the optimizer state as SB3's one group."""
    return {**params, "policy.optimizer": one_group(policy, params["policy.optimizer"])}


def loaded_parameters(policy, load_path_or_dict, ratio: float, device) -> dict:
    """Parameters to hand to SB3's set_parameters, from a dict or a zip: a one-group optimizer
    state (SB3's zips, this module's saves) split into the actor's and critic's groups."""
    params = (dict(load_path_or_dict) if isinstance(load_path_or_dict, dict)
              else load_from_zip_file(load_path_or_dict, device=device, load_data=False)[1])
    state = params.get("policy.optimizer")
    if state is not None and len(state["param_groups"]) == 1:
        params["policy.optimizer"] = two_groups(policy, state, ratio)
    return params
