"""fastpg: a vectorized, high-throughput REINFORCE (vanilla policy-gradient) trainer for PyTorch.

Library first: ``Trainer(Config(...))`` / ``train(Config(...))``; tensors in, tensors out; importing
fastpg changes no global state. ``docs/architecture.md`` says which module owns what.
"""

from fastpg.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from fastpg.config import Config
from fastpg.envs import (
    BatchedEnv,
    Checkpointable,
    EnvInfo,
    GymVectorEnv,
    Step,
    env_from_config,
    make_env,
    native_env_ids,
)
from fastpg.errors import (
    ConfigError,
    EnvWorkerError,
    FastpgError,
    KernelBuildError,
    NonFiniteError,
    OutputError,
    UnsupportedEnvError,
)
from fastpg.evaluation import TargetCheck, evaluate
from fastpg.loss import advantage, reinforce_loss, reinforce_loss_reference
from fastpg.policy import MLPPolicy, SamplingPolicy, mode_action, sample_action
from fastpg.preflight import check_config
from fastpg.returns import episode_complete_mask, reward_to_go, reward_to_go_reference
from fastpg.rollout import Carry, collect, init_carry
from fastpg.run import train
from fastpg.storage import allocate_storage
from fastpg.trainer import Trainer
from fastpg.update import UpdateSettings, reinforce_update

__version__ = "0.1.0"

__all__ = [
    # configuration and errors
    "Config",
    "check_config",
    "FastpgError",
    "ConfigError",
    "UnsupportedEnvError",
    "EnvWorkerError",
    "NonFiniteError",
    "KernelBuildError",
    "OutputError",
    # environments
    "BatchedEnv",
    "Checkpointable",
    "EnvInfo",
    "GymVectorEnv",
    "Step",
    "make_env",
    "env_from_config",
    "native_env_ids",
    # policy
    "MLPPolicy",
    "SamplingPolicy",
    "sample_action",
    "mode_action",
    # the straight line
    "allocate_storage",
    "Carry",
    "collect",
    "init_carry",
    "reward_to_go",
    "reward_to_go_reference",
    "episode_complete_mask",
    "advantage",
    "reinforce_loss",
    "reinforce_loss_reference",
    "UpdateSettings",
    "reinforce_update",
    # training, evaluation, checkpoints
    "Trainer",
    "train",
    "evaluate",
    "TargetCheck",
    "save_checkpoint",
    "load_checkpoint",
    "check_compatible",
]
