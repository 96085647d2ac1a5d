"""fastpg: a vectorized, high-throughput REINFORCE (vanilla policy-gradient) trainer for PyTorch.

Library first: ``Trainer(Config(...))`` / ``train(Config(...))``; tensors in, tensors out; importing
fastpg changes no global state. ``docs/architecture.md`` says which module owns what.

Names are imported on first use (PEP 562), so ``import fastpg`` and the ``fastpg`` command start
quickly, and modules a program does not use (torch.compile, gymnasium's vector envs, ...) are
not loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastpg.artifacts import TrainedPolicy, load_policy
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
    from fastpg.population import Population, PopulationTrainer, train_population
    from fastpg.preflight import check_config
    from fastpg.returns import episode_complete_mask, reward_to_go, reward_to_go_reference
    from fastpg.rollout import Carry, collect, init_carry
    from fastpg.run import train
    from fastpg.storage import allocate_storage
    from fastpg.trainer import Trainer
    from fastpg.update import UpdateSettings, reinforce_update

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "load_policy": "fastpg.artifacts",
    "TrainedPolicy": "fastpg.artifacts",
    "check_compatible": "fastpg.checkpoint",
    "load_checkpoint": "fastpg.checkpoint",
    "save_checkpoint": "fastpg.checkpoint",
    "Config": "fastpg.config",
    "BatchedEnv": "fastpg.envs",
    "Checkpointable": "fastpg.envs",
    "EnvInfo": "fastpg.envs",
    "GymVectorEnv": "fastpg.envs",
    "Step": "fastpg.envs",
    "env_from_config": "fastpg.envs",
    "make_env": "fastpg.envs",
    "native_env_ids": "fastpg.envs",
    "ConfigError": "fastpg.errors",
    "EnvWorkerError": "fastpg.errors",
    "FastpgError": "fastpg.errors",
    "KernelBuildError": "fastpg.errors",
    "NonFiniteError": "fastpg.errors",
    "OutputError": "fastpg.errors",
    "UnsupportedEnvError": "fastpg.errors",
    "TargetCheck": "fastpg.evaluation",
    "evaluate": "fastpg.evaluation",
    "advantage": "fastpg.loss",
    "reinforce_loss": "fastpg.loss",
    "reinforce_loss_reference": "fastpg.loss",
    "MLPPolicy": "fastpg.policy",
    "SamplingPolicy": "fastpg.policy",
    "mode_action": "fastpg.policy",
    "sample_action": "fastpg.policy",
    "Population": "fastpg.population",
    "PopulationTrainer": "fastpg.population",
    "train_population": "fastpg.population",
    "check_config": "fastpg.preflight",
    "episode_complete_mask": "fastpg.returns",
    "reward_to_go": "fastpg.returns",
    "reward_to_go_reference": "fastpg.returns",
    "Carry": "fastpg.rollout",
    "collect": "fastpg.rollout",
    "init_carry": "fastpg.rollout",
    "train": "fastpg.run",
    "allocate_storage": "fastpg.storage",
    "Trainer": "fastpg.trainer",
    "UpdateSettings": "fastpg.update",
    "reinforce_update": "fastpg.update",
}

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
    "load_policy",
    "TrainedPolicy",
    # populations: many runs in one batched program
    "Population",
    "PopulationTrainer",
    "train_population",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastpg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
