"""The one SB3 policy that BC trains and HybridPPO fine-tunes, with frozen obs statistics.

Observation mean/std are computed once from the BC training split and stored as buffers of
the features extractor, so they travel inside every checkpoint's state_dict: BC, HybridPPO and
a plain `PPO.load` of any saved zip see identical inputs from raw observations. (CORL and
Uni-O4 also freeze dataset statistics; imitation moved normalisation into the network because
separate VecNormalize files were a common source of bugs.)

This module is registered with cloudpickle "by value", so the class is embedded in each zip's
policy_kwargs and `PPO.load` works in a process that cannot import this project.
"""

from __future__ import annotations

import sys

import cloudpickle
import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}


class FrozenObsNormalizer(BaseFeaturesExtractor):
    """Flatten, then (obs - mean) / std, clipped to +-clip; statistics are buffers, not parameters."""

    def __init__(self, observation_space: gym.spaces.Box, clip: float = 10.0):
        dim = get_flattened_obs_dim(observation_space)
        super().__init__(observation_space, features_dim=dim)
        self.clip = clip
        self.register_buffer("obs_mean", torch.zeros(dim))
        self.register_buffer("obs_std", torch.ones(dim))

    def set_statistics(self, mean: np.ndarray, std: np.ndarray) -> None:
        # A constant feature (std 0) would divide by zero; 1e-3 keeps it near zero instead.
        self.obs_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.obs_std.copy_(torch.as_tensor(np.maximum(std, 1e-3), dtype=torch.float32))

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        x = observations.flatten(start_dim=1)
        return torch.clamp((x - self.obs_mean) / self.obs_std, -self.clip, self.clip)


cloudpickle.register_pickle_by_value(sys.modules[__name__])


def policy_kwargs(policy_cfg) -> dict:
    """SB3 policy_kwargs for an hparams.PolicyConfig (shared by BC and HybridPPO)."""
    return {
        "net_arch": {"pi": list(policy_cfg.net_arch.pi), "vf": list(policy_cfg.net_arch.vf)},
        "activation_fn": ACTIVATIONS[policy_cfg.activation],
        "log_std_init": policy_cfg.log_std_init,
        "ortho_init": policy_cfg.ortho_init,
        "features_extractor_class": FrozenObsNormalizer,
    }


def obs_normalizer(policy) -> FrozenObsNormalizer:
    extractor = policy.features_extractor
    if not isinstance(extractor, FrozenObsNormalizer):
        raise TypeError("policy was not built with normalized_policy.policy_kwargs")
    return extractor
