"""fastpg: a vectorized, high-throughput REINFORCE (vanilla policy-gradient) trainer for PyTorch.

Library first: ``Trainer(Config(...))`` / ``train(Config(...))``; tensors in, tensors out; importing
fastpg changes no global state.
"""

from fastpg.checkpoint import load_checkpoint, save_checkpoint
from fastpg.config import Config, ConfigError
from fastpg.envs import BatchedEnv, EnvInfo, EnvWorkerError, GymVectorEnv, Step, UnsupportedEnvError, make_env, native_env_ids
from fastpg.loss import masked_mean, masked_mean_std, masked_normalize, reinforce_loss, reinforce_loss_reference
from fastpg.policy import MLPPolicy, mode_action, sample_action
from fastpg.returns import episode_complete_mask, reward_to_go, reward_to_go_reference
from fastpg.rollout import Carry, collect, init_carry
from fastpg.storage import allocate_storage
from fastpg.trainer import NonFiniteError, Trainer, evaluate, train

__version__ = "0.1.0"

__all__ = [
    "Config",
    "ConfigError",
    "BatchedEnv",
    "EnvInfo",
    "GymVectorEnv",
    "Step",
    "UnsupportedEnvError",
    "EnvWorkerError",
    "make_env",
    "native_env_ids",
    "MLPPolicy",
    "sample_action",
    "mode_action",
    "reward_to_go",
    "reward_to_go_reference",
    "episode_complete_mask",
    "masked_mean",
    "masked_mean_std",
    "masked_normalize",
    "reinforce_loss",
    "reinforce_loss_reference",
    "allocate_storage",
    "Carry",
    "collect",
    "init_carry",
    "Trainer",
    "train",
    "evaluate",
    "NonFiniteError",
    "save_checkpoint",
    "load_checkpoint",
]
